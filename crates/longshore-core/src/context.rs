//! [`JobContext`]: what every job's scope knows about the job it serves.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::job::JobError;
use crate::message::{Headers, headers};
use crate::names::{Attempt, JobName, MessageId, QueueName};
use crate::status::Progress;
use crate::status::tracking::Tracked;

/// Why a job is running now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// First delivery of an enqueued job.
    Queue,
    /// A later attempt after a failure (or a redelivery after a lost lease).
    Retry,
    /// A tick of a cron schedule.
    Schedule {
        /// The schedule's name.
        name: String,
        /// The tick this run is for.
        tick: SystemTime,
    },
    /// Enqueued by hand (the CLI, an admin tool).
    Manual,
}

impl Trigger {
    /// Reads the trigger from the message headers (`longshore-trigger`) and the attempt.
    ///
    /// `schedule:<name>@<unix millis>` and `manual` are recognised; anything else is a queue
    /// job. A later attempt is always a retry.
    pub fn from_headers(wire: &Headers, attempt: Attempt) -> Trigger {
        if attempt > Attempt::FIRST {
            return Trigger::Retry;
        }
        match wire.get(headers::TRIGGER).map(String::as_str) {
            Some("manual") => Trigger::Manual,
            Some(value) => value
                .strip_prefix("schedule:")
                .and_then(|rest| rest.rsplit_once('@'))
                .and_then(|(name, ms)| {
                    let ms = ms.parse::<u64>().ok()?;
                    Some(Trigger::Schedule {
                        name: name.to_owned(),
                        tick: UNIX_EPOCH + Duration::from_millis(ms),
                    })
                })
                .unwrap_or(Trigger::Queue),
            None => Trigger::Queue,
        }
    }
}

/// What the runtime knows about the running job; in every job's scope, and a handler
/// argument by itself.
#[derive(Clone, Debug)]
pub struct JobContext {
    /// The message id.
    pub id: MessageId,
    /// The job name.
    pub job: JobName,
    /// The queue it came from.
    pub queue: QueueName,
    /// Which attempt this is, as the broker counts.
    pub attempt: Attempt,
    /// Why it runs now.
    pub trigger: Trigger,
    /// When it was first enqueued.
    pub enqueued_at: SystemTime,
    /// The message headers (user headers and trace context).
    pub headers: Arc<Headers>,
    /// Cancelled when the worker asks its jobs to stop. Shared by every job of a worker, in
    /// an `Arc`: cloning a context does not touch the token's own lock.
    cancellation: Arc<CancellationToken>,
    /// The job's status handle, when its producer tracks its status.
    tracked: Option<Arc<Tracked>>,
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// A context for a job; the runtime builds these ([`crate::testing::context`] for tests).
    pub(crate) fn new(
        id: MessageId,
        job: JobName,
        queue: QueueName,
        attempt: Attempt,
        enqueued_at: SystemTime,
        headers: Arc<Headers>,
        cancellation: Arc<CancellationToken>,
    ) -> Self {
        let trigger = Trigger::from_headers(&headers, attempt);
        Self {
            id,
            job,
            queue,
            attempt,
            trigger,
            enqueued_at,
            headers,
            cancellation,
            tracked: None,
        }
    }

    /// The context of a job whose status is tracked.
    pub(crate) fn tracked(mut self, tracked: Arc<Tracked>) -> Self {
        self.tracked = Some(tracked);
        self
    }

    /// The job's status handle, if its status is tracked.
    pub(crate) fn tracking(&self) -> Option<&Arc<Tracked>> {
        self.tracked.as_ref()
    }

    /// Whether the job's status is tracked (its producer wrote it to a status store), so
    /// progress and results are kept.
    pub fn is_tracked(&self) -> bool {
        self.tracked.is_some()
    }

    /// Reports how far the job is: `fraction` from 0 to 1 and a short message
    /// (`ctx.progress(0.4, "resized 4 of 10")`). Written at most every 250 ms (the latest
    /// report wins); nothing happens for a job whose status is not tracked.
    pub fn progress(&self, fraction: f64, message: impl Into<String>) {
        if let Some(tracked) = &self.tracked {
            tracked.progress(Progress {
                fraction: if fraction.is_nan() {
                    0.0
                } else {
                    fraction.clamp(0.0, 1.0)
                },
                message: message.into(),
            });
        }
    }

    /// Leaves a small JSON result for the job's status, shown once it succeeds. A result
    /// larger than the status store's limit (64 KiB by default) is a permanent error;
    /// nothing happens for a job whose status is not tracked.
    pub fn set_result<T: serde::Serialize + ?Sized>(&self, result: &T) -> Result<(), JobError> {
        let Some(tracked) = &self.tracked else {
            return Ok(());
        };
        let value = serde_json::to_value(result).map_err(JobError::permanent)?;
        tracked.set_result(value).map_err(JobError::permanent)
    }

    /// The token the worker cancels to stop its jobs.
    pub(crate) fn cancellation(&self) -> &Arc<CancellationToken> {
        &self.cancellation
    }

    /// Whether the job was asked to stop: the shutdown deadline passed, or its
    /// cancellation was asked for through its status.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
            || self
                .tracked
                .as_ref()
                .is_some_and(|tracked| tracked.cancel.is_cancelled())
    }

    /// Completes when the job is asked to stop (see [`is_cancelled`](Self::is_cancelled));
    /// long jobs can `select!` on it.
    pub async fn cancelled(&self) {
        match &self.tracked {
            Some(tracked) => tokio::select! {
                () = self.cancellation.cancelled() => {}
                () = tracked.cancel.cancelled() => {}
            },
            None => self.cancellation.cancelled().await,
        }
    }

    /// The W3C `traceparent` of the producer, if the message carried one.
    pub fn traceparent(&self) -> Option<&str> {
        self.headers.get(headers::TRACEPARENT).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_trigger(value: &str) -> Headers {
        let mut wire = Headers::new();
        wire.insert(headers::TRIGGER.into(), value.into());
        wire
    }

    #[test]
    fn trigger_from_headers() {
        assert_eq!(
            Trigger::from_headers(&Headers::new(), Attempt::FIRST),
            Trigger::Queue
        );
        assert_eq!(
            Trigger::from_headers(&Headers::new(), Attempt::new(2)),
            Trigger::Retry
        );
        assert_eq!(
            Trigger::from_headers(&with_trigger("manual"), Attempt::FIRST),
            Trigger::Manual
        );
        assert_eq!(
            Trigger::from_headers(&with_trigger("schedule:daily@report@1000"), Attempt::FIRST),
            Trigger::Schedule {
                name: "daily@report".into(),
                tick: UNIX_EPOCH + Duration::from_secs(1)
            }
        );
        assert_eq!(
            Trigger::from_headers(&with_trigger("schedule:x"), Attempt::FIRST),
            Trigger::Queue
        );
    }
}
