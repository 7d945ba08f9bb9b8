//! Consuming: a channel per consumer with `basic.qos` prefetch and manual acks, turning each
//! lapin delivery into a longshore [`Delivery`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use longshore_core::{
    BrokerError, ConsumeOptions, Delivery, DeliveryStream, Message, QueueName, headers,
};

use crate::DeadLetterTarget;
use crate::connection::{Publisher, broker_error};
use crate::settle::AmqpAcknowledger;
use crate::wire;

/// What every delivery of one consumer shares. Holding the consumer's channel here keeps
/// it open until the last of its deliveries is settled, even after the stream is dropped.
pub(crate) struct ConsumerShared {
    pub(crate) queue: QueueName,
    pub(crate) publisher: Publisher,
    pub(crate) dead_letter: Option<DeadLetterTarget>,
    #[expect(
        dead_code,
        reason = "held, never read: keeps the channel open for settlement"
    )]
    pub(crate) channel: Channel,
    /// Changes when the connection this consumer is on is replaced.
    pub(crate) replaced: tokio::sync::watch::Receiver<u64>,
}

/// Owns the lapin consumer; when the stream is dropped it cancels the consumer and hands
/// the deliveries RabbitMQ prefetched for it, not yet started, back to the queue. The
/// channel stays open until they are nacked, so deliveries still running can be acked.
struct Guard {
    channel: Channel,
    consumer: Option<Consumer>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(mut consumer) = self.consumer.take() else {
            return;
        };
        let channel = self.channel.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to nack on: closing the channel (when the last handle drops) makes
            // RabbitMQ requeue them.
            return;
        };
        runtime.spawn(async move {
            let tag = consumer.tag();
            if let Err(error) = channel.basic_cancel(tag, BasicCancelOptions::default()).await {
                tracing::debug!(%error, "consumer cancel failed; closing the channel requeues its deliveries");
                return;
            }
            // After cancel-ok nothing new arrives; what is buffered goes back.
            while let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
                let requeue = BasicNackOptions { requeue: true, multiple: false };
                if let Err(error) = delivery.acker.nack(requeue).await {
                    tracing::debug!(%error, "could not release a prefetched delivery; the broker requeues it when the channel closes");
                }
            }
        });
    }
}

/// How long until `message` is due, if it carries a due time (a delay past the ladder's
/// reach) that has not come; the due-time header is taken off either way.
fn not_due_yet(message: &mut Message) -> Option<Duration> {
    let due_ms = message
        .headers
        .remove(headers::DUE_AT)?
        .parse::<u64>()
        .ok()?;
    let due = UNIX_EPOCH + Duration::from_millis(due_ms);
    due.duration_since(SystemTime::now())
        .ok()
        .filter(|remaining| !remaining.is_zero())
}

/// Sends a message that is not due on for the rest of its delay, then acks this copy. If
/// that fails, the copy goes back to the queue (after a pause, so a broker refusing the
/// publish does not make a hot loop) and the next consumer tries again.
async fn hop(
    shared: &ConsumerShared,
    message: &Message,
    attempt: longshore_core::Attempt,
    remaining: Duration,
    acker: &lapin::Acker,
) {
    let sent = shared
        .publisher
        .publish_message(&shared.queue, message, attempt, remaining)
        .await;
    let settled = match sent {
        Ok(()) => acker.ack(BasicAckOptions::default()).await,
        Err(error) => {
            tracing::warn!(queue = %shared.queue, message_id = %message.id, %error, "cannot send a delayed message on; it goes back to the queue");
            tokio::time::sleep(Duration::from_secs(1)).await;
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
        }
    };
    if let Err(error) = settled {
        tracing::debug!(queue = %shared.queue, %error, "settling a hopped message failed; RabbitMQ redelivers it");
    }
}

pub(crate) async fn consume(
    connection: &Connection,
    queue: QueueName,
    publisher: Publisher,
    dead_letter: Option<DeadLetterTarget>,
    options: &ConsumeOptions,
    mut replaced: tokio::sync::watch::Receiver<u64>,
) -> Result<DeliveryStream, BrokerError> {
    replaced.mark_unchanged();
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| broker_error(e, &queue))?;
    channel
        .basic_qos(options.prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| broker_error(e, &queue))?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker_error(e, &queue))?;
    let shared = Arc::new(ConsumerShared {
        queue,
        publisher,
        dead_letter,
        channel: channel.clone(),
        replaced: replaced.clone(),
    });
    let guard = Guard {
        channel,
        consumer: Some(consumer),
    };
    let stream = futures_util::stream::unfold(
        (guard, shared, replaced),
        |(mut guard, shared, mut replaced)| async move {
            loop {
                let consumer = guard.consumer.as_mut()?;
                let next = tokio::select! {
                    next = consumer.next() => next?,
                    // The connection was replaced: this consumer is gone with the old one.
                    changed = replaced.changed() => {
                        guard.consumer = None;
                        let error = BrokerError::Connection("the connection was replaced; consume again".into());
                        return changed.ok().map(|()| (Err(error), (guard, shared, replaced)));
                    }
                };
                match next {
                    Ok(delivery) => {
                        let (mut message, attempt) =
                            wire::decode(&delivery.properties, delivery.data, delivery.redelivered);
                        if let Some(remaining) = not_due_yet(&mut message) {
                            hop(&shared, &message, attempt, remaining, &delivery.acker).await;
                            continue;
                        }
                        let acknowledger = AmqpAcknowledger {
                            acker: delivery.acker,
                            shared: Arc::clone(&shared),
                        };
                        let delivery = Delivery::new(
                            message,
                            attempt,
                            shared.queue.clone(),
                            Box::new(acknowledger),
                        );
                        return Some((Ok(delivery), (guard, shared, replaced)));
                    }
                    Err(error) => {
                        // lapin recovers the connection and replays this consumer; deliveries
                        // from before the loss can no longer be acked (RabbitMQ redelivers them).
                        tracing::warn!(queue = %shared.queue, %error, "consumer interrupted; waiting for recovery");
                        if let Err(error) = guard.channel.wait_for_recovery(error).await {
                            let error = broker_error(error, &shared.queue);
                            return Some((Err(error), (guard, shared, replaced)));
                        }
                        tracing::info!(queue = %shared.queue, "consumer recovered");
                    }
                }
            }
        },
    );
    Ok(stream.boxed())
}
