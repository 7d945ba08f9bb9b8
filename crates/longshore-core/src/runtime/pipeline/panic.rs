//! A panicking handler is a failed attempt, not a crash of the worker.

use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use futures_util::FutureExt;

use super::{JobRequest, Layer, Next};
use crate::job::JobError;
use crate::outcome::Outcome;

/// Catches a panic of the handler (or of what it awaits): a retryable failure.
pub(super) struct CatchPanicLayer;

#[async_trait]
impl Layer for CatchPanicLayer {
    async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
        match AssertUnwindSafe(next.run(job)).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => Outcome::Failed(JobError::panicked("handler", panic.as_ref())),
        }
    }
}
