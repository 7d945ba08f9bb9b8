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
use longshore::{Broker, ENQUEUE_WINDOW, JobError, Producer, QueueName, QueueOptions, Worker};

use super::measure::{cpu_seconds, median, perf_control};
use super::{Figure, Noop, noop, print, with_hooks};

/// Publishes no-op job `n` as a plain client would; the confirm is the caller's to await.
async fn publish_noop(channel: &Channel, queue: &str, n: u64) -> lapin::PublisherConfirm {
    publish_body(channel, queue, format!(r#"{{"n":{n}}}"#).as_bytes()).await
}

/// Publishes `body` as a plain client would (persistent, `longshore-job: noop`); the
/// confirm is the caller's to await.
pub(super) async fn publish_body(
    channel: &Channel,
    queue: &str,
    body: &[u8],
) -> lapin::PublisherConfirm {
    let mut headers = FieldTable::default();
    headers.insert("longshore-job".into(), AMQPValue::LongString("noop".into()));
    let properties = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
}

async fn fill(channel: &Channel, queue: &str, jobs: u64) {
    for n in 0..jobs {
        // Pipelined: confirms are awaited together below.
        let _confirm = publish_noop(channel, queue, n).await;
    }
    channel.wait_for_confirms().await.expect("confirms");
}

async fn fresh_queue(broker: &Arc<dyn Broker>, queue: &QueueName, channel: &Channel, jobs: u64) {
    broker.delete(queue).await.expect("delete");
    broker
        .declare(queue, &QueueOptions::default())
        .await
        .expect("declare");
    fill(channel, queue.as_str(), jobs).await;
}

/// A raw consumer of `queue` on a channel of its own with `prefetch`.
pub(super) async fn raw_consumer(
    connection: &Connection,
    queue: &QueueName,
    prefetch: u16,
) -> (Channel, lapin::Consumer) {
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (channel, consumer)
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
    let start = Instant::now();
    let (channel, mut consumer) = raw_consumer(connection, queue, prefetch).await;
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

/// The raw loop with coalesced acks: a task per delivery reports its tag when done; one
/// acker task acks the longest run of finished tags with `multiple=true`, once per batch of
/// reports it finds waiting.
async fn raw_coalesced(
    connection: &Connection,
    queue: &QueueName,
    jobs: u64,
    prefetch: u16,
    work: Duration,
) -> Duration {
    let start = Instant::now();
    let (channel, mut consumer) = raw_consumer(connection, queue, prefetch).await;
    let (finished_tx, mut finished) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let acker_channel = channel.clone();
    let acker = tokio::spawn(async move {
        let mut floor = 0;
        let mut above = std::collections::BTreeSet::new();
        let mut acked = 0;
        let mut batch = Vec::new();
        while acked < jobs {
            if finished.recv_many(&mut batch, 4096).await == 0 {
                break;
            }
            above.extend(batch.drain(..));
            let before = floor;
            while above.remove(&(floor + 1)) {
                floor += 1;
            }
            if floor > before {
                acker_channel
                    .basic_ack(floor, BasicAckOptions { multiple: true })
                    .await
                    .expect("ack");
                acked += floor - before;
            }
        }
    });
    for _ in 0..jobs {
        let delivery = consumer.next().await.expect("open").expect("delivery");
        let _job: Noop = serde_json::from_slice(&delivery.data).expect("decode");
        let finished = finished_tx.clone();
        tokio::spawn(async move {
            if !work.is_zero() {
                tokio::time::sleep(work).await;
            }
            let _ = finished.send(delivery.delivery_tag);
        });
    }
    acker.await.expect("the acker");
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
    let builder = with_hooks(Worker::builder(Arc::clone(broker), queue.clone()))
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
        Err(error) => {
            panic!("RabbitMQ is not reachable ({error}); start it with `rabbitmq-server -detached`")
        }
    }
}

/// A raw lapin connection and a confirming channel to fill queues with.
pub(super) async fn raw_publisher() -> (Connection, Channel) {
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

/// Publishes `jobs` messages as a raw client would, keeping up to `window` unconfirmed.
async fn raw_windowed_publish(
    channel: &Channel,
    queue: &str,
    jobs: u64,
    window: usize,
) -> Duration {
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::with_capacity(window);
    for n in 0..jobs {
        pending.push_back(publish_noop(channel, queue, n).await);
        if pending.len() >= window {
            let oldest = pending.pop_front().expect("one pending");
            assert!(oldest.await.expect("confirm").is_ack());
        }
    }
    for confirm in pending {
        assert!(confirm.await.expect("confirm").is_ack());
    }
    start.elapsed()
}

/// Enqueue throughput: a raw windowed confirm publish, longshore's `enqueue_many`, and one
/// caller awaiting each `enqueue` in turn; interleaved for `BENCH_ROUNDS` rounds, best of
/// each, with each round's `enqueue_many` against that round's raw publish (and, with
/// `BENCH_CPU=1`, the CPU µs per job of this process and of RabbitMQ).
async fn enqueue_figures(broker: &Arc<dyn Broker>, publisher: &Channel, jobs: u64) {
    let queue = QueueName::new("longshore-bench-enqueue");
    let producer = Producer::new(Arc::clone(broker), queue.clone());
    let noops: Vec<Noop> = (0..jobs).map(|n| Noop { n }).collect();
    let serial_jobs = (jobs / 10).max(1);
    let show_cpu = std::env::var("BENCH_CPU").is_ok_and(|v| v == "1");
    let mut best = [Duration::MAX; 3];
    let mut round_ratios = Vec::new();
    for number in 1..=rounds() {
        let mut round = [Duration::MAX; 3];
        let mut cpu = [[0.0; 2]; 3];
        for index in 0..3 {
            broker.delete(&queue).await.expect("delete");
            broker
                .declare(&queue, &QueueOptions::default())
                .await
                .expect("declare");
            (round[index], cpu[index]) = match index {
                0 => {
                    measured(
                        "raw-publish",
                        jobs,
                        raw_windowed_publish(publisher, queue.as_str(), jobs, ENQUEUE_WINDOW),
                    )
                    .await
                }
                1 => {
                    measured("enqueue-many", jobs, async {
                        let start = Instant::now();
                        for answer in producer.enqueue_many(&noops).await {
                            answer.expect("enqueued");
                        }
                        start.elapsed()
                    })
                    .await
                }
                _ => {
                    measured("enqueue", serial_jobs, async {
                        let start = Instant::now();
                        for job in &noops[..serial_jobs as usize] {
                            producer.enqueue(job).await.expect("enqueued");
                        }
                        start.elapsed()
                    })
                    .await
                }
            };
        }
        if show_cpu {
            println!(
                "enqueue round {number}: CPU µs/job (this process + RabbitMQ): raw publish {:.1} + {:.1}, enqueue_many {:.1} + {:.1}",
                cpu[0][0], cpu[0][1], cpu[1][0], cpu[1][1]
            );
        }
        round_ratios.push(round[0].as_secs_f64() / round[1].as_secs_f64());
        for (best, this) in best.iter_mut().zip(round) {
            *best = (*best).min(this);
        }
    }
    let figures = [
        Figure {
            label: format!(
                "rabbitmq enqueue: raw confirm publish, {ENQUEUE_WINDOW} unconfirmed at most"
            ),
            jobs,
            elapsed: best[0],
        },
        Figure {
            label: "rabbitmq enqueue: longshore enqueue_many".into(),
            jobs,
            elapsed: best[1],
        },
        Figure {
            label: "rabbitmq enqueue: longshore enqueue, one caller, each awaited".into(),
            jobs: serial_jobs,
            elapsed: best[2],
        },
    ];
    print(&figures, &figures[0]);
    print_round_ratios("enqueue_many against the raw publish", round_ratios);
    broker.delete(&queue).await.expect("delete");
}

/// Prints each round's ratio, lowest first, and their median.
fn print_round_ratios(what: &str, mut ratios: Vec<f64>) {
    let median = median(&mut ratios);
    println!(
        "{what}, round by round: {} (median {:.0}%)",
        ratios
            .iter()
            .map(|ratio| format!("{:.0}%", ratio * 100.0))
            .collect::<Vec<_>>()
            .join(", "),
        median * 100.0
    );
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

/// One longshore run of `jobs` no-op jobs at prefetch and concurrency 100, as
/// `scripts/bench peers` compares it with Celery and Dramatiq.
pub(super) async fn longshore_noop(jobs: u64) -> Duration {
    let broker = broker().await;
    let (_connection, publisher) = raw_publisher().await;
    let queue = QueueName::new("longshore-bench-peers");
    fresh_queue(&broker, &queue, &publisher, jobs).await;
    let took = with_longshore(&broker, &queue, jobs, 100, 100, false).await;
    broker.delete(&queue).await.expect("delete");
    took
}

/// Rounds of each configuration (`BENCH_ROUNDS`, 3 unless set).
pub(super) fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3)
}

/// Runs `run`, profiled when `BENCH_PERF_RUN` names it (`raw-coalesced`, `raw-serial`,
/// `raw-tasks`, `longshore`, `raw-publish`, `enqueue-many`, `enqueue`; with
/// `BENCH_PERF_CONTROL`); returns its time and the CPU µs
/// per job of this process and of RabbitMQ while it ran.
async fn measured(
    name: &str,
    jobs: u64,
    run: impl std::future::Future<Output = Duration>,
) -> (Duration, [f64; 2]) {
    let profiled = std::env::var("BENCH_PERF_RUN").is_ok_and(|run| run == name);
    let before = cpu_seconds(&["throughput", "beam.smp"]);
    if profiled {
        perf_control("enable");
    }
    let took = run.await;
    if profiled {
        perf_control("disable");
    }
    let after = cpu_seconds(&["throughput", "beam.smp"]);
    let per_job = |i: usize| (after[i] - before[i]) * 1e6 / jobs as f64;
    (took, [per_job(0), per_job(1)])
}

pub(super) async fn run(jobs: u64) {
    let broker = broker().await;
    let (connection, publisher) = raw_publisher().await;
    let queue = QueueName::new("longshore-bench");

    // Each configuration runs the raw loops and longshore back to back, three times
    // (`BENCH_ROUNDS`), keeping the best of each, so all see the same broker state; and
    // prints each round's ratio.
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
    // `BENCH_AMQP_CASES` picks cases (`100`, `1000`, `io`, `enqueue`; all unless set).
    let picked = std::env::var("BENCH_AMQP_CASES").unwrap_or_default();
    let picked = |name: &str| picked.is_empty() || picked.split(',').any(|p| p.trim() == name);
    let show_cpu = std::env::var("BENCH_CPU").is_ok_and(|v| v == "1");
    for (label, prefetch, concurrency, work, jobs) in cases {
        let name = if !work.is_zero() {
            "io".to_string()
        } else {
            prefetch.to_string()
        };
        if !picked(&name) {
            continue;
        }
        let mut best = [Duration::MAX; 4];
        // Each round's longshore time against that round's coalescing raw loop: drift of a
        // shared machine between rounds cancels out of these.
        let mut round_ratios = Vec::new();
        for number in 1..=rounds() {
            let mut round = [Duration::MAX; 4];
            let mut cpu = [[0.0; 2]; 4];
            fresh_queue(&broker, &queue, &publisher, jobs).await;
            (round[3], cpu[3]) = measured(
                "raw-coalesced",
                jobs,
                raw_coalesced(&connection, &queue, jobs, prefetch, work),
            )
            .await;
            if work.is_zero() {
                fresh_queue(&broker, &queue, &publisher, jobs).await;
                (round[0], cpu[0]) = measured(
                    "raw-serial",
                    jobs,
                    raw(&connection, &queue, jobs, prefetch, false, work),
                )
                .await;
            }
            fresh_queue(&broker, &queue, &publisher, jobs).await;
            (round[1], cpu[1]) = measured(
                "raw-tasks",
                jobs,
                raw(&connection, &queue, jobs, prefetch, true, work),
            )
            .await;
            fresh_queue(&broker, &queue, &publisher, jobs).await;
            (round[2], cpu[2]) = measured(
                "longshore",
                jobs,
                with_longshore(
                    &broker,
                    &queue,
                    jobs,
                    prefetch,
                    concurrency,
                    !work.is_zero(),
                ),
            )
            .await;
            if show_cpu {
                println!(
                    "{label} round {number}: CPU µs/job (this process + RabbitMQ): raw coalesced {:.1} + {:.1}, longshore {:.1} + {:.1}",
                    cpu[3][0], cpu[3][1], cpu[2][0], cpu[2][1]
                );
            }
            let raw_round = round[0].min(round[1]).min(round[3]);
            round_ratios.push(raw_round.as_secs_f64() / round[2].as_secs_f64());
            for (best, this) in best.iter_mut().zip(round) {
                *best = (*best).min(this);
            }
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
            label: format!("rabbitmq {label}: raw lapin, a task per delivery, coalesced acks"),
            jobs,
            elapsed: best[3],
        });
        figures.push(Figure {
            label: format!("rabbitmq {label}: longshore, concurrency {concurrency}"),
            jobs,
            elapsed: best[2],
        });
        // Against the best raw loop.
        let raw_best = figures[..figures.len() - 1]
            .iter()
            .min_by_key(|figure| figure.elapsed)
            .expect("raw loops ran");
        print(&figures, raw_best);
        print_round_ratios("longshore against the best raw loop", round_ratios);
    }
    broker.delete(&queue).await.expect("delete");
    if picked("enqueue") {
        enqueue_figures(&broker, &publisher, jobs.min(50_000)).await;
    }
}
