//! Settlement: the delivery is settled by the attempt's outcome, within a timeout.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;

use super::classify::classify;
use super::{JobRequest, Layer, Next};
use crate::delivery::Settlement;
use crate::job::JobError;
use crate::outcome::Outcome;

/// Settles the delivery by the outcome of everything inside: `Succeeded` and `Skipped` →
/// ack, `Retried` → retry after its delay, `DeadLettered` → dead-letter with the reason,
/// `Released` → release, `Abandoned` → nothing (the broker redelivers). A panic of a layer inside is a
/// failed attempt; a settlement the broker refuses or does not answer within `timeout`
/// leaves the message to the broker's redelivery (at least once), `Abandoned`.
pub(super) struct SettleLayer {
    pub(super) timeout: Duration,
}

#[async_trait]
impl Layer for SettleLayer {
    async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
        let outcome = match AssertUnwindSafe(next.run(job)).catch_unwind().await {
            Ok(Outcome::Failed(error)) => classify(job, &error),
            Ok(outcome) => outcome,
            Err(panic) => classify(job, &JobError::panicked("a layer", panic.as_ref())),
        };
        let settlement = match &outcome {
            Outcome::Succeeded | Outcome::Skipped { .. } => Settlement::Ack,
            Outcome::Retried { delay, .. } => Settlement::Retry { delay: *delay },
            Outcome::DeadLettered { reason } => Settlement::DeadLetter {
                reason: reason.clone(),
            },
            Outcome::Released => Settlement::Release,
            Outcome::Abandoned { .. } | Outcome::Failed(_) => return outcome,
        };
        let Some(delivery) = job.delivery.take() else {
            return outcome;
        };
        let name = settlement.name();
        match tokio::time::timeout(self.timeout, delivery.settle(settlement)).await {
            Ok(Ok(())) => outcome,
            Ok(Err(failed)) => {
                tracing::error!(
                    settlement = name,
                    error = %failed.error,
                    "settlement failed; the broker will redeliver the message"
                );
                Outcome::Abandoned {
                    reason: format!("the {name} was not taken: {}", failed.error),
                }
            }
            Err(_) => {
                let timeout = self.timeout;
                tracing::error!(
                    settlement = name,
                    "settlement got no answer within {timeout:?}; the broker will redeliver the message"
                );
                Outcome::Abandoned {
                    reason: format!("the {name} got no answer within {timeout:?}"),
                }
            }
        }
    }
}
