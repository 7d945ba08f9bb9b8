//! Settlement on RabbitMQ: `ack` = `basic.ack`; `release` = `basic.nack(requeue)`;
//! `retry(delay)` = republish through the delay ladder with the attempt header incremented,
//! confirmed, then ack; `dead_letter(reason)` = publish to the dead-letter target with the
//! reason in headers, confirmed, then ack. The original is acked only once the broker has
//! the copy, so a message is never in neither place.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use longshore_core::{Acknowledger, Attempt, BrokerError, Message, Settlement, headers};

use crate::connection::{Outgoing, broker_error};
use crate::consume::ConsumerShared;
use crate::wire;

pub(crate) struct AmqpAcknowledger {
    pub(crate) acker: Acker,
    pub(crate) shared: Arc<ConsumerShared>,
}

impl AmqpAcknowledger {
    fn lease_lost(&self, message: &Message) -> BrokerError {
        BrokerError::LeaseLost {
            queue: self.shared.queue.clone(),
            message_id: message.id.clone(),
        }
    }

    /// `basic.ack`; a delivery from a channel that has since closed cannot be acked.
    async fn ack(&self, message: &Message) -> Result<(), BrokerError> {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.lease_lost(message)),
            Err(error) => Err(broker_error(error, &self.shared.queue)),
        }
    }

    async fn republish(
        &self,
        message: &Message,
        attempt: Attempt,
        delay: Duration,
    ) -> Result<(), BrokerError> {
        self.shared
            .publisher
            .publish_message(&self.shared.queue, message, attempt.next(), delay)
            .await
    }

    async fn dead_letter(
        &self,
        message: &Message,
        attempt: Attempt,
        reason: String,
    ) -> Result<(), BrokerError> {
        let queue = &self.shared.queue;
        let Some(target) = &self.shared.dead_letter else {
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
        self.shared
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
}

#[async_trait]
impl Acknowledger for AmqpAcknowledger {
    async fn settle(
        &self,
        message: &Message,
        attempt: Attempt,
        settlement: Settlement,
    ) -> Result<(), BrokerError> {
        // On a connection that was replaced, an ack would wait forever: the delivery is gone.
        let mut replaced = self.shared.replaced.clone();
        tokio::select! {
            result = self.settle_now(message, attempt, settlement) => result,
            _ = replaced.changed() => Err(self.lease_lost(message)),
        }
    }

    /// RabbitMQ holds a delivery for the life of its channel: nothing to extend.
    async fn extend(&self, _by: Duration) -> Result<(), BrokerError> {
        Ok(())
    }
}

impl AmqpAcknowledger {
    async fn settle_now(
        &self,
        message: &Message,
        attempt: Attempt,
        settlement: Settlement,
    ) -> Result<(), BrokerError> {
        if !self.acker.usable() {
            // The channel this came on has closed: RabbitMQ redelivers it; publishing a copy
            // now would make two.
            return Err(self.lease_lost(message));
        }
        match settlement {
            Settlement::Ack => self.ack(message).await,
            Settlement::Release => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                match self.acker.nack(requeue).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(self.lease_lost(message)),
                    Err(error) => Err(broker_error(error, &self.shared.queue)),
                }
            }
            Settlement::Retry { delay } => {
                self.republish(message, attempt, delay).await?;
                self.ack(message).await
            }
            Settlement::DeadLetter { reason } => {
                self.dead_letter(message, attempt, reason).await?;
                self.ack(message).await
            }
        }
    }
}
