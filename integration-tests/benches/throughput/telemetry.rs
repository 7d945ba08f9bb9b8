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
/// process; prints the ratios against no subscriber.
pub(super) fn telemetry() {
    let none = telemetry_child("none");
    let off = telemetry_child("off");
    let on = telemetry_child("on");
    let labels = [
        "memory, concurrency 16",
        "rabbitmq no-op, prefetch 100, concurrency 100",
        "rabbitmq 5 ms I/O job, prefetch 100, concurrency 100",
    ];
    for (label, ((none, off), on)) in labels.into_iter().zip(none.into_iter().zip(off).zip(on)) {
        let figures = [
            Figure {
                label: format!("{label}: no subscriber"),
                jobs: none.0,
                elapsed: none.1,
            },
            Figure {
                label: format!("{label}: telemetry off (logs only)"),
                jobs: off.0,
                elapsed: off.1,
            },
            Figure {
                label: format!("{label}: telemetry on (OTLP export)"),
                jobs: on.0,
                elapsed: on.1,
            },
        ];
        print(&figures, &figures[0]);
    }
}
