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
                self.concurrency > 1,
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
/// `hand_on` (more than one lane): yield after taking a delivery, so the lanes spread over
/// the runtime's threads.
async fn lane(
    feed: Arc<tokio::sync::Mutex<Option<Feed>>>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    stopped: Arc<AtomicBool>,
    hand_on: bool,
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
        if hand_on {
            // Letting go of the feed woke the next lane into this thread's LIFO slot, which
            // no other thread may take from (tokio#4941): were this lane to run its job now,
            // a job that keeps the thread busy would hold the next one back, and the lanes
            // would run one at a time. Yielding first runs the next lane here, and leaves
            // this one where an idle thread can steal it.
            tokio::task::yield_now().await;
        }
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
mod tests;
