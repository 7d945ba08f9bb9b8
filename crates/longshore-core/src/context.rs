//! [`JobContext`]: what every job's scope knows about the job it serves.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use crate::message::{Headers, headers};
use crate::names::{Attempt, JobName, MessageId, QueueName};

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
        }
    }

    /// The token the worker cancels to stop its jobs.
    pub(crate) fn cancellation(&self) -> &Arc<CancellationToken> {
        &self.cancellation
    }

    /// Whether the worker asked this job to stop (shutdown deadline passed, lease lost).
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// Completes when the worker asks this job to stop; long jobs can `select!` on it.
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await;
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
