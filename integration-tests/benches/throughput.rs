//! Throughput of no-op jobs through longshore against a raw consume-and-ack loop on the same
//! broker, in the same run. Prints jobs/s, mean per-job cost and the ratio.
//!
//! `cargo bench -p integration-tests --bench throughput [-- memory] [-- amqp] [-- sqs]`
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
static HOOKS: std::sync::OnceLock<Arc<dyn longshore::spi::Telemetry>> = std::sync::OnceLock::new();

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
        "{:<72} {:>9} {:>8} {:>7}",
        "run", "jobs/s", "µs/job", "ratio"
    );
    for figure in figures {
        println!(
            "{:<72} {:>9.0} {:>8.2} {:>6.0}%",
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

mod amqp {
    //! RabbitMQ: longshore against a raw lapin consume-and-ack loop on the same broker.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
    use longshore::{Broker, JobError, QueueName, QueueOptions, Worker};

    use super::{Figure, Noop, noop, print};

    async fn fill(channel: &Channel, queue: &str, jobs: u64) {
        let mut headers = FieldTable::default();
        headers.insert("longshore-job".into(), AMQPValue::LongString("noop".into()));
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_delivery_mode(2);
        for n in 0..jobs {
            let body = format!(r#"{{"n":{n}}}"#);
            // Pipelined: confirms are awaited together below.
            let _confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    properties.clone(),
                )
                .await
                .expect("publish");
        }
        channel.wait_for_confirms().await.expect("confirms");
    }

    async fn fresh_queue(
        broker: &Arc<dyn Broker>,
        queue: &QueueName,
        channel: &Channel,
        jobs: u64,
    ) {
        broker.delete(queue).await.expect("delete");
        broker
            .declare(queue, &QueueOptions::default())
            .await
            .expect("declare");
        fill(channel, queue.as_str(), jobs).await;
    }

    /// The raw loop: consume, decode, ack. `spawn: false` awaits each ack in turn (a serial
    /// handler); `spawn: true` hands each delivery to its own task that waits `work` and acks
    /// (concurrent handlers, bounded by the prefetch).
    async fn raw(
        connection: &Connection,
        queue: &QueueName,
        jobs: u64,
        prefetch: u16,
        spawn: bool,
        work: Duration,
    ) -> Duration {
        let channel = connection.create_channel().await.expect("channel");
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .expect("qos");
        let start = Instant::now();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let done = Arc::new(AtomicU64::new(0));
        let mut received = 0;
        while received < jobs {
            let delivery = consumer.next().await.expect("open").expect("delivery");
            received += 1;
            let _job: Noop = serde_json::from_slice(&delivery.data).expect("decode");
            if spawn {
                let done = Arc::clone(&done);
                tokio::spawn(async move {
                    if !work.is_zero() {
                        tokio::time::sleep(work).await;
                    }
                    delivery.ack(BasicAckOptions::default()).await.expect("ack");
                    done.fetch_add(1, Ordering::Relaxed);
                });
            } else {
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }
        while done.load(Ordering::Relaxed) < jobs {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let elapsed = start.elapsed();
        drop(consumer);
        let _ = channel.close(200, "done".into()).await;
        elapsed
    }

    async fn io_job(_: Noop) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Ok(())
    }

    async fn with_longshore(
        broker: &Arc<dyn Broker>,
        queue: &QueueName,
        jobs: u64,
        prefetch: u16,
        concurrency: usize,
        io: bool,
    ) -> Duration {
        let builder = super::with_hooks(Worker::builder(Arc::clone(broker), queue.clone()))
            .prefetch(prefetch)
            .concurrency(concurrency);
        let worker = if io {
            builder.handler(io_job)
        } else {
            builder.handler(noop)
        }
        .build()
        .expect("build");
        let (stats, shutdown) = (worker.stats(), worker.shutdown_handle());
        let start = Instant::now();
        let running = tokio::spawn(worker.run_until_stopped());
        while stats.snapshot().succeeded < jobs {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let elapsed = start.elapsed();
        shutdown.shutdown();
        running.await.expect("join").expect("run");
        elapsed
    }

    pub(super) fn url() -> String {
        std::env::var("LONGSHORE_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    }

    pub(super) async fn broker() -> Arc<dyn Broker> {
        match longshore::amqp::AmqpBroker::connect(url().as_str()).await {
            Ok(broker) => Arc::new(broker),
            Err(error) => panic!(
                "RabbitMQ is not reachable ({error}); start it with `rabbitmq-server -detached`"
            ),
        }
    }

    /// A raw lapin connection and a confirming channel to fill queues with.
    async fn raw_publisher() -> (Connection, Channel) {
        let connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .expect("raw connection");
        let publisher = connection.create_channel().await.expect("channel");
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        (connection, publisher)
    }

    /// Best of three longshore runs on RabbitMQ: (no-op at prefetch 100, 5 ms I/O).
    pub(super) async fn longshore_only(jobs: u64) -> (Duration, Duration) {
        let broker = broker().await;
        let (_connection, publisher) = raw_publisher().await;
        let queue = QueueName::new("longshore-bench-telemetry");
        let mut best = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            fresh_queue(&broker, &queue, &publisher, jobs).await;
            best.0 = best
                .0
                .min(with_longshore(&broker, &queue, jobs, 100, 100, false).await);
            fresh_queue(&broker, &queue, &publisher, jobs / 2).await;
            best.1 = best
                .1
                .min(with_longshore(&broker, &queue, jobs / 2, 100, 100, true).await);
        }
        broker.delete(&queue).await.expect("delete");
        best
    }

    pub(super) async fn run(jobs: u64) {
        let broker = broker().await;
        let (connection, publisher) = raw_publisher().await;
        let queue = QueueName::new("longshore-bench");

        // Each configuration runs the raw loops and longshore back to back, three times,
        // keeping the best of each, so all see the same broker state.
        let cases: [(&str, u16, usize, Duration, u64); 3] = [
            ("no-op, prefetch 100", 100, 100, Duration::ZERO, jobs),
            ("no-op, prefetch 1000", 1000, 1000, Duration::ZERO, jobs),
            (
                "5 ms I/O job, prefetch 100",
                100,
                100,
                Duration::from_millis(5),
                jobs / 2,
            ),
        ];
        for (label, prefetch, concurrency, work, jobs) in cases {
            let mut best = [Duration::MAX; 3];
            for _ in 0..3 {
                if work.is_zero() {
                    fresh_queue(&broker, &queue, &publisher, jobs).await;
                    best[0] =
                        best[0].min(raw(&connection, &queue, jobs, prefetch, false, work).await);
                }
                fresh_queue(&broker, &queue, &publisher, jobs).await;
                best[1] = best[1].min(raw(&connection, &queue, jobs, prefetch, true, work).await);
                fresh_queue(&broker, &queue, &publisher, jobs).await;
                best[2] = best[2].min(
                    with_longshore(
                        &broker,
                        &queue,
                        jobs,
                        prefetch,
                        concurrency,
                        !work.is_zero(),
                    )
                    .await,
                );
            }
            let mut figures = Vec::new();
            if work.is_zero() {
                figures.push(Figure {
                    label: format!("rabbitmq {label}: raw lapin, ack awaited in turn"),
                    jobs,
                    elapsed: best[0],
                });
            }
            figures.push(Figure {
                label: format!("rabbitmq {label}: raw lapin, a task per delivery"),
                jobs,
                elapsed: best[1],
            });
            figures.push(Figure {
                label: format!("rabbitmq {label}: longshore, concurrency {concurrency}"),
                jobs,
                elapsed: best[2],
            });
            let baseline = figures.len() - 2;
            print(&figures, &figures[baseline]);
        }
        broker.delete(&queue).await.expect("delete");
    }
}

mod sqs {
    //! SQS (on the emulator): longshore against a raw aws-sdk-sqs receive/delete-batch loop.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use aws_sdk_sqs::Client;
    use aws_sdk_sqs::types::{
        DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
    };
    use longshore::{Broker, QueueName, QueueOptions};

    use super::{Figure, Noop, print};

    fn endpoint() -> String {
        std::env::var("LONGSHORE_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
    }

    async fn client() -> Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "bench",
            ))
            .load()
            .await;
        Client::new(&config)
    }

    async fn fill(client: &Client, url: &str, jobs: u64) {
        let job = MessageAttributeValue::builder()
            .data_type("String")
            .string_value("noop")
            .build()
            .expect("attribute");
        let mut sends = tokio::task::JoinSet::new();
        for chunk in 0..jobs.div_ceil(10) {
            let (client, url, job) = (client.clone(), url.to_owned(), job.clone());
            sends.spawn(async move {
                let entries = (0..10u64.min(jobs - chunk * 10))
                    .map(|i| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(format!(r#"{{"n":{}}}"#, chunk * 10 + i))
                            .message_attributes("longshore-job", job.clone())
                            .build()
                            .expect("entry")
                    })
                    .collect::<Vec<_>>();
                client
                    .send_message_batch()
                    .queue_url(url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .expect("send batch");
            });
            while sends.len() >= 16 {
                sends.join_next().await;
            }
        }
        while sends.join_next().await.is_some() {}
    }

    /// The raw loop: `loops` tasks each receiving up to 10 with long polling, decoding, and
    /// deleting them with one `DeleteMessageBatch`.
    async fn raw(client: &Client, url: &str, jobs: u64, loops: usize) -> Duration {
        let done = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..loops {
            let (client, url, done) = (client.clone(), url.to_owned(), Arc::clone(&done));
            tasks.spawn(async move {
                while done.load(Ordering::Relaxed) < jobs {
                    let received = client
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(10)
                        .wait_time_seconds(1)
                        .message_attribute_names("All")
                        .send()
                        .await
                        .expect("receive");
                    let messages = received.messages.unwrap_or_default();
                    if messages.is_empty() {
                        continue;
                    }
                    let entries = messages
                        .iter()
                        .enumerate()
                        .map(|(i, m)| {
                            let _job: Noop =
                                serde_json::from_str(m.body().unwrap_or_default()).expect("decode");
                            DeleteMessageBatchRequestEntry::builder()
                                .id(i.to_string())
                                .receipt_handle(m.receipt_handle().unwrap_or_default())
                                .build()
                                .expect("entry")
                        })
                        .collect::<Vec<_>>();
                    let n = entries.len() as u64;
                    client
                        .delete_message_batch()
                        .queue_url(&url)
                        .set_entries(Some(entries))
                        .send()
                        .await
                        .expect("delete");
                    done.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        start.elapsed()
    }

    pub(super) async fn run(jobs: u64) {
        let broker = longshore::sqs::SqsBroker::builder("sqs://")
            .endpoint_url(endpoint())
            .region("us-east-1")
            .static_credentials("test", "test")
            .connect()
            .await
            .expect("SQS client");
        let broker: Arc<dyn Broker> = Arc::new(broker);
        let client = client().await;
        let queue = QueueName::new("longshore-bench");
        let (mut best_raw, mut best_ours) = (Duration::MAX, Duration::MAX);
        // Concurrency 20 gives longshore a prefetch of 40: four receive loops, as the raw run has.
        for _ in 0..2 {
            for ours in [false, true] {
                broker.delete(&queue).await.expect("delete");
                broker
                    .declare(&queue, &QueueOptions::default())
                    .await
                    .expect("declare — is the SQS emulator running? (scripts/test starts it)");
                let url = client
                    .get_queue_url()
                    .queue_name(queue.as_str())
                    .send()
                    .await
                    .expect("url")
                    .queue_url()
                    .unwrap_or_default()
                    .to_owned();
                fill(&client, &url, jobs).await;
                if ours {
                    best_ours = best_ours.min(
                        super::drain_with_worker(
                            &broker,
                            &queue,
                            jobs,
                            20,
                            Duration::from_millis(1),
                        )
                        .await,
                    );
                } else {
                    best_raw = best_raw.min(raw(&client, &url, jobs, 4).await);
                }
            }
        }
        let figures = [
            Figure {
                label: "sqs (LocalStack): raw receive/delete-batch, 4 loops".into(),
                jobs,
                elapsed: best_raw,
            },
            Figure {
                label: "sqs (LocalStack): longshore, concurrency 20 (4 receive loops)".into(),
                jobs,
                elapsed: best_ours,
            },
        ];
        print(&figures, &figures[0]);
        broker.delete(&queue).await.expect("delete");
    }
}

/// Runs this benchmark again as a child process with `-- telemetry-run <mode>` and reads
/// the figures it prints (`figure <jobs> <nanos>` lines, in order).
fn telemetry_child(mode: &str) -> Vec<(u64, Duration)> {
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
/// process-wide): `off` sets up logs only (`longshore::otel::init` without an endpoint, as a
/// worker runs with no collector), `on` exports spans and metrics over OTLP to a receiver.
fn telemetry_run(runtime: &tokio::runtime::Runtime, mode: &str, amqp_jobs: u64) {
    let receiver = integration_tests::otlp::OtlpReceiver::start_discarding();
    let mut config = longshore::otel::Config::from_env();
    config.otlp = false;
    config.endpoint = None;
    if mode == "on" {
        config = config
            .endpoint(receiver.endpoint())
            .service_name("longshore-bench");
    }
    let guard = longshore::otel::init_with(&config).expect("telemetry sets up");
    if mode == "on" {
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
    guard.flush();
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

/// Longshore with telemetry off and on, each in a child process; prints the ratio.
fn telemetry() {
    let off = telemetry_child("off");
    let on = telemetry_child("on");
    let labels = [
        "memory, concurrency 16",
        "rabbitmq no-op, prefetch 100, concurrency 100",
        "rabbitmq 5 ms I/O job, prefetch 100, concurrency 100",
    ];
    for (label, (off, on)) in labels.into_iter().zip(off.into_iter().zip(on)) {
        let figures = [
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
        telemetry_run(&runtime, mode, amqp_jobs);
        return;
    }
    if which.iter().any(|w| w == "telemetry") {
        telemetry();
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
    if wants("amqp") {
        let jobs = std::env::var("BENCH_JOBS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(50_000);
        runtime.block_on(amqp::run(jobs));
    }
}
