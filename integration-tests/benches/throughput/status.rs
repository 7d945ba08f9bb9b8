//! `-- status`: RabbitMQ jobs whose status is tracked (in memory, Redis and PostgreSQL)
//! against the same jobs untracked, in the same run, in interleaved rounds: the cost of job
//! status, for no-op jobs (the worst case: status is all the work there is) and for jobs
//! that wait 5 ms on I/O. The producer writes each status before publishing (not timed: the
//! queue is filled first); the worker writes `running` and `succeeded` per job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use longshore::status::{JobStatuses, MemoryStatusStore};
use longshore::{Broker, JobError, Producer, QueueName, QueueOptions, Worker};

use super::measure::{cpu_seconds, perf_control};
use super::{Figure, Noop, amqp, noop, print};

async fn io_job(_: Noop) -> Result<(), JobError> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    Ok(())
}

/// What the jobs of a run do.
#[derive(Clone, Copy, PartialEq)]
enum Work {
    Noop,
    Io,
}

impl Work {
    fn label(self) -> &'static str {
        match self {
            Work::Noop => "no-op",
            Work::Io => "5 ms I/O job",
        }
    }
}

const FILLERS: u64 = 32;

async fn store(name: &str) -> Option<JobStatuses> {
    let retention = Duration::from_secs(120);
    let statuses = match name {
        "off" => return None,
        "memory" => JobStatuses::new(MemoryStatusStore::new()),
        "redis" => {
            let url = std::env::var("LONGSHORE_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
            let store = longshore::status_store::RedisStatusStore::connect(&url)
                .await
                .unwrap_or_else(|error| panic!("Redis at {url}: {error}; scripts/bench starts it"));
            JobStatuses::new(store.prefix("longshore-bench:"))
        }
        "postgres" => {
            let url = std::env::var("LONGSHORE_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let store = longshore::status_store::PostgresStatusStore::connect(&url)
                .await
                .unwrap_or_else(|error| {
                    panic!("PostgreSQL at {url}: {error}; scripts/bench starts it")
                });
            JobStatuses::new(store)
        }
        other => panic!("unknown store {other}"),
    };
    Some(statuses.retention(retention).pending_retention(retention))
}

/// Fills the queue with `jobs` no-op jobs, tracked in `statuses` when given: concurrent
/// enqueues share the publisher's confirms.
async fn fill(
    broker: &Arc<dyn Broker>,
    queue: &QueueName,
    jobs: u64,
    statuses: Option<&JobStatuses>,
) {
    broker.delete(queue).await.expect("delete");
    broker
        .declare(queue, &QueueOptions::default())
        .await
        .expect("declare");
    let mut producer = Producer::new(Arc::clone(broker), queue.clone());
    if let Some(statuses) = statuses {
        producer = producer.with_status(statuses.clone());
    }
    let mut fillers = tokio::task::JoinSet::new();
    for filler in 0..FILLERS {
        let producer = producer.clone();
        fillers.spawn(async move {
            for n in (filler..jobs).step_by(FILLERS as usize) {
                producer.enqueue(&Noop { n }).await.expect("enqueue");
            }
        });
    }
    while fillers.join_next().await.is_some() {}
}

async fn drain(
    broker: &Arc<dyn Broker>,
    queue: &QueueName,
    jobs: u64,
    statuses: Option<&JobStatuses>,
    work: Work,
) -> Duration {
    let builder = Worker::builder(Arc::clone(broker), queue.clone());
    let mut builder = match work {
        Work::Noop => builder.handler(noop),
        Work::Io => builder.handler(io_job),
    }
    .prefetch(100)
    .concurrency(100);
    if let Some(statuses) = statuses {
        builder = builder.status(statuses.clone());
    }
    let worker = builder.build().expect("build");
    let (stats, shutdown) = (worker.stats(), worker.shutdown_handle());
    let start = Instant::now();
    let running = tokio::spawn(worker.run_until_stopped());
    while stats.snapshot().succeeded < jobs {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let elapsed = start.elapsed();
    shutdown.shutdown();
    running.await.expect("join").expect("run");
    elapsed
}

/// The processes whose CPU a drain is charged with: the worker (this process), RabbitMQ,
/// PostgreSQL and Redis.
const PROCESSES: [&str; 4] = ["throughput", "beam.smp", "postgres", "redis-server"];

/// For no-op jobs and for 5 ms I/O jobs (`BENCH_STATUS_WORK=noop` or `io` picks one),
/// prints each store's median drain rate and its ratio to untracked jobs, and (with
/// `BENCH_CPU=1`) where the CPU of each drain went, in µs per job. `BENCH_STORES` picks
/// stores (`off,postgres`, say); `BENCH_ROUNDS` the rounds (3 unless set).
pub(super) async fn run(jobs: u64) {
    let broker = amqp::broker().await;
    let picked = std::env::var("BENCH_STATUS_WORK").unwrap_or_default();
    for work in [Work::Noop, Work::Io] {
        let name = if work == Work::Noop { "noop" } else { "io" };
        if picked.is_empty() || picked.split(',').any(|p| p.trim() == name) {
            run_work(&broker, jobs, work).await;
        }
    }
}

async fn run_work(broker: &Arc<dyn Broker>, jobs: u64, work: Work) {
    let queue = QueueName::new("longshore-bench-status");
    let picked = std::env::var("BENCH_STORES").unwrap_or_default();
    let names: Vec<&str> = ["off", "memory", "redis", "postgres"]
        .into_iter()
        .filter(|name| picked.is_empty() || picked.split(',').any(|p| p.trim() == *name))
        .collect();
    let show_cpu = std::env::var("BENCH_CPU").is_ok_and(|v| v == "1");
    let mut stores = Vec::new();
    for &name in &names {
        stores.push((name, store(name).await));
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    for round in 0..amqp::rounds() {
        for (index, (name, statuses)) in stores.iter().enumerate() {
            fill(broker, &queue, jobs, statuses.as_ref()).await;
            let before = cpu_seconds(&PROCESSES);
            perf_control("enable");
            let elapsed = drain(broker, &queue, jobs, statuses.as_ref(), work).await;
            perf_control("disable");
            let after = cpu_seconds(&PROCESSES);
            if let Some(statuses) = statuses {
                statuses.flush(Duration::from_secs(30)).await;
            }
            let cpu = if show_cpu {
                PROCESSES
                    .iter()
                    .zip(before.iter().zip(&after))
                    .map(|(name, (b, a))| format!(" {name} {:.1}", (a - b) * 1e6 / jobs as f64))
                    .collect::<String>()
                    + " (CPU µs/job)"
            } else {
                String::new()
            };
            println!(
                "{} round {round}: {name:<8} {:>8.0} jobs/s{cpu}",
                work.label(),
                jobs as f64 / elapsed.as_secs_f64()
            );
            times[index].push(elapsed);
        }
    }
    let figures: Vec<Figure> = names
        .iter()
        .zip(times)
        .map(|(name, mut times)| {
            times.sort();
            Figure {
                label: format!(
                    "rabbitmq {}, prefetch 100, concurrency 100: job status {}",
                    work.label(),
                    if *name == "off" {
                        "off (untracked)".to_owned()
                    } else {
                        format!("in {name}")
                    }
                ),
                jobs,
                elapsed: times[times.len() / 2],
            }
        })
        .collect();
    print(&figures, &figures[0]);
    broker.delete(&queue).await.expect("delete");
    for (_, statuses) in stores {
        if let Some(statuses) = statuses {
            let _ = statuses.store().purge_expired().await;
        }
    }
}
