//! A job status store that fails never stops jobs: a Redis frozen mid-run (SIGSTOP, a
//! private server) and a PostgreSQL nobody listens for; the jobs run and settle, and the
//! statuses catch up once the store answers again.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::harness::{Running, eventually, unique_queue};
use integration_tests::report::{Report, report};
use longshore::status::{JobState, JobStatuses};
use longshore::{Broker, MemoryBroker, Producer, QueueOptions, Worker};

/// A Redis server of the test's own, on a free port.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start redis-server ({error}); run `scripts/test`, which installs it")
            });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn job() -> Report {
    Report {
        steps: 1,
        pause_ms: 10,
        fail_first: false,
        hang_first: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_through_a_frozen_redis_and_their_statuses_catch_up() {
    integration_tests::harness::log_to_test_output();
    const JOBS: u64 = 300;
    let redis = PrivateRedis::start();
    let statuses = longshore::status_store::connect(&redis.url())
        .await
        .expect("connect");
    let broker = MemoryBroker::new();
    let queue = unique_queue("outage");
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare");
    let producer = Producer::new(broker.clone(), queue.clone()).with_status(statuses.clone());
    let mut ids = Vec::new();
    for _ in 0..JOBS {
        ids.push(producer.enqueue(&job()).await.expect("enqueue"));
    }
    let worker = Running::start(
        Worker::builder(broker.clone(), queue.clone())
            .handler(report)
            .status(statuses.clone())
            .concurrency(8),
    );
    eventually(Duration::from_secs(30), "a third of the jobs", || async {
        let done = worker.stats.snapshot().succeeded;
        if done >= JOBS / 3 {
            Ok(())
        } else {
            Err(format!("{done}"))
        }
    })
    .await;
    redis.signal("STOP");
    let frozen_at = worker.stats.snapshot().succeeded;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = worker.stats.snapshot().succeeded - frozen_at;
    assert!(
        during > 8,
        "jobs kept running while the store was frozen: {during} finished in 8 s"
    );
    redis.signal("CONT");
    eventually(Duration::from_secs(60), "every job to finish", || async {
        let done = worker.stats.snapshot().succeeded;
        if done == JOBS {
            Ok(())
        } else {
            Err(format!("{done}"))
        }
    })
    .await;
    worker.stop().await;
    eventually(
        Duration::from_secs(60),
        "every status to catch up",
        || async {
            let mut behind = 0;
            for id in &ids {
                match statuses.get(id).await {
                    Ok(Some(status)) if status.state == JobState::Succeeded => {}
                    _ => behind += 1,
                }
            }
            if behind == 0 {
                Ok(())
            } else {
                Err(format!("{behind} statuses behind"))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_when_postgresql_does_not_answer() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let store = longshore::status_store::PostgresStatusStore::connect_lazy(&format!(
        "postgres://postgres@127.0.0.1:{closed}/test"
    ))
    .expect("a store that connects when first needed");
    let statuses = JobStatuses::new(store);
    let broker = MemoryBroker::new();
    let queue = unique_queue("outage-pg");
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare");
    // The producer cannot write statuses: it enqueues the jobs untracked, saying so.
    let producer = Producer::new(broker.clone(), queue.clone()).with_status(statuses.clone());
    for _ in 0..20 {
        producer
            .enqueue(&job())
            .await
            .expect("enqueued without its status");
    }
    // Tracked jobs whose worker's store is down run all the same.
    let good = JobStatuses::new(longshore::status::MemoryStatusStore::new());
    let tracked = Producer::new(broker.clone(), queue.clone()).with_status(good);
    for _ in 0..20 {
        tracked.enqueue(&job()).await.expect("enqueue");
    }
    let worker = Running::start(
        Worker::builder(broker.clone(), queue.clone())
            .handler(report)
            .status(statuses),
    );
    eventually(Duration::from_secs(60), "all 40 jobs to finish", || async {
        let done = worker.stats.snapshot().succeeded;
        if done == 40 {
            Ok(())
        } else {
            Err(format!("{done}"))
        }
    })
    .await;
    worker.stop().await;
    assert_eq!(broker.stats(&queue).await.expect("stats").total(), 0);
}
