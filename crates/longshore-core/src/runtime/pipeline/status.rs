//! Job status: a tracked job's status follows each attempt, and a job whose cancellation was
//! asked for, or that succeeded already, is skipped.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use super::{JobRequest, Layer, Next};
use crate::names::MessageId;
use crate::outcome::Outcome;
use crate::status::tracking::Cancels;
use crate::status::writer::Running;
use crate::status::{Change, JobState, JobStatuses, patch};

/// How long a redelivered job's status is looked up before running it anyway.
const REDELIVERY_CHECK: Duration = Duration::from_millis(500);
/// How long a succeeded job waits for its status to be written before it is acked.
const SUCCESS_WRITE: Duration = Duration::from_secs(2);

/// Moves the status of tracked jobs (those whose producer wrote one) through the
/// background writer, never waiting for the store: running before the attempt, then
/// succeeded, retrying (with the next try's time), dead-lettered or queued again. Sits
/// inside the settlement and outside the retry classification, so it sees the classified
/// outcome; what it skips (`Skipped`) is acked.
///
/// - A job whose cancellation was asked for is skipped when it arrives (status cancelled);
///   one asked to stop while it runs (its `JobContext::cancelled()` fires) and then fails is
///   cancelled, not retried.
/// - A redelivered job (attempt above 1) whose status says it succeeded already is acked
///   without running again: an inbox for at-least-once delivery. A job's succeeded status
///   is written before its ack (waiting at most 2 s, and not while the store is down); a
///   store that does not answer the redelivery's look-up in time does not hold it up: it
///   runs.
pub(super) struct StatusLayer {
    pub(super) statuses: JobStatuses,
    pub(super) cancels: Arc<Cancels>,
    pub(super) worker: Arc<str>,
}

impl StatusLayer {
    fn send(
        &self,
        id: &MessageId,
        patch: serde_json::Map<String, serde_json::Value>,
        state: JobState,
        due: Option<SystemTime>,
    ) {
        let expires = self.statuses.expiry(state, due);
        self.statuses.send(Change::new(id.clone(), patch, expires));
    }

    fn cancel(&self, id: &MessageId, reason: &str) -> Outcome {
        self.cancels.forget(id);
        self.send(id, patch::cancelled(), JobState::Cancelled, None);
        Outcome::Skipped {
            reason: reason.to_owned(),
        }
    }
}

#[async_trait]
impl Layer for StatusLayer {
    async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
        let Some(tracked) = job.context().tracking().cloned() else {
            return next.run(job).await;
        };
        let (id, attempt) = (tracked.id.clone(), job.context().attempt.get());
        if self.cancels.is_requested(&id) {
            return self.cancel(&id, "its cancellation was asked for before it ran");
        }
        if attempt > 1
            && let Ok(Ok(Some(status))) =
                tokio::time::timeout(REDELIVERY_CHECK, self.statuses.get(&id)).await
        {
            match status.state {
                JobState::Succeeded | JobState::DeadLettered | JobState::Cancelled => {
                    return Outcome::Skipped {
                        reason: format!(
                            "its status says it is {} already (a redelivery)",
                            status.state.as_str()
                        ),
                    };
                }
                _ if status.cancel_requested => {
                    return self.cancel(&id, "its cancellation was asked for before it ran");
                }
                _ => {}
            }
        }
        // Written within 50 ms, or with the attempt's last change if it ends sooner.
        self.statuses.send_running(Running {
            id: id.clone(),
            attempt,
            worker: Arc::clone(&self.worker),
            started_at: SystemTime::now(),
            expires_at: self.statuses.expiry(JobState::Running, None),
        });
        self.cancels.register(&id, &tracked.cancel);
        let outcome = next.run(job).await;
        self.cancels.unregister(&id);
        let asked_to_stop = tracked.cancel.is_cancelled();
        let (result, held) = tracked.finish();
        // A progress report the throttle held goes with the attempt's last change.
        let with_progress = |mut patch: serde_json::Map<String, serde_json::Value>| {
            if let Some(progress) = &held {
                patch.extend(patch::progress(progress));
            }
            patch
        };
        match &outcome {
            Outcome::Succeeded => {
                // Written before the ack, so a redelivery (a lost ack) finds it: the inbox.
                // A store that is down or slow does not hold the ack up for long.
                let expires = self.statuses.expiry(JobState::Succeeded, None);
                let patch = with_progress(patch::succeeded(result.as_ref()));
                let change = Change::new(id.clone(), patch, expires);
                self.statuses.send_confirmed(change, SUCCESS_WRITE).await;
            }
            Outcome::Retried { .. } | Outcome::DeadLettered { .. } if asked_to_stop => {
                return self.cancel(&id, "it was cancelled while it ran");
            }
            Outcome::Retried { delay, error } => {
                let next_try = SystemTime::now() + *delay;
                self.send(
                    &id,
                    with_progress(patch::retrying(attempt, error, next_try)),
                    JobState::Retrying,
                    Some(next_try),
                );
            }
            Outcome::DeadLettered { reason } => {
                self.send(
                    &id,
                    patch::dead_lettered(reason),
                    JobState::DeadLettered,
                    None,
                );
            }
            Outcome::Released => self.send(&id, patch::requeued(), JobState::Queued, None),
            // Abandoned: the broker redelivers it, and the next attempt moves the status.
            Outcome::Skipped { .. } | Outcome::Abandoned { .. } | Outcome::Failed(_) => {}
        }
        outcome
    }
}
