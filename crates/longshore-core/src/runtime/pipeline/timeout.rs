//! The job timeout, the shutdown deadline and the lease heartbeat, on one timer per job.

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::{JobRequest, Layer, Next};
use crate::broker::BrokerError;
use crate::delivery::{Delivery, Lease};
use crate::job::JobError;
use crate::outcome::Outcome;

/// Stops the attempt when it passes its job type's timeout (a retryable failure) or the
/// worker's shutdown deadline (released), and keeps a leased delivery (SQS, memory)
/// invisible while it runs by renewing at half the remaining lease. A lease that is lost
/// stops the attempt, abandoned: the broker already hands the message to someone else.
pub(super) struct TimeoutLayer;

#[async_trait]
impl Layer for TimeoutLayer {
    async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
        let timeout = job.timeout();
        let stop = Arc::clone(job.context().cancellation());
        let lease = job.delivery.as_ref().and_then(Delivery::lease_keeper);
        if stop.is_cancelled() {
            return Outcome::Released;
        }
        let now = Instant::now();
        let timed_out_at = now.checked_add(timeout);
        let mut renew_at = lease
            .as_ref()
            .map(|lease| now + lease.deadline.saturating_duration_since(now) / 2);
        let mut renewing: Option<BoxFuture<'_, Result<(), BrokerError>>> = None;
        let run = next.run(job);
        tokio::pin!(run);
        loop {
            let wake = match (renew_at, timed_out_at) {
                (Some(renew), Some(timeout)) => Some(renew.min(timeout)),
                (renew, timeout) => renew.or(timeout),
            };
            tokio::select! {
                biased;
                outcome = &mut run => {
                    // A job that stopped because the deadline cancelled it (returning an
                    // error when `ctx.cancelled()` fired) is released, not a failed attempt;
                    // one that finished anyway keeps its outcome.
                    if !outcome.is_success() && stop.is_cancelled() {
                        tracing::info!("shutdown deadline passed; releasing the job");
                        return Outcome::Released;
                    }
                    return outcome;
                }
                () = stop.cancelled() => {
                    tracing::info!("shutdown deadline passed; releasing the job");
                    return Outcome::Released;
                }
                () = sleep_until(wake) => {
                    if timed_out_at.is_some_and(|at| Instant::now() >= at) {
                        return Outcome::Failed(JobError::retryable(format!(
                            "handler timed out after {timeout:?}"
                        )));
                    }
                    renew_at = None;
                    renewing = lease
                        .as_ref()
                        .map(|lease| -> BoxFuture<'_, _> { Box::pin(lease.renew()) });
                }
                renewed = async { renewing.as_mut().expect("guarded").await }, if renewing.is_some() => {
                    renewing = None;
                    let lease = lease.as_ref().expect("renewing only with a lease");
                    match after_renewal(lease, renewed) {
                        Ok(at) => renew_at = Some(at),
                        Err(abandoned) => return abandoned,
                    }
                }
            }
        }
    }
}

/// Sleeps until `at`; forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When to renew next after a renewal ended with `renewed`; a lost lease ends the attempt.
fn after_renewal(lease: &Lease, renewed: Result<(), BrokerError>) -> Result<Instant, Outcome> {
    match renewed {
        Ok(()) => Ok(Instant::now() + lease.period / 2),
        Err(error @ BrokerError::LeaseLost { .. }) => {
            tracing::warn!(%error, "lease lost; job stopped without settling");
            Err(Outcome::Abandoned {
                reason: error.to_string(),
            })
        }
        Err(error) => {
            tracing::warn!(%error, "could not extend the lease; trying again");
            Ok(Instant::now() + lease.period / 8)
        }
    }
}
