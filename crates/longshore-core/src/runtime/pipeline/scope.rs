//! The scope's lifecycle: disposers run after the attempt, before the delivery settles.

use std::time::Duration;

use async_trait::async_trait;

use super::{JobRequest, Layer, Next};
use crate::outcome::Outcome;

/// Disposes the job's scope once the attempt is over: its per-job values' disposers run
/// (commit when it succeeded, roll back otherwise), each within `timeout`. A disposer that
/// fails, panics or hangs fails an attempt that had succeeded; an attempt that had failed
/// keeps its own error.
pub(super) struct ScopeLayer {
    pub(super) timeout: Duration,
}

#[async_trait]
impl Layer for ScopeLayer {
    async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
        let outcome = next.run(job).await;
        let succeeded = outcome.is_success();
        match job.scope.dispose(succeeded, self.timeout).await {
            Ok(()) => outcome,
            Err(error) if succeeded => Outcome::Failed(error),
            Err(error) => {
                tracing::debug!(%error, "a disposer failed after a failed attempt; the attempt's own error stands");
                outcome
            }
        }
    }
}
