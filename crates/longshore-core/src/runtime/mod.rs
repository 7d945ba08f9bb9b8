//! The runtime: a [`Worker`] polls one queue with bounded concurrency, runs each job in its
//! own scope, settles it by the outcome, and shuts down gracefully.

mod builder;
mod feed;
mod health;
mod pipeline;
mod process;
mod shutdown;
mod stats;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerError, ConsumeOptions, IntoBroker, QueueOptions, Topology};
use crate::names::QueueName;
use crate::telemetry::Telemetry;
use feed::Feed;
use process::Shared;

pub use builder::{BuildError, JobOptions, WorkerBuilder};
pub use health::Health;
pub use pipeline::{JobRequest, Layer, Next};
pub use shutdown::Shutdown;
pub(crate) use shutdown::listen_for_signals;
pub use stats::{StatsSnapshot, WorkerStats};

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The queue could not be declared or verified at start-up.
    #[error("could not prepare queue `{queue}`: {source}")]
    Topology {
        /// The queue.
        queue: QueueName,
        /// What the broker said.
        source: BrokerError,
    },
    /// The policy check found problems, and the worker checks strictly.
    #[error("queue `{queue}` does not fit this worker's settings: {}", .findings.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Check {
        /// The queue.
        queue: QueueName,
        /// What was found.
        findings: Vec<crate::check::Finding>,
    },
}

/// What a worker did, returned when it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerReport {
    /// The counters at the end.
    pub stats: StatsSnapshot,
    /// Stopped at once (second signal, or [`Shutdown::immediate`]) rather than gracefully.
    pub immediate: bool,
}

/// Consumes one queue and runs its jobs. Build with [`Worker::builder`], start with
/// [`Worker::run`] (stops on SIGTERM/SIGINT) or [`Worker::run_until_stopped`].
pub struct Worker {
    shared: Arc<Shared>,
    broker: Arc<dyn Broker>,
    queue: QueueName,
    concurrency: usize,
    consume: ConsumeOptions,
    shutdown_timeout: Duration,
    topology: Topology,
    queue_options: QueueOptions,
    shutdown: Shutdown,
    health: Health,
    scheduler: Option<crate::schedule::Scheduler>,
    telemetry: Vec<Arc<dyn Telemetry>>,
    /// Cancellation requests of tracked jobs, kept by the status watch.
    cancels: Arc<crate::status::tracking::Cancels>,
    /// Refuse to start when the policy check finds anything.
    strict_checks: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("system", &self.shared.system)
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A builder for a worker consuming `queue` on `broker`: an adapter (`MemoryBroker`,
    /// `AmqpBroker`, `SqsBroker`), an `Arc` of one, or what `longshore::connect` returns.
    pub fn builder(broker: impl IntoBroker, queue: impl Into<QueueName>) -> WorkerBuilder {
        WorkerBuilder::new(broker.into_broker(), queue.into())
    }

    /// A handle that stops the worker; take it before running.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Liveness and readiness, for container probes (see `longshore-otel`'s health server).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Checks the queue against the handlers' retry policies and timeouts (see
    /// [`crate::check`]): logs what it finds, or fails with it when checking strictly.
    async fn check_policies(&self) -> Result<(), WorkerError> {
        let expected = crate::check::Expectations {
            max_attempts: self
                .shared
                .registry
                .values()
                .map(|r| r.retry.max_attempts())
                .max()
                .unwrap_or(1),
            job_timeout: self
                .shared
                .registry
                .values()
                .map(|r| r.timeout)
                .max()
                .unwrap_or_default(),
        };
        let findings = match crate::check::check(&*self.broker, &self.queue, &expected).await {
            Ok(findings) => findings,
            Err(error) => {
                tracing::warn!(queue = %self.queue, %error, "could not check the queue's policies");
                return Ok(());
            }
        };
        let serious = |f: &crate::check::Finding| f.severity == crate::check::Severity::Error;
        if self.strict_checks && findings.iter().any(serious) {
            return Err(WorkerError::Check {
                queue: self.queue.clone(),
                findings: findings.into_iter().filter(serious).collect(),
            });
        }
        for finding in findings {
            if serious(&finding) {
                tracing::warn!(queue = %self.queue, "{finding}");
            } else {
                tracing::info!(queue = %self.queue, "{finding}");
            }
        }
        Ok(())
    }

    /// Runs until SIGTERM or SIGINT (or the shutdown handle): the first stops gracefully,
    /// a second stops at once.
    pub async fn run(self) -> Result<WorkerReport, WorkerError> {
        let signals = tokio::spawn(shutdown::listen_for_signals(self.shutdown.clone()));
        let result = self.run_until_stopped().await;
        signals.abort();
        result
    }

    /// Runs until the shutdown handle asks it to stop; installs no signal handlers.
    pub async fn run_until_stopped(self) -> Result<WorkerReport, WorkerError> {
        let _running = self.health.running();
        let prepared = match self.topology {
            Topology::Declare => self.broker.declare(&self.queue, &self.queue_options).await,
            Topology::Verify => self.broker.verify(&self.queue).await,
        };
        prepared.map_err(|source| WorkerError::Topology {
            queue: self.queue.clone(),
            source,
        })?;
        // Schedules start once the queue their ticks go to is there, and stop with the worker
        // (releasing their leases, so another replica takes over at once).
        self.check_policies().await?;
        let scheduler = self
            .scheduler
            .map(|scheduler| tokio::spawn(scheduler.run_until_stopped(self.shutdown.clone())));

        // Job status: cancellation requests, and expired statuses deleted now and then.
        let status_tasks = CancellationToken::new();
        if let Some(statuses) = &self.shared.statuses {
            // Open requests are known before the first delivery, so a job cancelled while
            // it waited in the queue is never started.
            let first = tokio::time::timeout(
                Duration::from_secs(5),
                crate::status::tracking::subscribe(statuses, &self.queue, &self.cancels),
            )
            .await;
            let first = match first {
                Ok(Ok(notices)) => Some(notices),
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot read job cancellations at start-up; watching for them from now on");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        "the job status store did not answer within 5 s at start-up; watching for cancellations from now on"
                    );
                    None
                }
            };
            tokio::spawn(crate::status::tracking::watch(
                statuses.clone(),
                self.queue.clone(),
                Arc::clone(&self.cancels),
                status_tasks.clone(),
                first,
            ));
            tokio::spawn(purge_expired(statuses.clone(), status_tasks.clone()));
        }
        let _status_tasks = status_tasks.drop_guard();

        let Shutdown {
            graceful,
            immediate,
        } = self.shutdown.clone();
        let feed = Arc::new(tokio::sync::Mutex::new(Some(Feed::new(
            Arc::clone(&self.broker),
            self.queue.clone(),
            self.consume.clone(),
            self.health.clone(),
        ))));
        for telemetry in &self.telemetry {
            telemetry.worker_started(&self.broker, &self.queue);
        }
        tracing::info!(queue = %self.queue, system = self.shared.system, concurrency = self.concurrency, "worker started");

        // One lane per unit of concurrency, as Sidekiq runs a fixed set of processors: a free
        // lane takes the next delivery and runs it, so the worker never holds a delivery it
        // cannot start, and no task is spawned (nor allocated) per job.
        let lanes = TaskTracker::new();
        let stopped = Arc::new(AtomicBool::new(false));
        for _ in 0..self.concurrency {
            lanes.spawn(lane(
                Arc::clone(&feed),
                Arc::clone(&self.shared),
                graceful.clone(),
                Arc::clone(&stopped),
            ));
        }
        lanes.close();
        graceful.cancelled().await;
        stopped.store(true, Ordering::Release);

        // Stop fetching: dropping the feed hands buffered deliveries back to the broker
        // (lanes let go of it as soon as the stop is asked). Not ready from now on, so a load
        // balancer or autoscaler stops counting on it.
        self.health.set_stopping();
        drop(feed.lock().await.take());
        tracing::info!(
            in_flight = self.shared.stats.snapshot().in_flight,
            "draining in-flight jobs"
        );
        let immediate_stop = tokio::select! {
            () = lanes.wait() => false,
            () = immediate.cancelled() => true,
            () = tokio::time::sleep(self.shutdown_timeout) => {
                tracing::warn!(in_flight = self.shared.stats.snapshot().in_flight, "shutdown timeout passed; releasing unfinished jobs");
                self.shared.deadline.cancel();
                tokio::select! {
                    () = lanes.wait() => false,
                    () = immediate.cancelled() => true,
                }
            }
        };
        let report = WorkerReport {
            stats: self.shared.stats.snapshot(),
            immediate: immediate_stop,
        };
        for telemetry in &self.telemetry {
            telemetry.worker_stopped(&self.queue);
        }
        if let Some(statuses) = &self.shared.statuses
            && !immediate_stop
            && !statuses.flush(Duration::from_secs(5)).await
        {
            tracing::warn!(
                "job status changes not written within 5 s; the store is behind or down"
            );
        }
        if let Some(mut scheduler) = scheduler {
            // Releasing a lease is one broker call; a broker that does not answer lets the
            // lease expire instead of holding the worker up.
            match tokio::time::timeout(Duration::from_secs(5), &mut scheduler).await {
                Ok(Err(error)) => tracing::warn!(%error, "the scheduler task ended abnormally"),
                Ok(Ok(())) => {}
                Err(_) => {
                    tracing::warn!("schedule leases not released within 5 s; they expire");
                    scheduler.abort();
                }
            }
        }
        tracing::info!(?report, "worker stopped");
        Ok(report)
    }
}

/// One lane: takes the next delivery while no stop is asked, runs it to its settlement,
/// and again. The layer stack settles whatever a job does; a panic that still escapes it
/// (a bug in longshore) is logged and the lane goes on, so the worker keeps its
/// concurrency.
///
/// `stopped` is set once `stop` is cancelled: a lane reads the flag before each delivery
/// and polls the token only while it waits, since each poll of the token takes its lock.
async fn lane(
    feed: Arc<tokio::sync::Mutex<Option<Feed>>>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    stopped: Arc<AtomicBool>,
) {
    use futures_util::FutureExt;
    // One stop future for the lane's life: a fresh one per delivery would register and
    // unregister a waiter on the token each time.
    let stopping = stop.cancelled();
    tokio::pin!(stopping);
    loop {
        if stopped.load(Ordering::Acquire) {
            return;
        }
        let delivery = {
            let mut feed = tokio::select! {
                biased;
                feed = feed.lock() => feed,
                () = &mut stopping => return,
            };
            let Some(feed) = feed.as_mut() else {
                return;
            };
            if stopped.load(Ordering::Acquire) {
                return;
            }
            tokio::select! {
                biased;
                delivery = feed.next() => delivery,
                () = &mut stopping => return,
            }
        };
        let run = std::panic::AssertUnwindSafe(process::process(&shared, delivery));
        if let Err(panic) = run.catch_unwind().await {
            let message = crate::job::JobError::panicked("the worker", panic.as_ref());
            tracing::error!(error = %message, "a job's way through the worker panicked; its delivery goes back to the broker");
        }
    }
}

/// Deletes expired job statuses every minute (a no-op for stores that expire entries
/// themselves), until `stop`.
async fn purge_expired(statuses: crate::status::JobStatuses, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match statuses.store().purge_expired().await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "expired job statuses deleted"),
            Err(error) => tracing::debug!(%error, "could not delete expired job statuses"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::job::{Job, JobError};
    use crate::memory::MemoryBroker;
    use crate::scope::Dep;

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
        let bad_name = error(builder().handler(plain).schedule(
            "a b",
            "* * * * *",
            Tz::UTC,
            || Ping,
        ));
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
            async fn publish(
                &self,
                q: &QueueName,
                m: crate::spi::Message,
            ) -> Result<(), BrokerError> {
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
        tokio::time::timeout(Duration::from_secs(10), async {
            while stats.snapshot().succeeded < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("both jobs succeed on the one lane");
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
}
