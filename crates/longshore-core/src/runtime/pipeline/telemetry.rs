//! The job's span and the telemetry hooks.

use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument;

use super::{JobRequest, Layer, Next};
use crate::names::JobName;
use crate::outcome::Outcome;
use crate::telemetry::{JobEvent, Telemetry};

/// Runs the attempt inside its `process <queue>` span (OpenTelemetry's messaging
/// conventions in its fields), continues the producer's trace from the message headers,
/// and tells the telemetry hooks when it starts and how it ended. An attempt that did not
/// succeed marks the span failed.
pub(super) struct TelemetryLayer {
    system: &'static str,
    hooks: Vec<Arc<dyn Telemetry>>,
    /// The metric label of jobs this worker has no handler for: names from message headers
    /// must not make new series without bound.
    unknown: JobName,
}

impl TelemetryLayer {
    pub(super) fn new(system: &'static str, hooks: Vec<Arc<dyn Telemetry>>) -> Self {
        Self {
            system,
            hooks,
            unknown: JobName::new("unknown"),
        }
    }
}

#[async_trait]
impl Layer for TelemetryLayer {
    async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
        let context = job.context();
        let span = tracing::info_span!(
            "process",
            otel.name = %format_args!("process {}", context.queue),
            otel.kind = "consumer",
            otel.status_description = tracing::field::Empty,
            messaging.system = self.system,
            messaging.operation.type = "process",
            messaging.destination.name = %context.queue,
            messaging.message.id = %context.id,
            messaging.message.body.size = job.body().len(),
            longshore.job.name = %context.job,
            longshore.job.attempt = context.attempt.get(),
        );
        if self.hooks.is_empty() {
            let outcome = next.run(job).instrument(span.clone()).await;
            record(&span, &outcome);
            return outcome;
        }
        for hooks in &self.hooks {
            hooks.continue_trace(&span, &context.headers);
        }
        let (queue, id, attempt, enqueued_at) = (
            context.queue.clone(),
            context.id.clone(),
            context.attempt,
            context.enqueued_at,
        );
        let name = if job.has_handler() {
            job.context().job.clone()
        } else {
            self.unknown.clone()
        };
        let event = JobEvent {
            system: self.system,
            queue: &queue,
            id: &id,
            job: &name,
            attempt,
            enqueued_at,
        };
        for hooks in &self.hooks {
            hooks.job_started(&event);
        }
        let started = tokio::time::Instant::now();
        let outcome = next.run(job).instrument(span.clone()).await;
        record(&span, &outcome);
        let elapsed = started.elapsed();
        for hooks in &self.hooks {
            hooks.job_finished(&event, &outcome, elapsed);
        }
        outcome
    }
}

/// Marks the span failed with the error of an attempt that did not succeed.
fn record(span: &tracing::Span, outcome: &Outcome) {
    if span.is_disabled() {
        return;
    }
    if let Some(error) = outcome.error() {
        span.record("otel.status_description", error);
    }
}
