//! [`Outcome`]: how one attempt of a job ended, the one vocabulary of the runtime, its
//! layers, its counters and telemetry.

use std::fmt;
use std::time::Duration;

use crate::job::JobError;

/// How one attempt of a job ended.
///
/// Inside the per-job stack (see [`Layer`](crate::Layer)) an attempt comes out of the
/// handler `Succeeded` or `Failed`; the retry classification turns `Failed` into `Retried`
/// or `DeadLettered` by the job's retry policy, and the settlement makes it so on the
/// broker. Layers above the settlement, the worker's counters and telemetry see the settled
/// outcome: `Succeeded` (acked), `Retried`, `DeadLettered`, `Released`, `Skipped` (acked
/// without running) or `Abandoned`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler succeeded; settled, the delivery was acked.
    Succeeded,
    /// The attempt failed (an error, a panic, the job timeout, a disposer that failed), not
    /// yet classified: the settlement retries or dead-letters it by the retry policy.
    Failed(JobError),
    /// Failed; the job runs again no sooner than `delay` from now.
    Retried {
        /// The wait before the next attempt.
        delay: Duration,
        /// Why this attempt failed.
        error: String,
    },
    /// Moved to the dead-letter queue.
    DeadLettered {
        /// Why, as recorded on the dead letter.
        reason: String,
    },
    /// Stopped by the shutdown deadline and handed back to the broker untouched.
    Released,
    /// Not run, or stopped, and acked: its cancellation was asked for, or it had succeeded
    /// already (a redelivery of a tracked job).
    Skipped {
        /// Why.
        reason: String,
    },
    /// Not settled by this worker: its lease was lost, or the broker did not take the
    /// settlement. The broker redelivers the message (at least once).
    Abandoned {
        /// What happened.
        reason: String,
    },
}

impl Outcome {
    /// A short lowercase name for logs and metrics: `succeeded`, `failed`, `retried`,
    /// `dead_lettered`, `released`, `abandoned`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed(_) => "failed",
            Outcome::Retried { .. } => "retried",
            Outcome::DeadLettered { .. } => "dead_lettered",
            Outcome::Released => "released",
            Outcome::Skipped { .. } => "skipped",
            Outcome::Abandoned { .. } => "abandoned",
        }
    }

    /// Whether the attempt succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded)
    }

    /// The error or reason, for an attempt that did not succeed or finish.
    pub fn error(&self) -> Option<String> {
        match self {
            Outcome::Succeeded | Outcome::Released | Outcome::Skipped { .. } => None,
            Outcome::Failed(error) => Some(error.to_string()),
            Outcome::Retried { error, .. } => Some(error.clone()),
            Outcome::DeadLettered { reason } | Outcome::Abandoned { reason } => {
                Some(reason.clone())
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.error() {
            Some(error) => write!(f, "{}: {error}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}
