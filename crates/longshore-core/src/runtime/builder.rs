//! [`WorkerBuilder`]: handlers, dependencies, limits, topology and schedules, checked when the
//! worker is built.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::pipeline::{self, Layer, Registration, StackOptions};
use super::process::{DEFAULT_MAX_BODY_BYTES, Shared};
use super::{Health, Shutdown, Worker, WorkerStats};
use crate::broker::{Broker, ConsumeOptions, QueueOptions, Topology};
use crate::handler::{Handler, TypedHandler};
use crate::job::{Job, JobError};
use crate::names::{JobName, QueueName};
use crate::retry::RetryPolicy;
use crate::schedule::{Schedule, ScheduleError, Scheduler, Tz};
use crate::scope::{Factory, Requirement, Root, check_dependencies};
use crate::status::JobStatuses;
use crate::status::tracking::Cancels;
use crate::telemetry::Telemetry;

/// How long the broker may take to settle a delivery before the runtime gives up on it;
/// the broker's own redelivery is then the safety net, as for any failed settlement.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Handlers or factories ask for types nobody registered.
    #[error("{}", .0.join("; "))]
    MissingDependencies(Vec<String>),
    /// Per-job factories need each other.
    #[error(
        "the per-job factories need each other in a cycle ({0}), so none could be built; \
         break the cycle"
    )]
    DependencyCycle(String),
    /// Two handlers for one job name.
    #[error("job `{0}` has two handlers; register each job type once per worker")]
    DuplicateHandler(JobName),
    /// Nothing to run.
    #[error("the worker for queue `{0}` has no handlers; register one with `.handler(..)`")]
    NoHandlers(QueueName),
    /// The concurrency limit is zero.
    #[error("concurrency must be at least 1")]
    ZeroConcurrency,
    /// A schedule is invalid, or two share a name.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// A schedule enqueues a job this worker has no handler for.
    #[error(
        "schedule `{schedule}` enqueues job `{job}`, which this worker has no handler for; \
         register one with `.handler(..)`"
    )]
    UnhandledSchedule {
        /// The schedule.
        schedule: String,
        /// Its job.
        job: JobName,
    },
}

/// Builds a [`Worker`]: handlers, dependencies, concurrency, timeouts, retry policy.
pub struct WorkerBuilder {
    broker: Arc<dyn Broker>,
    queue: QueueName,
    root: Root,
    registry: HashMap<JobName, (Registration, JobOptions)>,
    requirements: Vec<(JobName, Vec<Requirement>)>,
    layers: Vec<Arc<dyn Layer>>,
    telemetry: Vec<Arc<dyn Telemetry>>,
    statuses: Option<JobStatuses>,
    worker_name: Option<String>,
    strict_checks: bool,
    max_body_bytes: usize,
    dispose_timeout: Duration,
    duplicate: Option<JobName>,
    concurrency: usize,
    prefetch: Option<u16>,
    retry: RetryPolicy,
    timeout: Duration,
    shutdown_timeout: Duration,
    topology: Topology,
    queue_options: QueueOptions,
    visibility_timeout: Option<Duration>,
    schedules: Vec<Schedule>,
    schedule_error: Option<ScheduleError>,
    standby_poll: Option<Duration>,
}

impl WorkerBuilder {
    pub(super) fn new(broker: Arc<dyn Broker>, queue: QueueName) -> Self {
        Self {
            broker,
            queue,
            root: Root::new(),
            registry: HashMap::new(),
            requirements: Vec::new(),
            layers: Vec::new(),
            telemetry: Vec::new(),
            statuses: None,
            worker_name: None,
            strict_checks: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            dispose_timeout: Duration::from_secs(30),
            duplicate: None,
            concurrency: 16,
            prefetch: None,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(30),
            topology: Topology::Declare,
            queue_options: QueueOptions::default(),
            visibility_timeout: None,
            schedules: Vec::new(),
            schedule_error: None,
            standby_poll: None,
        }
    }

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

    /// Adds a per-job dependency, built lazily by `factory` once per job that asks for it:
    /// an async function or closure of what it needs (`|pool: Dep<Pool>| async move { .. }`),
    /// returning `Result<T, E>` for any `E: Into<JobError>`. See [`Root::scoped`].
    pub fn scoped<T, Args, F>(mut self, factory: F) -> Self
    where
        T: Send + Sync + 'static,
        Args: 'static,
        F: Factory<T, Args>,
    {
        self.root.scoped(factory);
        self
    }

    /// Adds a per-job dependency with an async disposer that runs when the job ends, before
    /// the delivery settles: `disposer(value, succeeded)` owns the value (commit on success,
    /// roll back otherwise). A disposer that fails, panics or passes the disposal timeout
    /// fails the attempt: the job is retried, never acked. See [`Root::scoped_with_disposer`].
    pub fn scoped_with_disposer<T, Args, F, D, DFut, E>(mut self, factory: F, disposer: D) -> Self
    where
        T: Send + Sync + 'static,
        Args: 'static,
        F: Factory<T, Args>,
        D: Fn(T, bool) -> DFut + Clone + Send + Sync + 'static,
        DFut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<JobError> + 'static,
    {
        self.root.scoped_with_disposer(factory, disposer);
        self
    }

    /// Tracks job status in `statuses` (see [`crate::status`]): the jobs a producer with
    /// the same statuses enqueued move through running, retrying and their end, report
    /// progress and results, can be cancelled, and are not run again once they succeeded.
    pub fn status(mut self, statuses: JobStatuses) -> Self {
        self.statuses = Some(statuses);
        self
    }

    /// The name this worker gives itself in job statuses. Default: `<host>:<pid>`.
    pub fn worker_name(mut self, name: impl Into<String>) -> Self {
        self.worker_name = Some(name.into());
        self
    }

    /// Refuse to start when the policy check ([`crate::check`]) finds an error: retry
    /// attempts above the broker's own delivery limit, no dead-letter queue, undeclared
    /// delay queues. Default: log them as warnings (and notes, such as a visibility timeout
    /// below the job timeout, at INFO).
    pub fn strict_checks(mut self, yes: bool) -> Self {
        self.strict_checks = yes;
        self
    }

    /// The largest message body this worker takes; a larger one is dead-lettered with its
    /// size in the reason, never decoded. Default: 16 MiB.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// How long each disposer may take before the attempt fails. Default: 30 s.
    pub fn dispose_timeout(mut self, timeout: Duration) -> Self {
        self.dispose_timeout = timeout;
        self
    }

    /// Adds a layer to the per-job stack (see [`Layer`]): it runs inside the job's span and
    /// outside its scope's disposal, around every attempt. Layers added first run outermost.
    pub fn layer(mut self, layer: impl Layer) -> Self {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Continues producers' traces and records job metrics with `telemetry` (from
    /// `longshore::otel::init`, or `longshore::http::Metrics` for Prometheus); call it again
    /// to add more. Without any, jobs still get their `tracing` span.
    pub fn telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Self {
        self.telemetry.push(telemetry);
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

    /// Enqueues `job()` on this worker's queue at each tick of the cron `expression`, read in
    /// `time_zone` (`Tz::UTC` for UTC), with the default catch-up policy (run the latest
    /// missed tick once). Safe in every replica: each tick is enqueued once (see
    /// [`crate::schedule`]). An invalid expression or name fails [`build`](Self::build).
    pub fn schedule<J, F>(mut self, name: &str, expression: &str, time_zone: Tz, job: F) -> Self
    where
        J: Job,
        F: Fn() -> J + Send + Sync + 'static,
    {
        match Schedule::new(name, expression, time_zone, job) {
            Ok(schedule) => self.schedules.push(schedule),
            Err(error) => {
                self.schedule_error.get_or_insert(error);
            }
        }
        self
    }

    /// How often a replica that does not hold a schedule's lease asks for it: the longest a
    /// graceful failover waits. Each ask is a broker call (on SQS, a billed request).
    /// Default: 1 s.
    pub fn schedule_standby_poll(mut self, every: Duration) -> Self {
        self.standby_poll = Some(every);
        self
    }

    /// Adds a schedule built with [`Schedule::new`] (to set its catch-up policy or grace).
    pub fn add_schedule(mut self, schedule: Schedule) -> Self {
        self.schedules.push(schedule);
        self
    }

    /// Checks the handlers' and factories' dependencies and the schedules, and builds the
    /// worker.
    pub fn build(self) -> Result<Worker, BuildError> {
        if let Some(error) = self.schedule_error {
            return Err(error.into());
        }
        let mut scheduler = Scheduler::new(Arc::clone(&self.broker), self.queue.clone());
        if let Some(every) = self.standby_poll {
            scheduler = scheduler.standby_poll(every);
        }
        if let Some(telemetry) = self.telemetry.first() {
            scheduler = scheduler.with_telemetry(Arc::clone(telemetry));
        }
        for schedule in self.schedules {
            if !self.registry.contains_key(schedule.job()) {
                return Err(BuildError::UnhandledSchedule {
                    schedule: schedule.name().to_owned(),
                    job: schedule.job().clone(),
                });
            }
            scheduler = scheduler.schedule(schedule)?;
        }
        let scheduler = (!scheduler.schedules().is_empty()).then_some(scheduler);
        if self.concurrency == 0 {
            return Err(BuildError::ZeroConcurrency);
        }
        if self.registry.is_empty() {
            return Err(BuildError::NoHandlers(self.queue));
        }
        if let Some(name) = self.duplicate {
            return Err(BuildError::DuplicateHandler(name));
        }
        match check_dependencies(&self.root, &self.requirements) {
            Ok(()) => {}
            Err(crate::scope::Problem::Missing(missing)) => {
                return Err(BuildError::MissingDependencies(missing));
            }
            Err(crate::scope::Problem::Cycle(cycle)) => {
                return Err(BuildError::DependencyCycle(cycle));
            }
        }
        let registry = self
            .registry
            .into_iter()
            .map(|(name, (mut registration, options))| {
                registration.retry = options.retry.unwrap_or_else(|| self.retry.clone());
                registration.timeout = options.timeout.unwrap_or(self.timeout);
                (name, Arc::new(registration))
            })
            .collect();
        let cancels = Arc::new(Cancels::default());
        let worker_name = self.worker_name.unwrap_or_else(crate::process_name);
        let layers = pipeline::stack(
            StackOptions {
                system: self.broker.system(),
                telemetry: self.telemetry.clone(),
                dispose_timeout: self.dispose_timeout,
                settle_timeout: SETTLE_TIMEOUT,
                status: self
                    .statuses
                    .clone()
                    .map(|statuses| (statuses, Arc::clone(&cancels), worker_name)),
            },
            self.layers,
        );
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
                self.concurrency,
                Arc::clone(&cancels),
            ),
            shared: Arc::new(Shared {
                system: self.broker.system(),
                root: Arc::new(self.root),
                registry,
                layers,
                stats,
                deadline: Arc::new(CancellationToken::new()),
                statuses: self.statuses,
                max_body_bytes: self.max_body_bytes,
            }),
            broker: self.broker,
            queue: self.queue,
            concurrency: self.concurrency,
            consume,
            shutdown_timeout: self.shutdown_timeout,
            topology: self.topology,
            queue_options: self.queue_options,
            shutdown: Shutdown::default(),
            scheduler,
            telemetry: self.telemetry,
            cancels,
            strict_checks: self.strict_checks,
        })
    }
}
