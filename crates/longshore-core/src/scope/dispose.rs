//! Disposal of per-job values: handing a value over to its disposer by ownership, and
//! guarding each disposer against panics and hangs.

use std::any::type_name;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::AnyArc;
use crate::job::JobError;

/// Unwraps the scope's value of type `T` and gives it to `disposer`.
pub(super) async fn hand_over<T, D, DFut, E>(
    value: AnyArc,
    succeeded: bool,
    disposer: D,
) -> Result<(), JobError>
where
    T: Send + Sync + 'static,
    D: Fn(T, bool) -> DFut,
    DFut: Future<Output = Result<(), E>>,
    E: Into<JobError>,
{
    let value = value
        .downcast::<T>()
        // The disposer is registered under TypeId::of::<T>(), so the value is a T.
        .map_err(|_| {
            JobError::permanent(format!("scoped value is not a `{}`", type_name::<T>()))
        })?;
    let value = Arc::try_unwrap(value).map_err(|still| {
        JobError::retryable(format!(
            "the per-job `{name}` was still in use when the job ended ({others} other holder(s): \
             a `Dep<{name}>` kept by a task that outlives the job?), so its disposer could not \
             take it; the attempt fails",
            name = type_name::<T>(),
            others = Arc::strong_count(&still) - 1,
        ))
    })?;
    disposer(value, succeeded).await.map_err(Into::into)
}

/// Runs one disposer: a panic or passing `timeout` is a retryable failure.
pub(super) async fn guarded(
    type_name: &str,
    timeout: Duration,
    disposal: BoxFuture<'static, Result<(), JobError>>,
) -> Result<(), JobError> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(disposal).catch_unwind()).await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => Err(JobError::panicked(
            &format!("the disposer of `{type_name}`"),
            panic.as_ref(),
        )),
        Err(_) => Err(JobError::retryable(format!(
            "the disposer of `{type_name}` did not finish within {timeout:?}"
        ))),
    }
}
