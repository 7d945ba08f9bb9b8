//! Settlement on RabbitMQ: `ack` = `basic.ack`; `release` = `basic.nack(requeue)`;
//! `retry(delay)` = republish through the delay ladder with the attempt header incremented,
//! confirmed, then ack; `dead_letter(reason)` = publish to the dead-letter target with the
//! reason in headers, confirmed, then ack. The original is acked only once the broker has
//! the copy, so a message is never in neither place. A delivery dropped unsettled is nacked
//! back to the queue at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use longshore_core::spi::{Acknowledger, Message, Settlement, headers};
use longshore_core::{Attempt, BrokerError};

use crate::error::broker_error;
use crate::publish::Outgoing;
use crate::receiver::{Receiver, replaced};
use crate::wire;

const REQUEUE: BasicNackOptions = BasicNackOptions {
    requeue: true,
    multiple: false,
};

pub(crate) struct AmqpAcknowledger {
    pub(crate) acker: Acker,
    /// The delivery tag, for the coalesced acks.
    pub(crate) tag: u64,
    /// Acked or nacked: nothing to hand back when dropped.
    pub(crate) settled: AtomicBool,
    pub(crate) receiver: Arc<Receiver>,
}

impl AmqpAcknowledger {
    fn lease_lost(&self, message: &Message) -> BrokerError {
        BrokerError::LeaseLost {
            queue: self.receiver.queue.clone(),
            message_id: message.id.clone(),
        }
    }

    /// `basic.ack`, coalesced with the deliveries finished beside it; returns once it was
    /// sent. A delivery from a channel that has since closed cannot be acked.
    async fn ack(&self, message: &Message) -> Result<(), BrokerError> {
        if !self.acker.usable() || self.settled.swap(true, Ordering::AcqRel) {
            return Err(self.lease_lost(message));
        }
        if self.receiver.acks.ack(self.tag).await {
            Ok(())
        } else {
            Err(self.lease_lost(message))
        }
    }

    async fn dead_letter(
        &self,
        message: &Message,
        attempt: Attempt,
        reason: String,
    ) -> Result<(), BrokerError> {
        let queue = &self.receiver.queue;
        let Some(target) = &self.receiver.dead_letter else {
            return Err(BrokerError::Topology {
                queue: queue.clone(),
                problem: format!(
                    "it has no dead-letter target for message `{}`; declare it with a dead-letter queue or configure its dead-letter exchange",
                    message.id
                ),
            });
        };
        let extra = [
            (headers::DEAD_REASON, reason),
            (headers::DEAD_ATTEMPT, attempt.get().to_string()),
            (headers::DEAD_AT, wire::now_millis()),
            (headers::DEAD_QUEUE, queue.to_string()),
        ];
        let properties = wire::encode(message, attempt, &extra);
        let routing_key = target
            .routing_key
            .clone()
            .unwrap_or_else(|| queue.to_string());
        self.receiver
            .publisher
            .publish(Outgoing {
                exchange: &target.exchange,
                routing_key: &routing_key,
                body: &message.body,
                properties,
                message_id: &message.id,
                queue,
            })
            .await
    }

    async fn settle_now(
        &self,
        message: &Message,
        attempt: Attempt,
        settlement: Settlement,
    ) -> Result<(), BrokerError> {
        if !self.acker.usable() || !self.receiver.is_live() {
            // The channel this came on has closed: RabbitMQ redelivers it; publishing a copy
            // now would make two.
            return Err(self.lease_lost(message));
        }
        match settlement {
            Settlement::Ack => self.ack(message).await,
            Settlement::Release => {
                self.settled.store(true, Ordering::Release);
                let nacked = self.acker.nack(REQUEUE).await;
                self.receiver.acks.settled(self.tag);
                match nacked {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(self.lease_lost(message)),
                    Err(error) => Err(broker_error(error, &self.receiver.queue)),
                }
            }
            // The publishing settlements are boxed: their futures are large, and unboxed
            // they would make every ack's future as large (an allocation of several KiB per
            // job, which glibc serves slowly when a batch of jobs settles at once).
            Settlement::Retry { delay } => {
                Box::pin(self.receiver.publisher.publish_message(
                    &self.receiver.queue,
                    message,
                    attempt.next(),
                    delay,
                ))
                .await?;
                self.ack(message).await
            }
            Settlement::DeadLetter { reason } => {
                Box::pin(self.dead_letter(message, attempt, reason)).await?;
                self.ack(message).await
            }
        }
    }
}

#[async_trait]
impl Acknowledger for AmqpAcknowledger {
    async fn settle(
        &self,
        message: &Message,
        attempt: Attempt,
        settlement: Settlement,
    ) -> Result<(), BrokerError> {
        // An ack waits for the channel's ack sender, which gives up on a connection that was
        // replaced; one waiter there, not one per job on the link's generation.
        if matches!(settlement, Settlement::Ack) {
            return self.settle_now(message, attempt, settlement).await;
        }
        // On a connection that was replaced, anything else would wait forever: the delivery
        // is gone.
        let replaced = replaced(self.receiver.current.clone(), self.receiver.generation);
        tokio::select! {
            result = self.settle_now(message, attempt, settlement) => result,
            () = replaced => Err(self.lease_lost(message)),
        }
    }

    /// RabbitMQ holds a delivery for the life of its channel: nothing to extend.
    async fn extend(&self, _by: Duration) -> Result<(), BrokerError> {
        Ok(())
    }
}

impl Drop for AmqpAcknowledger {
    /// A delivery dropped without being settled (a task that ended abnormally) goes back to
    /// the queue now, instead of holding a prefetch slot until its channel closes.
    fn drop(&mut self) {
        if !self.acker.usable() || *self.settled.get_mut() {
            return;
        }
        let (acker, tag, receiver) = (self.acker.clone(), self.tag, Arc::clone(&self.receiver));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = acker.nack(REQUEUE).await {
                    tracing::debug!(%error, "could not hand back an unsettled delivery; RabbitMQ requeues it when its channel closes");
                }
                receiver.acks.settled(tag);
            });
        }
    }
}

/// Sends a message that is not due yet on for the rest of its delay, then acks this copy.
/// If that fails, the copy goes back to the queue (after a pause, so a broker refusing the
/// publish does not make a hot loop) and the next consumer tries again. Runs as a task of
/// its own, beside the consumer's stream.
pub(crate) async fn send_on(
    receiver: Arc<Receiver>,
    message: Message,
    attempt: Attempt,
    remaining: Duration,
    acker: Acker,
    tag: u64,
) {
    let sent = receiver
        .publisher
        .publish_message(&receiver.queue, &message, attempt, remaining)
        .await;
    let settled = match sent {
        Ok(()) => acker.ack(BasicAckOptions::default()).await,
        Err(error) => {
            tracing::warn!(queue = %receiver.queue, message_id = %message.id, %error, "cannot send a delayed message on; it goes back to the queue");
            tokio::time::sleep(Duration::from_secs(1)).await;
            acker.nack(REQUEUE).await
        }
    };
    receiver.acks.settled(tag);
    if let Err(error) = settled {
        tracing::debug!(queue = %receiver.queue, %error, "settling a hopped message failed; RabbitMQ redelivers it");
    }
}
