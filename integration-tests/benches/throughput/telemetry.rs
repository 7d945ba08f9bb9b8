//! `-- telemetry`: longshore with telemetry off and on, each in a process of its own (the
//! `tracing` subscriber is process-wide): the cost of a span and metrics per job.

use std::sync::Arc;
use std::time::Duration;

use longshore::{Broker, MemoryBroker, QueueName};

use super::{Figure, HOOKS, amqp, longshore_run, print};

/// Runs this benchmark again as a child process with `-- telemetry-run <mode>` and reads
/// the figures it prints (`figure <jobs> <nanos>` lines, in order).
pub(super) fn telemetry_child(mode: &str) -> Vec<(u64, Duration)> {
    let output = std::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["telemetry-run", mode])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run the benchmark child");
    assert!(output.status.success(), "the {mode} child failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| {
            let mut parts = line.strip_prefix("figure ")?.split_whitespace();
            let jobs = parts.next()?.parse().ok()?;
            let nanos: u64 = parts.next()?.parse().ok()?;
            Some((jobs, Duration::from_nanos(nanos)))
        })
        .collect()
}

/// One side of the telemetry comparison, in a process of its own (the set-up is
/// process-wide): `none` installs no subscriber at all, `off` sets up logs only
/// (`longshore::otel::init` without an endpoint, as a worker runs with no collector), `on`
/// exports spans and metrics over OTLP to a receiver.
pub(super) fn telemetry_run(runtime: &tokio::runtime::Runtime, mode: &str, amqp_jobs: u64) {
    let receiver = integration_tests::otlp::OtlpReceiver::start_discarding();
    let mut config = longshore::otel::Config::from_env();
    config.otlp = false;
    config.endpoint = None;
    if mode == "on" {
        config = config
            .endpoint(receiver.endpoint())
            .service_name("longshore-bench");
    }
    let guard =
        (mode != "none").then(|| longshore::otel::init_with(&config).expect("telemetry sets up"));
    if let Some(guard) = guard.as_ref().filter(|_| mode == "on") {
        let _ = HOOKS.set(guard.hooks());
    }
    let figures = runtime.block_on(async {
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
        let queue = QueueName::new("bench-telemetry");
        let mut memory = Duration::MAX;
        for _ in 0..3 {
            memory = memory.min(longshore_run(&broker, &queue, TELEMETRY_MEMORY_JOBS, 16).await);
        }
        let (noop, io) = amqp::longshore_only(amqp_jobs).await;
        [
            (TELEMETRY_MEMORY_JOBS, memory),
            (amqp_jobs, noop),
            (amqp_jobs / 2, io),
        ]
    });
    if let Some(guard) = &guard {
        guard.flush();
    }
    for (jobs, elapsed) in figures {
        println!("figure {jobs} {}", elapsed.as_nanos());
    }
    if mode == "on" {
        println!(
            "exported {} requests, {} MB, to the OTLP receiver",
            receiver.requests(),
            receiver.bytes() / 1_000_000
        );
    }
}

const TELEMETRY_MEMORY_JOBS: u64 = 100_000;

/// Longshore with no subscriber, with logs only and with OTLP export, each in a child
/// process, in `BENCH_ROUNDS` interleaved rounds (3 unless set: none, off, on, none, …) so
/// drift on a shared machine falls on all three; prints each round, then the medians, their
/// ratios against no subscriber, and what export adds per job over logs only.
pub(super) fn telemetry() {
    const MODES: [&str; 3] = ["none", "off", "on"];
    let labels = [
        "memory, concurrency 16",
        "rabbitmq no-op, prefetch 100, concurrency 100",
        "rabbitmq 5 ms I/O job, prefetch 100, concurrency 100",
    ];
    // By mode, then round: the child's figures.
    let mut runs: Vec<Vec<Vec<(u64, Duration)>>> = vec![Vec::new(); MODES.len()];
    let micros = |(jobs, elapsed): (u64, Duration)| elapsed.as_secs_f64() * 1e6 / jobs as f64;
    // What export adds on the memory broker in each round: the two runs of a round share
    // its drift.
    let mut added = Vec::new();
    for round in 0..amqp::rounds() {
        for (mode, runs) in MODES.iter().zip(&mut runs) {
            let figures = telemetry_child(mode);
            let memory = *figures.first().expect("the memory figure");
            println!(
                "round {round}: {mode:<4} memory {:.2} µs/job",
                micros(memory)
            );
            runs.push(figures);
        }
        added.push(micros(runs[2][round][0]) - micros(runs[1][round][0]));
    }
    println!(
        "memory broker, OTLP export over logs only, by round: {} µs/job",
        added
            .iter()
            .map(|a| format!("{a:+.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "memory broker, OTLP export over logs only: median of the rounds {:+.2} µs/job",
        super::measure::median(&mut added)
    );
    for (at, label) in labels.into_iter().enumerate() {
        let median = |mode: usize| {
            let mut figures: Vec<(u64, Duration)> =
                runs[mode].iter().map(|figures| figures[at]).collect();
            figures.sort_by_key(|(_, elapsed)| *elapsed);
            figures[figures.len() / 2]
        };
        let names = [
            "no subscriber",
            "telemetry off (logs only)",
            "telemetry on (OTLP export)",
        ];
        let figures: Vec<Figure> = names
            .iter()
            .enumerate()
            .map(|(mode, name)| {
                let (jobs, elapsed) = median(mode);
                Figure {
                    label: format!("{label}: {name}"),
                    jobs,
                    elapsed,
                }
            })
            .collect();
        print(&figures, &figures[0]);
        println!(
            "(OTLP export adds {:+.2} µs per job over logs only, {:+.2} over no subscriber; medians of {} rounds)",
            figures[2].micros_per_job() - figures[1].micros_per_job(),
            figures[2].micros_per_job() - figures[0].micros_per_job(),
            runs[0].len()
        );
    }
}
