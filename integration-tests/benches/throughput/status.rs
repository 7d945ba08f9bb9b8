//! `-- status`: RabbitMQ no-op jobs whose status is tracked (in memory, Redis and
//! PostgreSQL) against the same jobs untracked, in the same run, in interleaved rounds: the
//! cost of job status. The producer writes each status before publishing (not timed: the
//! queue is filled first); the worker writes `running` and `succeeded` per job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use longshore::status::{JobStatuses, MemoryStatusStore};
use longshore::{Broker, Producer, QueueName, QueueOptions, Worker};

use super::{Figure, Noop, amqp, noop, print};

const ROUNDS: usize = 3;
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
) -> Duration {
    let mut builder = Worker::builder(Arc::clone(broker), queue.clone())
        .handler(noop)
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

/// Prints each store's median drain rate and its ratio to untracked jobs.
pub(super) async fn run(jobs: u64) {
    let broker = amqp::broker().await;
    let queue = QueueName::new("longshore-bench-status");
    let names = ["off", "memory", "redis", "postgres"];
    let mut stores = Vec::new();
    for name in names {
        stores.push((name, store(name).await));
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    for round in 0..ROUNDS {
        for (index, (name, statuses)) in stores.iter().enumerate() {
            fill(&broker, &queue, jobs, statuses.as_ref()).await;
            let elapsed = drain(&broker, &queue, jobs, statuses.as_ref()).await;
            if let Some(statuses) = statuses {
                statuses.flush(Duration::from_secs(30)).await;
            }
            println!(
                "round {round}: {name:<8} {:>8.0} jobs/s",
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
                    "rabbitmq no-op, prefetch 100, concurrency 100: job status {}",
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
