//! The runtime: a [`Worker`] polls one queue with bounded concurrency, runs each job in its
//! own scope, settles it by the outcome, and shuts down gracefully.

mod feed;
mod health;
mod process;
mod shutdown;
mod stats;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Broker, BrokerError, ConsumeOptions, QueueOptions, Topology};
use crate::handler::{Handler, TypedHandler};
use crate::job::{Job, JobError};
use crate::names::{JobName, QueueName};
use crate::retry::RetryPolicy;
use crate::scope::{JobOutcome, Root, Scope};
use feed::Feed;
use process::{Registration, Shared};

pub use health::Health;
pub use shutdown::Shutdown;
pub use stats::{StatsSnapshot, WorkerStats};

/// Per-job-type overrides of the worker's defaults.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct JobOptions {
    /// Retry policy for this job type.
    pub retry: Option<RetryPolicy>,
    /// Timeout of one attempt of this job type.
    pub timeout: Option<Duration>,
}

impl JobOptions {
    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Sets the attempt timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// Why a worker could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Handlers ask for types nobody registered.
    #[error("{}", .0.join("; "))]
    MissingDependencies(Vec<String>),
    /// Two handlers for one job name.
    #[error("job `{0}` has two handlers; register each job type once per worker")]
    DuplicateHandler(JobName),
    /// Nothing to run.
    #[error("the worker for queue `{0}` has no handlers; register one with `.handler(..)`")]
    NoHandlers(QueueName),
    /// The concurrency limit is zero.
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
}

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
}

/// What a worker did, returned when it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerReport {
    /// The counters at the end.
    pub stats: StatsSnapshot,
    /// Stopped at once (second signal, or [`Shutdown::immediate`]) rather than gracefully.
    pub immediate: bool,
}

/// Builds a [`Worker`]: handlers, dependencies, concurrency, timeouts, retry policy.
pub struct WorkerBuilder {
    broker: Arc<dyn Broker>,
    queue: QueueName,
    root: Root,
    registry: HashMap<JobName, (Registration, JobOptions)>,
    requirements: Vec<(JobName, Vec<crate::scope::Requirement>)>,
    duplicate: Option<JobName>,
    concurrency: usize,
    prefetch: Option<u16>,
    retry: RetryPolicy,
    timeout: Duration,
    shutdown_timeout: Duration,
    topology: Topology,
    queue_options: QueueOptions,
    visibility_timeout: Option<Duration>,
}

impl WorkerBuilder {
    /// Registers the handler of job type `J`: an `async fn(J, deps..) -> Result<(), E>`.
    pub fn handler<J, Args, H>(self, handler: H) -> Self
    where
        J: Job,
        Args: 'static,
        H: Handler<J, Args>,
    {
        self.handler_with(handler, JobOptions::default())
    }

    /// Registers the handler of job type `J` with its own retry policy or timeout.
    pub fn handler_with<J, Args, H>(mut self, handler: H, options: JobOptions) -> Self
    where
        J: Job,
        Args: 'static,
        H: Handler<J, Args>,
    {
        let name = JobName::new(J::NAME);
        self.requirements.push((name.clone(), H::requirements()));
        let registration = Registration {
            handler: Box::new(TypedHandler::<J, Args, H>::new(handler)),
            retry: RetryPolicy::default(),
            timeout: Duration::ZERO,
        };
        if self
            .registry
            .insert(name.clone(), (registration, options))
            .is_some()
        {
            self.duplicate.get_or_insert(name);
        }
        self
    }

    /// Adds a process-wide dependency, shared by every job (`Dep<T>` in handlers).
    pub fn dependency<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.root.insert(value);
        self
    }

    /// Adds a process-wide dependency the caller also keeps a handle to.
    pub fn dependency_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.root.insert_arc(value);
        self
    }

    /// Adds a per-job dependency, built lazily by `factory` once per job that asks for it.
    pub fn scoped<T, F, Fut>(mut self, factory: F) -> Self
    where
        T: Send + Sync + 'static,
        F: Fn(Scope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, JobError>> + Send + 'static,
    {
        self.root.scoped(factory);
        self
    }

    /// Adds a per-job dependency with an async disposer that runs when the job ends, before
    /// the delivery settles (commit on success, roll back on failure).
    pub fn scoped_with_disposer<T, F, Fut, D, DFut>(mut self, factory: F, disposer: D) -> Self
    where
        T: Send + Sync + 'static,
        F: Fn(Scope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, JobError>> + Send + 'static,
        D: Fn(Arc<T>, JobOutcome) -> DFut + Clone + Send + Sync + 'static,
        DFut: Future<Output = ()> + Send + 'static,
    {
        self.root.scoped_with_disposer(factory, disposer);
        self
    }

    /// At most this many jobs run at once. Default: 16.
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = limit;
        self
    }

    /// Deliveries the broker may hand out ahead of settlement. Default: twice the
    /// concurrency (so the next job is at hand when one finishes), at most 65 535.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch.max(1));
        self
    }

    /// The default retry policy. Default: [`RetryPolicy::default`].
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The default timeout of one attempt. Default: 5 minutes.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a graceful shutdown waits for in-flight jobs before releasing them.
    /// Default: 30 s.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Declare the queue at start-up, or only verify it. Default: declare.
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// What to declare (dead-letter queue, visibility timeout).
    pub fn queue_options(mut self, options: QueueOptions) -> Self {
        self.queue_options = options;
        self
    }

    /// The lease of each delivery on brokers that lease (SQS, memory); the runtime renews
    /// it at half-time while the job runs. Default: the queue's visibility timeout.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }

    /// Checks the handlers' dependencies and builds the worker.
    pub fn build(self) -> Result<Worker, BuildError> {
        if self.concurrency == 0 {
            return Err(BuildError::ZeroConcurrency);
        }
        if self.registry.is_empty() {
            return Err(BuildError::NoHandlers(self.queue));
        }
        if let Some(name) = self.duplicate {
            return Err(BuildError::DuplicateHandler(name));
        }
        let mut missing = Vec::new();
        for (job, requirements) in &self.requirements {
            for requirement in requirements {
                if !self.root.provides(requirement.type_id) {
                    missing.push(format!(
                        "the handler of job `{job}` needs a `{}`, but none is registered; add \
                         `.dependency(value)` or `.scoped(factory)` to the worker builder",
                        requirement.type_name
                    ));
                }
            }
        }
        if !missing.is_empty() {
            return Err(BuildError::MissingDependencies(missing));
        }
        let registry = self
            .registry
            .into_iter()
            .map(|(name, (mut registration, options))| {
                registration.retry = options.retry.unwrap_or_else(|| self.retry.clone());
                registration.timeout = options.timeout.unwrap_or(self.timeout);
                (name, registration)
            })
            .collect();
        let prefetch = self.prefetch.unwrap_or_else(|| {
            u16::try_from(self.concurrency.saturating_mul(2)).unwrap_or(u16::MAX)
        });
        let mut consume = ConsumeOptions::default().prefetch(prefetch);
        if let Some(timeout) = self.visibility_timeout {
            consume = consume.visibility_timeout(timeout);
        }
        let stats = Arc::<WorkerStats>::default();
        Ok(Worker {
            health: Health::new(
                Arc::clone(&self.broker),
                self.queue.clone(),
                Arc::clone(&stats),
            ),
            shared: Arc::new(Shared {
                system: self.broker.system(),
                root: Arc::new(self.root),
                registry,
                stats,
                deadline: CancellationToken::new(),
            }),
            broker: self.broker,
            queue: self.queue,
            concurrency: self.concurrency,
            consume,
            shutdown_timeout: self.shutdown_timeout,
            topology: self.topology,
            queue_options: self.queue_options,
            shutdown: Shutdown::default(),
        })
    }
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
    /// A builder for a worker consuming `queue` on `broker`.
    pub fn builder(broker: Arc<dyn Broker>, queue: impl Into<QueueName>) -> WorkerBuilder {
        WorkerBuilder {
            broker,
            queue: queue.into(),
            root: Root::new(),
            registry: HashMap::new(),
            requirements: Vec::new(),
            duplicate: None,
            concurrency: 16,
            prefetch: None,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(30),
            topology: Topology::Declare,
            queue_options: QueueOptions::default(),
            visibility_timeout: None,
        }
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
        if let Some(limit) = self.broker.max_receive_count(&self.queue) {
            for (job, registration) in &self.shared.registry {
                let attempts = registration.retry.max_attempts();
                if attempts > limit {
                    tracing::warn!(
                        queue = %self.queue, %job, attempts, limit,
                        "the broker dead-letters a message after {limit} deliveries, but job `{job}` \
                         may take {attempts} attempts: its last attempts will not happen, and the \
                         broker's dead letter carries no reason; raise the queue's limit or lower \
                         the job's max attempts"
                    );
                }
            }
        }

        let Shutdown {
            graceful,
            immediate,
        } = self.shutdown.clone();
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let tasks = TaskTracker::new();
        let mut feed = Feed::new(
            Arc::clone(&self.broker),
            self.queue.clone(),
            self.consume.clone(),
            self.health.clone(),
        );
        let telemetry = crate::telemetry::installed();
        if let Some(telemetry) = telemetry {
            telemetry.worker_started(&self.broker, &self.queue);
        }
        tracing::info!(queue = %self.queue, system = self.shared.system, concurrency = self.concurrency, "worker started");

        // One shutdown future for the whole loop: a fresh one per select would register and
        // unregister a waiter on the token twice per delivery.
        let stopping = graceful.cancelled();
        tokio::pin!(stopping);
        // A permit first, then a delivery: the worker never holds a delivery it cannot start.
        loop {
            let permit = tokio::select! {
                biased;
                () = &mut stopping => break,
                permit = Arc::clone(&permits).acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
            };
            let delivery = tokio::select! {
                biased;
                () = &mut stopping => break,
                delivery = feed.next() => delivery,
            };
            let shared = Arc::clone(&self.shared);
            tasks.spawn(async move {
                process::process(shared, delivery).await;
                drop(permit);
            });
        }

        // Stop fetching: dropping the feed hands buffered deliveries back to the broker.
        self.health.set_consuming(false);
        drop(feed);
        tasks.close();
        tracing::info!(in_flight = tasks.len(), "draining in-flight jobs");
        let immediate_stop = tokio::select! {
            () = tasks.wait() => false,
            () = immediate.cancelled() => true,
            () = tokio::time::sleep(self.shutdown_timeout) => {
                tracing::warn!(in_flight = tasks.len(), "shutdown timeout passed; releasing unfinished jobs");
                self.shared.deadline.cancel();
                tokio::select! {
                    () = tasks.wait() => false,
                    () = immediate.cancelled() => true,
                }
            }
        };
        let report = WorkerReport {
            stats: self.shared.stats.snapshot(),
            immediate: immediate_stop,
        };
        if let Some(telemetry) = telemetry {
            telemetry.worker_stopped(&self.queue);
        }
        tracing::info!(?report, "worker stopped");
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
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
            .scoped(|_| async { Ok(Database) })
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
