//! The per-job path: find the handler, build the scope, run the attempt with its timeout,
//! panic capture and lease heartbeat, dispose the scope, settle by the outcome.

use std::any::Any;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::broker::BrokerError;
use crate::context::JobContext;
use crate::delivery::{Delivery, Settlement};
use crate::handler::ErasedHandler;
use crate::job::JobError;
use crate::message::headers;
use crate::names::JobName;
use crate::retry::{RetryDecision, RetryPolicy};
use crate::runtime::stats::WorkerStats;
use crate::scope::{JobOutcome, Root, Scope};
use crate::telemetry::{self, JobEvent, JobResult};

/// One registered job type: its handler and its resolved options.
pub(crate) struct Registration {
    pub(crate) handler: Box<dyn ErasedHandler>,
    pub(crate) retry: RetryPolicy,
    pub(crate) timeout: Duration,
}

/// What every job task of a worker shares.
pub(crate) struct Shared {
    pub(crate) system: &'static str,
    pub(crate) root: Arc<Root>,
    pub(crate) registry: HashMap<JobName, Registration>,
    pub(crate) stats: Arc<WorkerStats>,
    /// Cancelled when the shutdown deadline passes: running jobs stop and are released.
    pub(crate) deadline: CancellationToken,
}

/// How one attempt ended.
enum End {
    Finished(Result<(), JobError>),
    /// Stopped by the shutdown deadline.
    Cancelled,
    /// The broker took the delivery back (lease expired): someone else may run it.
    LeaseLost(BrokerError),
}

/// Runs one delivery to its settlement, inside the job's span.
pub(crate) async fn process(shared: Arc<Shared>, delivery: Delivery) {
    shared.stats.started();
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {}", delivery.queue()),
        otel.kind = "consumer",
        otel.status_description = tracing::field::Empty,
        messaging.system = shared.system,
        messaging.operation.type = "process",
        messaging.destination.name = %delivery.queue(),
        messaging.message.id = %delivery.message().id,
        messaging.message.body.size = delivery.message().body.len(),
        longshore.job.name = %delivery.message().job,
        longshore.job.attempt = delivery.attempt().get(),
    );
    let Some(telemetry) = telemetry::installed() else {
        let result = run(&shared, delivery).instrument(span).await;
        shared.stats.finished(result);
        return;
    };
    telemetry.continue_trace(&span, &delivery.message().headers);
    let (queue, job, attempt) = (
        delivery.queue().clone(),
        delivery.message().job.clone(),
        delivery.attempt(),
    );
    let event = JobEvent {
        system: shared.system,
        queue: &queue,
        job: &job,
        attempt,
    };
    telemetry.job_started(&event);
    let started = tokio::time::Instant::now();
    let result = run(&shared, delivery).instrument(span).await;
    shared.stats.finished(result);
    telemetry.job_finished(&event, result, started.elapsed());
}

/// Marks the current (job) span failed and records the error on it.
fn record_failure(error: &dyn std::fmt::Display) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    let text = error.to_string();
    tracing::warn!(exception.message = %text, "exception");
    span.record("otel.status_description", text);
}

async fn run(shared: &Shared, delivery: Delivery) -> JobResult {
    let message = delivery.message();
    let Some(registration) = shared.registry.get(&message.job) else {
        let reason = unknown_job_reason(&message.job, &shared.registry);
        record_failure(&reason);
        tracing::error!(%reason, "dead-lettering message");
        return settle(
            delivery,
            Settlement::DeadLetter { reason },
            JobResult::DeadLettered,
        )
        .await;
    };

    // Every job is stopped by the same deadline: share its token (a child token would lock
    // the parent's tree on every job's start and end).
    let cancellation = shared.deadline.clone();
    let context = JobContext::new(
        message.id.clone(),
        message.job.clone(),
        delivery.queue().clone(),
        delivery.attempt(),
        message.enqueued_at,
        Arc::new(message.headers.clone()),
        cancellation.clone(),
    );
    let scope = Scope::new(Arc::clone(&shared.root), context);

    let end = tokio::select! {
        biased;
        () = cancellation.cancelled() => End::Cancelled,
        error = heartbeat(&delivery) => End::LeaseLost(error),
        result = attempt(registration, &message.body, &scope) => End::Finished(result),
    };

    let attempt_no = delivery.attempt();
    match end {
        End::Finished(Ok(())) => {
            scope.dispose(JobOutcome::Succeeded).await;
            tracing::debug!("job succeeded");
            settle(delivery, Settlement::Ack, JobResult::Succeeded).await
        }
        End::Finished(Err(error)) => {
            scope.dispose(JobOutcome::Failed).await;
            record_failure(&error);
            let (settlement, counted) = match (&error, registration.retry.decide(attempt_no)) {
                (JobError::Retryable(_), RetryDecision::RetryAfter(delay)) => {
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "job failed; retrying");
                    (Settlement::Retry { delay }, JobResult::Retried)
                }
                (JobError::Retryable(_), RetryDecision::GiveUp) => {
                    let reason = format!(
                        "attempts exhausted ({attempt_no} of {}): {error}",
                        registration.retry.max_attempts()
                    );
                    tracing::error!(%reason, "job failed; dead-lettering");
                    (Settlement::DeadLetter { reason }, JobResult::DeadLettered)
                }
                (JobError::Permanent(_), _) => {
                    let reason = format!("permanent failure: {error}");
                    tracing::error!(%reason, "job failed; dead-lettering");
                    (Settlement::DeadLetter { reason }, JobResult::DeadLettered)
                }
            };
            settle(delivery, settlement, counted).await
        }
        End::Cancelled => {
            scope.dispose(JobOutcome::Cancelled).await;
            tracing::info!("shutdown deadline passed; releasing the job");
            settle(delivery, Settlement::Release, JobResult::Released).await
        }
        End::LeaseLost(error) => {
            scope.dispose(JobOutcome::Cancelled).await;
            tracing::warn!(%error, "lease lost; job stopped without settling");
            JobResult::LeaseLost
        }
    }
}

/// The handler call with its timeout; a panic is a retryable failure.
async fn attempt(registration: &Registration, body: &[u8], scope: &Scope) -> Result<(), JobError> {
    let call = AssertUnwindSafe(registration.handler.call(body, scope)).catch_unwind();
    match tokio::time::timeout(registration.timeout, call).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(JobError::retryable(format!(
            "handler panicked: {}",
            panic_message(panic.as_ref())
        ))),
        Err(_) => Err(JobError::retryable(format!(
            "handler timed out after {:?}",
            registration.timeout
        ))),
    }
}

/// Keeps a leased delivery invisible while its job runs, renewing at half the remaining
/// lease. Completes only if the lease is lost; never for brokers without leases.
async fn heartbeat(delivery: &Delivery) -> BrokerError {
    let (Some(lease), Some(deadline)) = (delivery.lease(), delivery.lease_deadline()) else {
        return std::future::pending().await;
    };
    let mut wait = deadline.saturating_duration_since(tokio::time::Instant::now()) / 2;
    loop {
        tokio::time::sleep(wait).await;
        match delivery.extend(lease).await {
            Ok(()) => wait = lease / 2,
            Err(error @ BrokerError::LeaseLost { .. }) => return error,
            Err(error) => {
                tracing::warn!(%error, "could not extend the lease; trying again");
                wait = lease / 8;
            }
        }
    }
}

/// How long a settlement may take before the runtime gives up on it; the broker's own
/// redelivery is then the safety net, as for any failed settlement.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

async fn settle(delivery: Delivery, settlement: Settlement, counted: JobResult) -> JobResult {
    let name = settlement.name();
    match tokio::time::timeout(SETTLE_TIMEOUT, delivery.settle(settlement)).await {
        Ok(Ok(())) => counted,
        Ok(Err(failed)) => {
            tracing::error!(
                settlement = name,
                error = %failed.error,
                "settlement failed; the broker will redeliver the message"
            );
            JobResult::SettleFailed
        }
        Err(_) => {
            tracing::error!(
                settlement = name,
                "settlement got no answer within {SETTLE_TIMEOUT:?}; the broker will redeliver the message"
            );
            JobResult::SettleFailed
        }
    }
}

fn unknown_job_reason(job: &JobName, registry: &HashMap<JobName, Registration>) -> String {
    if job.as_str().is_empty() {
        return format!(
            "message has no `{}` header, so no handler can be chosen",
            headers::JOB
        );
    }
    let mut known: Vec<&str> = registry.keys().map(JobName::as_str).collect();
    known.sort_unstable();
    format!(
        "unknown job `{job}`: no handler is registered for it on this worker (registered: {})",
        known.join(", ")
    )
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}
