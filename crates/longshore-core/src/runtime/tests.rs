//! The worker's own tests: building, lanes, shutdown, topology.

use serde::{Deserialize, Serialize};

use super::*;
use crate::job::{Job, JobError};
use crate::memory::MemoryBroker;
use crate::scope::Dep;

/// Waits until `done` holds, for up to 10 s; past that the test fails with `what`.
async fn within_10s(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect(what);
}

#[derive(Serialize, Deserialize)]
struct Ping;
impl Job for Ping {
    const NAME: &'static str = "ping";
}

struct Mailer;
struct Database;

async fn needs_two(_: Ping, _: Dep<Mailer>, _: Dep<Database>) -> Result<(), JobError> {
    Ok(())
}

async fn plain(_: Ping) -> Result<(), JobError> {
    Ok(())
}

fn builder() -> WorkerBuilder {
    Worker::builder(Arc::new(MemoryBroker::new()), "q")
}

#[test]
fn missing_dependencies_fail_the_build_naming_each() {
    let error = builder()
        .dependency(Mailer)
        .handler(needs_two)
        .build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the handler of job `ping` needs a `longshore_core::runtime::tests::Database`, but \
         none is registered; add `.dependency(value)` or `.scoped(factory)` to the worker builder"
    );
    builder()
        .dependency(Mailer)
        .scoped(|| async { Ok::<_, JobError>(Database) })
        .handler(needs_two)
        .build()
        .expect("root and scoped values both satisfy `Dep<T>`");
}

#[test]
fn other_bad_configurations_fail_the_build() {
    assert!(matches!(builder().build(), Err(BuildError::NoHandlers(_))));
    assert!(matches!(
        builder().handler(plain).handler(plain).build(),
        Err(BuildError::DuplicateHandler(name)) if name.as_str() == "ping"
    ));
    assert!(matches!(
        builder().handler(plain).concurrency(0).build(),
        Err(BuildError::ZeroConcurrency)
    ));
}

#[test]
fn bad_schedules_fail_the_build_with_the_reason() {
    use crate::schedule::{ScheduleError, Tz};
    let error = |b: WorkerBuilder| b.build().expect_err("the build fails").to_string();
    let bad_cron = error(
        builder()
            .handler(plain)
            .schedule("a", "0 25 * * *", Tz::UTC, || Ping),
    );
    assert!(
        bad_cron.contains("invalid cron expression `0 25 * * *`"),
        "{bad_cron}"
    );
    let bad_name = error(
        builder()
            .handler(plain)
            .schedule("a b", "* * * * *", Tz::UTC, || Ping),
    );
    assert!(
        bad_name.contains("invalid schedule name `a b`"),
        "{bad_name}"
    );
    let twice = builder()
        .handler(plain)
        .schedule("a", "* * * * *", Tz::UTC, || Ping)
        .schedule("a", "0 * * * *", Tz::UTC, || Ping)
        .build();
    assert!(matches!(
        twice,
        Err(BuildError::Schedule(ScheduleError::Duplicate(name))) if name == "a"
    ));
    #[derive(Serialize, Deserialize)]
    struct Pong;
    impl Job for Pong {
        const NAME: &'static str = "pong";
    }
    let unhandled = error(
        builder()
            .handler(plain)
            .schedule("a", "* * * * *", Tz::UTC, || Pong),
    );
    assert!(
        unhandled.contains("enqueues job `pong`, which this worker has no handler for"),
        "{unhandled}"
    );
}

#[test]
fn schedules_on_a_broker_that_cannot_hold_them_fail_the_build() {
    /// A broker without the schedules capability.
    struct Plain(MemoryBroker);
    #[async_trait::async_trait]
    impl Broker for Plain {
        fn system(&self) -> &'static str {
            "plain"
        }
        async fn declare(&self, q: &QueueName, o: &QueueOptions) -> Result<(), BrokerError> {
            self.0.declare(q, o).await
        }
        async fn verify(&self, q: &QueueName) -> Result<(), BrokerError> {
            self.0.verify(q).await
        }
        async fn publish(&self, q: &QueueName, m: crate::spi::Message) -> Result<(), BrokerError> {
            self.0.publish(q, m).await
        }
        async fn consume(
            &self,
            q: &QueueName,
            o: &ConsumeOptions,
        ) -> Result<crate::spi::DeliveryStream, BrokerError> {
            self.0.consume(q, o).await
        }
        async fn delete(&self, q: &QueueName) -> Result<(), BrokerError> {
            self.0.delete(q).await
        }
        async fn stats(&self, q: &QueueName) -> Result<crate::QueueStats, BrokerError> {
            self.0.stats(q).await
        }
    }
    use crate::schedule::Tz;
    let error = Worker::builder(Plain(MemoryBroker::new()), "q")
        .handler(plain)
        .schedule("nightly", "0 3 * * *", Tz::UTC, || Ping)
        .build()
        .expect_err("no schedules on this broker");
    assert!(
        error
            .to_string()
            .starts_with("the plain broker cannot hold cron schedules' leases"),
        "{error}"
    );
    Worker::builder(Plain(MemoryBroker::new()), "q")
        .handler(plain)
        .build()
        .expect("without schedules it builds");
}

#[tokio::test]
async fn immediate_shutdown_returns_without_waiting_for_jobs() {
    async fn hang(_: Ping) -> Result<(), JobError> {
        std::future::pending().await
    }
    let broker = Arc::new(MemoryBroker::new());
    broker
        .declare(&"q".into(), &QueueOptions::default())
        .await
        .unwrap();
    crate::Producer::new(broker.clone(), "q")
        .enqueue(&Ping)
        .await
        .unwrap();
    let worker = Worker::builder(broker, "q").handler(hang).build().unwrap();
    let (stats, shutdown) = (worker.stats(), worker.shutdown_handle());
    let running = tokio::spawn(worker.run_until_stopped());
    while stats.snapshot().in_flight == 0 {
        tokio::task::yield_now().await;
    }
    shutdown.shutdown();
    shutdown.immediate();
    let report = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("returns at once")
        .unwrap()
        .unwrap();
    assert!(report.immediate);
    assert_eq!(
        report.stats.in_flight, 1,
        "the hung job was abandoned to redelivery"
    );
}

/// A panic outside the stack's guards (here a telemetry hook's) ends neither the worker
/// nor its only lane: the delivery goes back, runs again, and the next job runs too.
#[tokio::test]
async fn a_panic_escaping_the_stack_leaves_the_lane_running() {
    use crate::message::Headers;
    use crate::telemetry::{JobEvent, Telemetry};
    use std::sync::atomic::AtomicU32;

    struct PanicsOnce(AtomicU32);
    impl Telemetry for PanicsOnce {
        fn continue_trace(&self, _: &tracing::Span, _: &Headers) {}
        fn inject(&self, _: &tracing::Span, _: &mut Headers) {}
        fn job_started(&self, _: &JobEvent<'_>) {
            if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("a hook that fails");
            }
        }
        fn job_finished(&self, _: &JobEvent<'_>, _: &crate::Outcome, _: Duration) {}
    }

    let broker = Arc::new(MemoryBroker::new());
    broker
        .declare(&"q".into(), &QueueOptions::default())
        .await
        .unwrap();
    let producer = crate::Producer::new(broker.clone(), "q");
    producer.enqueue(&Ping).await.unwrap();
    producer.enqueue(&Ping).await.unwrap();
    let hook = Arc::new(PanicsOnce(AtomicU32::new(0)));
    let worker = Worker::builder(broker.clone(), "q")
        .handler(plain)
        .concurrency(1)
        .telemetry(hook.clone())
        .build()
        .unwrap();
    let (stats, shutdown) = (worker.stats(), worker.shutdown_handle());
    let running = tokio::spawn(worker.run_until_stopped());
    within_10s("both jobs succeed on the one lane", || {
        stats.snapshot().succeeded >= 2
    })
    .await;
    shutdown.shutdown();
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.stats.succeeded, 2);
    assert_eq!(report.stats.abandoned, 1, "the attempt the panic ended");
    assert_eq!(report.stats.in_flight, 0);
    assert_eq!(
        hook.0.load(Ordering::SeqCst),
        3,
        "the panicked attempt ran again"
    );
    assert!(broker.messages(&"q".into()).unwrap().is_empty());
}

/// Jobs that keep their thread busy (CPU-bound work, or a blocking call) run side by
/// side on a multi-threaded runtime: the lane that hands the feed on must not leave the
/// next lane where no other thread can take it (tokio's LIFO slot is not stealable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_jobs_run_on_every_runtime_thread_at_once() {
    use std::sync::atomic::AtomicUsize;
    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    static BESIDE_ANOTHER: AtomicUsize = AtomicUsize::new(0);
    async fn busy(_: Ping) -> Result<(), JobError> {
        if RUNNING.fetch_add(1, Ordering::SeqCst) > 0 {
            BESIDE_ANOTHER.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(100));
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    let broker = Arc::new(MemoryBroker::new());
    broker
        .declare(&"q".into(), &QueueOptions::default())
        .await
        .unwrap();
    let worker = Worker::builder(broker.clone(), "q")
        .handler(busy)
        .concurrency(2)
        .build()
        .unwrap();
    let (stats, shutdown, health) = (worker.stats(), worker.shutdown_handle(), worker.health());
    let running = tokio::spawn(worker.run_until_stopped());
    // The jobs arrive while both lanes wait: one on the feed, the other for it, so
    // each job is handed from lane to lane.
    within_10s("the worker consumes", || health.is_ready()).await;
    let producer = crate::Producer::new(broker.clone(), "q");
    for answer in producer
        .enqueue_many(&[Ping, Ping, Ping, Ping, Ping, Ping])
        .await
    {
        answer.unwrap();
    }
    within_10s("the six jobs succeed", || stats.snapshot().succeeded >= 6).await;
    shutdown.shutdown();
    running.await.unwrap().unwrap();
    // Side by side, the six jobs run as three pairs (or overlap more); one after the
    // other, at most a stray one starts beside another.
    let beside = BESIDE_ANOTHER.load(Ordering::SeqCst);
    assert!(
        beside >= 3,
        "only {beside} of 6 busy jobs started while another ran: the lanes ran one at a time"
    );
}

#[tokio::test]
async fn verify_topology_fails_at_start_up_with_the_queue_named() {
    let worker = builder()
        .handler(plain)
        .topology(Topology::Verify)
        .build()
        .unwrap();
    let error = worker.run_until_stopped().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "could not prepare queue `q`: queue `q` does not exist; declare it \
         (Topology::Declare) or create it on the broker"
    );
}
