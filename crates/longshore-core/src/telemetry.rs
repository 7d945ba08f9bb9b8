//! [`Telemetry`]: the hooks an observability crate (`longshore-otel`) provides, so that a
//! worker and a producer continue and propagate traces and count jobs, without the core
//! depending on OpenTelemetry. They are given to each worker
//! ([`WorkerBuilder::telemetry`](crate::WorkerBuilder::telemetry)) and producer
//! ([`Producer::with_telemetry`](crate::Producer::with_telemetry)): two workers in one
//! process may use different ones, and tests need no process-wide set-up.
//!
//! The runtime makes the spans itself, as `tracing` spans carrying OpenTelemetry's
//! conventions in their fields (`otel.name`, `otel.kind`, `messaging.*`); a hook only joins
//! them to the producer's trace and records metrics.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;
use crate::message::Headers;
use crate::names::{Attempt, JobName, MessageId, QueueName};
use crate::outcome::Outcome;

/// What a telemetry hook learns about one job attempt.
#[derive(Clone, Copy, Debug)]
pub struct JobEvent<'a> {
    /// `memory`, `rabbitmq` or `aws_sqs`.
    pub system: &'static str,
    /// The queue the job came from.
    pub queue: &'a QueueName,
    /// The job's id (its message id).
    pub id: &'a MessageId,
    /// The job name; `unknown` for a job the worker has no handler for (names from message
    /// headers must not make metric series without bound).
    pub job: &'a JobName,
    /// The attempt, from the broker.
    pub attempt: Attempt,
    /// When the job was enqueued (for the wait before its first attempt).
    pub enqueued_at: std::time::SystemTime,
}

/// Hooks called by workers and producers.
pub trait Telemetry: Send + Sync + 'static {
    /// Makes `span` (the job's span, not yet entered) a child of the producer's trace
    /// context carried in `headers` (W3C `traceparent` / `tracestate`).
    fn continue_trace(&self, span: &tracing::Span, headers: &Headers);

    /// Writes the trace context of `span` (a producer's `send` span) into `headers`.
    fn inject(&self, span: &tracing::Span, headers: &mut Headers);

    /// A job attempt started.
    fn job_started(&self, event: &JobEvent<'_>);

    /// A job attempt ended, settled as `outcome`, `elapsed` after it started.
    fn job_finished(&self, event: &JobEvent<'_>, outcome: &Outcome, elapsed: Duration);

    /// A worker started consuming `queue` on `broker` (to sample its depth, say).
    fn worker_started(&self, broker: &Arc<dyn Broker>, queue: &QueueName) {
        let _ = (broker, queue);
    }

    /// A worker stopped consuming `queue`.
    fn worker_stopped(&self, queue: &QueueName) {
        let _ = queue;
    }
}
