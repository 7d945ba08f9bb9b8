//! Settlement on SQS: `ack` = `DeleteMessage` (batched); `retry(delay)` =
//! `ChangeMessageVisibility` to the delay, so `ApproximateReceiveCount` and the queue's
//! redrive policy keep working; `release` = visibility 0; `dead_letter(reason)` = send to the
//! redrive target with the reason, then delete; `extend` = the heartbeat.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use longshore_core::spi::{Acknowledger, Message, Settlement, headers, unix_millis};
use longshore_core::{Attempt, BrokerError, MessageId};
use tokio::time::Instant;

use crate::client::settle_error;
use crate::fifo::{Ended, Gate, release_all};
use crate::publish;
use crate::queue::QueueCtx;
use crate::received::Received;
use crate::topology::seconds_up;

/// SQS's longest visibility timeout (12 hours).
pub(crate) const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// A FIFO delivery's group and the gate that holds the rest of it.
pub(crate) type GroupGate = (Arc<Gate<Received>>, String);

pub(crate) struct SqsAcknowledger {
    ctx: Arc<QueueCtx>,
    receipt: String,
    message_id: MessageId,
    sqs_id: String,
    group: Option<String>,
    /// FIFO: told (once) when this delivery ends.
    gate: Mutex<Option<GroupGate>>,
    /// When our lease ends, as far as we know. Past it the receipt may belong to nobody or
    /// to a stale receive, and SQS can accept a delete that deletes nothing; so settling
    /// refuses locally with [`BrokerError::LeaseLost`].
    deadline: Mutex<Instant>,
    /// A settlement was asked for (or the message handed on); a delivery dropped without
    /// one is released at once.
    settling: AtomicBool,
}

impl SqsAcknowledger {
    pub(crate) fn new(
        ctx: Arc<QueueCtx>,
        receipt: String,
        message_id: MessageId,
        sqs_id: String,
        group: Option<String>,
        deadline: Instant,
        gate: Option<GroupGate>,
    ) -> Self {
        Self {
            ctx,
            receipt,
            message_id,
            sqs_id,
            group,
            gate: Mutex::new(gate),
            deadline: Mutex::new(deadline),
            settling: AtomicBool::new(false),
        }
    }

    /// Tells the FIFO gate how this delivery ended (once); hands the held rest of its group
    /// back to SQS if the group must start again.
    pub(crate) fn end(&self, how: Ended) {
        let gate = self
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some((gate, group)) = gate else { return };
        let (receipts, until) = gate.ended(&group, how);
        if receipts.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release_all(Arc::clone(&self.ctx), receipts, until));
        }
    }

    /// This delivery handed back to SQS, for the FIFO gate.
    fn returned(&self) -> Ended {
        Ended::Returned {
            sqs_id: self.sqs_id.clone(),
        }
    }

    fn held(&self, message_id: &MessageId) -> Result<(), BrokerError> {
        if Instant::now() >= *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) {
            return Err(BrokerError::LeaseLost {
                queue: self.ctx.name.clone(),
                message_id: message_id.clone(),
            });
        }
        Ok(())
    }

    pub(crate) async fn delete(&self, message_id: &MessageId) -> Result<(), BrokerError> {
        self.ctx.delete(self.receipt.clone(), message_id).await
    }

    pub(crate) async fn change_visibility(
        &self,
        message_id: &MessageId,
        seconds: i32,
    ) -> Result<(), BrokerError> {
        self.ctx
            .client
            .change_message_visibility()
            .queue_url(&self.ctx.info.url)
            .receipt_handle(&self.receipt)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|error| settle_error(error, &self.ctx.name, message_id))?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        message: &Message,
        attempt: Attempt,
        reason: String,
    ) -> Result<(), BrokerError> {
        let Some((dlq, url)) = &self.ctx.info.dead_letter else {
            return Err(BrokerError::Topology {
                queue: self.ctx.name.clone(),
                problem: format!(
                    "it has no redrive target to move message `{}` to; add a redrive policy",
                    message.id
                ),
            });
        };
        let mut dead = message.clone();
        dead.delay = None;
        dead.headers_mut()
            .insert(headers::DEAD_REASON.into(), reason);
        dead.headers_mut()
            .insert(headers::DEAD_ATTEMPT.into(), attempt.get().to_string());
        dead.headers_mut().insert(
            headers::DEAD_AT.into(),
            unix_millis(SystemTime::now()).to_string(),
        );
        dead.headers_mut()
            .insert(headers::DEAD_QUEUE.into(), self.ctx.name.to_string());
        dead.group = self.group.clone();
        dead.deduplication_id = Some(format!("{}-dead-{attempt}", message.id));
        let fifo = dlq.as_str().ends_with(".fifo");
        publish::send(&self.ctx.client, dlq, url, fifo, &dead).await?;
        self.delete(&message.id).await
    }

    async fn settle_now(
        &self,
        message: &Message,
        attempt: Attempt,
        settlement: Settlement,
    ) -> Result<(), BrokerError> {
        self.held(&message.id)?;
        match settlement {
            Settlement::Ack => self.delete(&message.id).await,
            Settlement::Release => self.change_visibility(&message.id, 0).await,
            Settlement::Retry { delay } => {
                // `settle` made the delay whole seconds, at most 12 hours.
                self.change_visibility(&message.id, seconds_up(delay)).await
            }
            Settlement::DeadLetter { reason } => self.dead_letter(message, attempt, reason).await,
        }
    }
}

#[async_trait]
impl Acknowledger for SqsAcknowledger {
    async fn settle(
        &self,
        message: &Message,
        attempt: Attempt,
        settlement: Settlement,
    ) -> Result<(), BrokerError> {
        self.settling.store(true, Ordering::Relaxed);
        let settlement = match settlement {
            Settlement::Retry { delay } => {
                // Never early: up to the next whole second (the runtime drew the delay in
                // whole seconds already, keeping the jitter), at most 12 hours.
                if delay > MAX_VISIBILITY {
                    tracing::warn!(
                        ?delay,
                        "SQS retries wait at most 12 hours (the longest visibility timeout)"
                    );
                }
                let mut seconds = u64::try_from(seconds_up(delay.min(MAX_VISIBILITY))).unwrap_or(0);
                if self.group.is_some() {
                    // FIFO: the group waits for its retry; a retry visible at once could
                    // be received behind the group's next messages, which the gate hands
                    // back as the retry ends. At least a second keeps the group in order.
                    seconds = seconds.max(1);
                }
                Settlement::Retry {
                    delay: Duration::from_secs(seconds),
                }
            }
            other => other,
        };
        let how = match &settlement {
            Settlement::Ack | Settlement::DeadLetter { .. } => Ended::Done,
            Settlement::Release => self.returned(),
            Settlement::Retry { delay } => Ended::Retried {
                until: Instant::now() + *delay,
                sqs_id: self.sqs_id.clone(),
            },
        };
        let result = self.settle_now(message, attempt, settlement).await;
        // A failed settlement leaves the message to come back from SQS: the group restarts.
        self.end(if result.is_ok() { how } else { self.returned() });
        result
    }

    async fn extend(&self, by: Duration) -> Result<(), BrokerError> {
        self.held(&self.message_id)?;
        let seconds = seconds_up(by.min(MAX_VISIBILITY));
        let asked = Instant::now();
        self.change_visibility(&self.message_id, seconds).await?;
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner) =
            asked + Duration::from_secs(seconds as u64);
        Ok(())
    }
}

impl Drop for SqsAcknowledger {
    /// A delivery dropped without a settlement (a task that ended abnormally) is released
    /// (visibility 0) instead of waiting out its lease; either way its FIFO group is freed.
    fn drop(&mut self) {
        if !self.settling.load(Ordering::Relaxed)
            && Instant::now() < *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (ctx, receipt) = (Arc::clone(&self.ctx), self.receipt.clone());
            runtime.spawn(async move {
                let released = ctx
                    .client
                    .change_message_visibility()
                    .queue_url(&ctx.info.url)
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .send()
                    .await;
                if let Err(error) = released {
                    tracing::debug!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "could not release an unsettled delivery; it comes back after its visibility timeout");
                }
            });
        }
        self.end(self.returned());
    }
}

/// Sends a message that is not due yet on for the rest of its delay (`message.delay`), then
/// deletes this copy; on failure the copy comes back after its visibility timeout. Runs as
/// a task of its own, beside the receive stream.
pub(crate) async fn send_on(acknowledger: SqsAcknowledger, message: Message) {
    acknowledger.settling.store(true, Ordering::Relaxed);
    let ctx = Arc::clone(&acknowledger.ctx);
    let sent = publish::send(
        &ctx.client,
        &ctx.name,
        &ctx.info.url,
        ctx.info.fifo,
        &message,
    )
    .await;
    let done = match sent {
        Ok(()) => acknowledger.delete(&message.id).await,
        Err(error) => Err(error),
    };
    match done {
        Ok(()) => acknowledger.end(Ended::Done),
        Err(error) => {
            tracing::warn!(queue = %ctx.name, message_id = %message.id, %error, "could not send a delayed message on; it comes back after its visibility timeout");
        }
    }
}

/// Hands back at once a message that waited in the receive buffer nearly a whole lease: too
/// little of it is left to run a job. Runs as a task of its own.
pub(crate) async fn hand_back(acknowledger: SqsAcknowledger) {
    acknowledger.settling.store(true, Ordering::Relaxed);
    let message_id = acknowledger.message_id.clone();
    if let Err(error) = acknowledger.change_visibility(&message_id, 0).await {
        tracing::debug!(%error, "could not hand back a message; it comes back after its visibility timeout");
    }
    acknowledger.end(acknowledger.returned());
}
