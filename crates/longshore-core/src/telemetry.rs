//! [`Telemetry`]: the hooks an observability layer (the `longshore-otel` crate) installs
//! once per process, so every worker and producer continues and propagates traces and
//! counts jobs, without the core depending on OpenTelemetry.
//!
//! The runtime makes the spans itself, as `tracing` spans carrying OpenTelemetry's
//! conventions in their fields (`otel.name`, `otel.kind`, `messaging.*`); a hook only joins
//! them to the producer's trace and records metrics. With no hook installed this costs one
//! atomic load per job.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::broker::Broker;
use crate::message::Headers;
use crate::names::{Attempt, JobName, QueueName};

/// What a telemetry hook learns about one job attempt.
#[derive(Clone, Copy, Debug)]
pub struct JobEvent<'a> {
    /// `memory`, `rabbitmq` or `aws_sqs`.
    pub system: &'static str,
    /// The queue the job came from.
    pub queue: &'a QueueName,
    /// The job name (empty when the message carried none).
    pub job: &'a JobName,
    /// The attempt, from the broker.
    pub attempt: Attempt,
}

/// How a job attempt ended, as telemetry counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobResult {
    /// Succeeded and acked.
    Succeeded,
    /// Failed; retried later.
    Retried,
    /// Moved to the dead-letter queue.
    DeadLettered,
    /// Handed back untouched (shutdown deadline).
    Released,
    /// The broker did not take the settlement; it will redeliver.
    SettleFailed,
    /// The lease was lost while the job ran.
    LeaseLost,
}

impl JobResult {
    /// A short lowercase name: `succeeded`, `retried`, `dead_lettered`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Succeeded => "succeeded",
            JobResult::Retried => "retried",
            JobResult::DeadLettered => "dead_lettered",
            JobResult::Released => "released",
            JobResult::SettleFailed => "settle_failed",
            JobResult::LeaseLost => "lease_lost",
        }
    }
}

/// Hooks called by workers and producers. Install one with [`install`].
pub trait Telemetry: Send + Sync + 'static {
    /// Makes `span` (the job's span, not yet entered) a child of the producer's trace
    /// context carried in `headers` (W3C `traceparent` / `tracestate`).
    fn continue_trace(&self, span: &tracing::Span, headers: &Headers);

    /// Writes the trace context of `span` (a producer's `send` span) into `headers`.
    fn inject(&self, span: &tracing::Span, headers: &mut Headers);

    /// A job attempt started.
    fn job_started(&self, event: &JobEvent<'_>);

    /// A job attempt ended, `elapsed` after it started (settlement included).
    fn job_finished(&self, event: &JobEvent<'_>, result: JobResult, elapsed: Duration);

    /// A worker started consuming `queue` on `broker` (to sample its depth, say).
    fn worker_started(&self, broker: &Arc<dyn Broker>, queue: &QueueName) {
        let _ = (broker, queue);
    }

    /// A worker stopped consuming `queue`.
    fn worker_stopped(&self, queue: &QueueName) {
        let _ = queue;
    }
}

static INSTALLED: OnceLock<Arc<dyn Telemetry>> = OnceLock::new();

/// Installs the process-wide telemetry hooks; every worker and producer uses them from then
/// on. Returns the hooks back if some were installed already (they cannot be replaced,
/// like a global `tracing` subscriber).
pub fn install(telemetry: Arc<dyn Telemetry>) -> Result<(), Arc<dyn Telemetry>> {
    INSTALLED.set(telemetry)
}

/// The installed hooks, if any.
pub fn installed() -> Option<&'static dyn Telemetry> {
    INSTALLED.get().map(|telemetry| &**telemetry)
}
