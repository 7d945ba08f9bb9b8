//! Throughput of no-op jobs through longshore against a raw consume-and-ack loop on the same
//! broker, in the same run. Prints jobs/s, mean per-job cost and the ratio.
//!
//! `cargo bench -p integration-tests --bench throughput [-- memory] [-- amqp] [-- sqs]
//! [-- status] [-- latency] [-- rss]` (`-- longshore-noop` prints one RabbitMQ figure as JSON, for
//! `scripts/bench peers`)
//! (`BENCH_JOBS` sets the job count; `LONGSHORE_AMQP_URL` the RabbitMQ.)
//!
//! `-- telemetry` runs longshore on memory and RabbitMQ with telemetry off, then sets up
//! `longshore-otel` exporting to an in-process OTLP receiver and runs them again: the cost
//! of a span and metrics per job. It must run alone (the set-up is process-wide).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use longshore::spi::ConsumeOptions;
use longshore::{Broker, Job, JobError, MemoryBroker, Producer, QueueName, QueueOptions, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u64,
}

impl Job for Noop {
    const NAME: &'static str = "noop";
}

async fn noop(_: Noop) -> Result<(), JobError> {
    Ok(())
}

/// The telemetry hooks of `-- telemetry`'s `on` run, given to every worker it builds.
pub(crate) static HOOKS: std::sync::OnceLock<Arc<dyn longshore::spi::Telemetry>> =
    std::sync::OnceLock::new();

fn with_hooks(builder: longshore::WorkerBuilder) -> longshore::WorkerBuilder {
    match HOOKS.get() {
        Some(hooks) => builder.telemetry(Arc::clone(hooks)),
        None => builder,
    }
}

struct Figure {
    label: String,
    jobs: u64,
    elapsed: Duration,
}

impl Figure {
    fn per_second(&self) -> f64 {
        self.jobs as f64 / self.elapsed.as_secs_f64()
    }

    fn micros_per_job(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e6 / self.jobs as f64
    }
}

async fn fill(broker: &Arc<dyn Broker>, queue: &QueueName, jobs: u64) {
    broker.delete(queue).await.expect("delete");
    broker
        .declare(queue, &QueueOptions::default())
        .await
        .expect("declare");
    let producer = Producer::new(Arc::clone(broker), queue.clone());
    for n in 0..jobs {
        producer.enqueue(&Noop { n }).await.expect("enqueue");
    }
}

/// The raw loop: consume, decode, ack, one at a time; what a hand-written consumer does.
async fn raw_loop(broker: &Arc<dyn Broker>, queue: &QueueName, jobs: u64) -> Duration {
    fill(broker, queue, jobs).await;
    let start = Instant::now();
    let mut stream = broker
        .consume(queue, &ConsumeOptions::default().prefetch(100))
        .await
        .expect("consume");
    for _ in 0..jobs {
        let delivery = stream.next().await.expect("open").expect("delivery");
        let _job: Noop = serde_json::from_slice(&delivery.message().body).expect("decode");
        delivery.ack().await.expect("ack");
    }
    start.elapsed()
}

async fn longshore_run(
    broker: &Arc<dyn Broker>,
    queue: &QueueName,
    jobs: u64,
    concurrency: usize,
) -> Duration {
    fill(broker, queue, jobs).await;
    drain_with_worker(broker, queue, jobs, concurrency, Duration::from_micros(200)).await
}

/// Runs a no-op worker on a filled queue until `jobs` succeeded, checking every `poll`; the
/// time it took.
async fn drain_with_worker(
    broker: &Arc<dyn Broker>,
    queue: &QueueName,
    jobs: u64,
    concurrency: usize,
    poll: Duration,
) -> Duration {
    let worker = with_hooks(Worker::builder(Arc::clone(broker), queue.clone()))
        .handler(noop)
        .concurrency(concurrency)
        .build()
        .expect("build");
    let (stats, shutdown) = (worker.stats(), worker.shutdown_handle());
    let start = Instant::now();
    let running = tokio::spawn(worker.run_until_stopped());
    while stats.snapshot().succeeded < jobs {
        tokio::time::sleep(poll).await;
    }
    let elapsed = start.elapsed();
    shutdown.shutdown();
    running.await.expect("join").expect("run");
    elapsed
}

fn print(figures: &[Figure], baseline: &Figure) {
    println!();
    println!(
        "{:<80} {:>9} {:>8} {:>7}",
        "run", "jobs/s", "µs/job", "ratio"
    );
    for figure in figures {
        println!(
            "{:<80} {:>9.0} {:>8.2} {:>6.0}%",
            figure.label,
            figure.per_second(),
            figure.micros_per_job(),
            100.0 * figure.per_second() / baseline.per_second()
        );
    }
    println!("(ratio: jobs/s against `{}`)", baseline.label);
}

async fn memory(jobs: u64) {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let queue = QueueName::new("bench");
    // Warm up allocator and runtime.
    raw_loop(&broker, &queue, jobs / 10).await;
    let raw = Figure {
        label: "memory: raw consume/ack loop".into(),
        jobs,
        elapsed: raw_loop(&broker, &queue, jobs).await,
    };
    let mut figures = vec![];
    for concurrency in [1, 16, 64] {
        figures.push(Figure {
            label: format!("memory: longshore worker, concurrency {concurrency}"),
            jobs,
            elapsed: longshore_run(&broker, &queue, jobs, concurrency).await,
        });
    }
    figures.insert(
        0,
        Figure {
            label: raw.label.clone(),
            ..raw
        },
    );
    print(&figures, &figures[0]);
}

mod amqp;
mod latency;
mod measure;
mod rss;
mod sqs;
mod status;
mod telemetry;

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    // `cargo test --all-targets` runs this binary without `--bench`: a short smoke run on
    // the in-memory broker keeps it working without spending the test suite's time.
    let benching = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let jobs = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    if !benching && which.is_empty() {
        println!("smoke run (use `cargo bench` for figures)");
        runtime.block_on(memory(2_000));
        return;
    }
    if let Some(at) = which.iter().position(|w| w == "telemetry-run") {
        let mode = which.get(at + 1).map_or("off", String::as_str);
        let amqp_jobs = std::env::var("BENCH_JOBS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(30_000);
        telemetry::telemetry_run(&runtime, mode, amqp_jobs);
        return;
    }
    if which.iter().any(|w| w == "longshore-noop") {
        // For `scripts/bench peers`: one figure, as JSON.
        let took = runtime.block_on(amqp::longshore_noop(jobs));
        println!(
            "{{\"jobs_per_second\": {:.0}}}",
            jobs as f64 / took.as_secs_f64()
        );
        return;
    }
    if which.iter().any(|w| w == "rss") {
        runtime.block_on(rss::run(jobs.min(100_000)));
        return;
    }
    if which.iter().any(|w| w == "latency") {
        let seconds = std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10);
        runtime.block_on(latency::run(seconds));
        return;
    }
    if which.iter().any(|w| w == "telemetry") {
        telemetry::telemetry();
        return;
    }
    if wants("memory") {
        runtime.block_on(memory(jobs));
    }
    if wants("sqs") {
        let jobs = std::env::var("BENCH_JOBS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(3_000);
        runtime.block_on(sqs::run(jobs));
    }
    if which.iter().any(|w| w == "status") {
        let jobs = std::env::var("BENCH_JOBS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(20_000);
        runtime.block_on(status::run(jobs));
    }
    if wants("amqp") {
        let jobs = std::env::var("BENCH_JOBS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(50_000);
        runtime.block_on(amqp::run(jobs));
    }
}
