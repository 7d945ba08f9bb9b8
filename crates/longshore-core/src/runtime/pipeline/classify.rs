//! Retry classification: a failed attempt is retried after the policy's delay, or
//! dead-lettered with the reason.

use async_trait::async_trait;

use super::{JobRequest, Layer, Next};
use crate::job::JobError;
use crate::outcome::Outcome;
use crate::retry::{RetryDecision, whole_units};

/// Turns [`Outcome::Failed`] into [`Outcome::Retried`] or [`Outcome::DeadLettered`]: a
/// retryable error is retried with the job's retry policy until its attempts are used up;
/// a permanent one (and any failure of a job without a handler) is dead-lettered at once.
pub(super) struct ClassifyLayer;

#[async_trait]
impl Layer for ClassifyLayer {
    async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
        match next.run(job).await {
            Outcome::Failed(error) => classify(job, &error),
            settled => settled,
        }
    }
}

/// The settlement a failure of `job` calls for; logged in the job's span.
pub(super) fn classify(job: &JobRequest, error: &JobError) -> Outcome {
    let attempt = job.context().attempt;
    tracing::warn!(exception.message = %error, "exception");
    let policy = match (error, job.retry_policy()) {
        (JobError::Retryable(_), Some(policy)) => policy,
        (JobError::Retryable(_), None) | (JobError::Permanent(_), _) => {
            let reason = if job.has_handler() {
                format!("permanent failure: {error}")
            } else {
                error.to_string()
            };
            tracing::error!(%reason, "job failed; dead-lettering");
            return Outcome::DeadLettered { reason };
        }
    };
    match policy.decide(attempt) {
        RetryDecision::RetryAfter(delay) => {
            let delay = whole_units(delay, job.retry_unit(), fastrand::f64());
            tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "job failed; retrying");
            Outcome::Retried {
                delay,
                error: error.to_string(),
            }
        }
        RetryDecision::GiveUp => {
            let reason = format!(
                "attempts exhausted ({attempt} of {}): {error}",
                policy.max_attempts()
            );
            tracing::error!(%reason, "job failed; dead-lettering");
            Outcome::DeadLettered { reason }
        }
    }
}
