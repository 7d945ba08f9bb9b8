//! Enqueue→start latency on RabbitMQ at a steady rate: a producer sends a job every
//! 2 ms (500 jobs/s) carrying the time it was sent; the consumer notes how long each took
//! to start. longshore (`Producer::enqueue`, a worker) against a raw lapin publisher and
//! consumer (a task per delivery, acked when done); interleaved rounds, p50 and p99.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::BasicAckOptions;
use longshore::{Broker, Dep, Job, JobError, Producer, QueueName, QueueOptions, Worker};
use serde::{Deserialize, Serialize};

use super::amqp;

/// Jobs per second the producer sends.
const RATE: u64 = 500;

#[derive(Serialize, Deserialize)]
struct Timed {
    sent_us: u64,
}

impl Job for Timed {
    const NAME: &'static str = "timed";
}

#[derive(Default)]
struct Latencies(Mutex<Vec<u64>>);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_micros() as u64
}

impl Latencies {
    fn note(&self, sent_us: u64) {
        let waited = now_us().saturating_sub(sent_us);
        self.0.lock().expect("not poisoned").push(waited);
    }

    fn count(&self) -> usize {
        self.0.lock().expect("not poisoned").len()
    }

    /// (p50, p99) in microseconds.
    fn percentiles(&self) -> (u64, u64) {
        let mut all = self.0.lock().expect("not poisoned").clone();
        all.sort_unstable();
        let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
        (at(0.50), at(0.99))
    }
}

async fn timed(job: Timed, latencies: Dep<Latencies>) -> Result<(), JobError> {
    latencies.note(job.sent_us);
    Ok(())
}

/// Sends `jobs` at [`RATE`] with `send`, each stamped when it is due to go.
async fn at_rate<F, Fut>(jobs: u64, send: F)
where
    F: Fn(Timed) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..jobs {
        ticks.tick().await;
        send(Timed { sent_us: now_us() }).await;
    }
}

async fn await_count(latencies: &Latencies, jobs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while (latencies.count() as u64) < jobs {
        assert!(tokio::time::Instant::now() < deadline, "jobs went missing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn longshore_round(broker: &Arc<dyn Broker>, queue: &QueueName, jobs: u64) -> (u64, u64) {
    let latencies = Arc::new(Latencies::default());
    let worker = Worker::builder(Arc::clone(broker), queue.clone())
        .dependency_arc(Arc::clone(&latencies))
        .handler(timed)
        .prefetch(100)
        .concurrency(100)
        .build()
        .expect("build");
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run_until_stopped());
    let producer = Producer::new(Arc::clone(broker), queue.clone());
    at_rate(jobs, |job| {
        let producer = producer.clone();
        async move {
            // Each enqueue on its own task: the producer keeps its rate while confirms
            // are on their way, as a web app's request handlers would.
            tokio::spawn(async move { producer.enqueue(&job).await.expect("enqueue") });
        }
    })
    .await;
    await_count(&latencies, jobs).await;
    shutdown.shutdown();
    running.await.expect("join").expect("run");
    latencies.percentiles()
}

async fn raw_round(queue: &QueueName, jobs: u64) -> (u64, u64) {
    let (connection, publisher) = amqp::raw_publisher().await;
    let (_channel, mut consumer) = amqp::raw_consumer(&connection, queue, 100).await;
    let latencies = Arc::new(Latencies::default());
    let noted = Arc::clone(&latencies);
    let consuming = tokio::spawn(async move {
        for _ in 0..jobs {
            let delivery = consumer.next().await.expect("open").expect("delivery");
            let noted = Arc::clone(&noted);
            tokio::spawn(async move {
                let job: Timed = serde_json::from_slice(&delivery.data).expect("decode");
                noted.note(job.sent_us);
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
            });
        }
    });
    let queue_name = queue.as_str().to_owned();
    at_rate(jobs, |job| {
        let (publisher, queue) = (publisher.clone(), queue_name.clone());
        async move {
            tokio::spawn(async move {
                let body = serde_json::to_vec(&job).expect("encode");
                amqp::publish_body(&publisher, &queue, &body)
                    .await
                    .await
                    .expect("confirm");
            });
        }
    })
    .await;
    await_count(&latencies, jobs).await;
    consuming.await.expect("consumer");
    let _ = connection.close(200, "done".into()).await;
    latencies.percentiles()
}

/// Three interleaved rounds of `seconds` each; prints p50 and p99 per round and medians.
pub(super) async fn run(seconds: u64) {
    let broker = amqp::broker().await;
    let queue = QueueName::new("longshore-bench-latency");
    let jobs = RATE * seconds;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for round in 1..=3 {
        for longshore in [false, true] {
            broker.delete(&queue).await.expect("delete");
            broker
                .declare(&queue, &QueueOptions::default())
                .await
                .expect("declare");
            let figures = if longshore {
                longshore_round(&broker, &queue, jobs).await
            } else {
                raw_round(&queue, jobs).await
            };
            println!(
                "round {round}: {}: p50 {:.2} ms, p99 {:.2} ms",
                if longshore { "longshore" } else { "raw lapin" },
                figures.0 as f64 / 1e3,
                figures.1 as f64 / 1e3
            );
            if longshore { &mut ours } else { &mut raw }.push(figures);
        }
    }
    broker.delete(&queue).await.expect("delete");
    let median = |all: &mut Vec<(u64, u64)>, pick: fn(&(u64, u64)) -> u64| {
        let mut values: Vec<f64> = all.iter().map(|figures| pick(figures) as f64).collect();
        super::measure::median(&mut values) / 1e3
    };
    println!(
        "\nenqueue→start latency on RabbitMQ at {RATE} jobs/s, {jobs} jobs a round, median of 3 rounds"
    );
    println!("{:<40} {:>10} {:>10}", "run", "p50 ms", "p99 ms");
    for (label, all) in [
        ("raw lapin, a task per delivery", &mut raw),
        ("longshore, concurrency 100", &mut ours),
    ] {
        println!(
            "{:<40} {:>10.2} {:>10.2}",
            label,
            median(all, |f| f.0),
            median(all, |f| f.1)
        );
    }
}
