//! Consuming: a channel per consumer with `basic.qos` prefetch and manual acks, turning each
//! lapin delivery into a longshore [`Delivery`]. The stream only yields deliveries: a
//! message that is not due yet is sent on by a task of its own, and deliveries of a
//! connection that died are dropped, never started (RabbitMQ redelivers them).

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use longshore_core::spi::{ConsumeOptions, Delivery, DeliveryStream};
use longshore_core::{BrokerError, QueueName};

use crate::acks::Acks;
use crate::connection::Live;
use crate::error::broker_error;
use crate::receiver::{Receiver, replaced};
use crate::settle::{AmqpAcknowledger, send_on};
use crate::{DeadLetterTarget, delay, wire};

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
            if !channel.status().connected() {
                return;
            }
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

pub(crate) async fn consume(
    live: &Live,
    queue: QueueName,
    dead_letter: Option<DeadLetterTarget>,
    options: &ConsumeOptions,
    current: tokio::sync::watch::Receiver<u64>,
) -> Result<DeliveryStream, BrokerError> {
    let channel = live
        .connection
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
    let generation = live.generation;
    let receiver = Arc::new(Receiver {
        queue,
        publisher: live.publisher.clone(),
        dead_letter,
        channel: channel.clone(),
        generation,
        current: current.clone(),
        acks: Acks::start(channel.clone(), current.clone(), generation),
    });
    Ok(Deliveries {
        guard: Guard {
            channel,
            consumer: Some(consumer),
        },
        receiver,
        replaced: Box::pin(replaced(current, generation)),
    }
    .boxed())
}

/// The stream of deliveries to start: written out rather than built with `unfold`, which
/// moved its state and every delivery through a fresh future per item.
struct Deliveries {
    guard: Guard,
    receiver: Arc<Receiver>,
    /// Ready once the link's connection is no longer this consumer's: made once per
    /// stream, not once per delivery.
    replaced: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Stream for Deliveries {
    type Item = Result<Delivery, BrokerError>;

    /// The next delivery to start; `None` once the consumer is cancelled; an error ends the
    /// stream (the worker consumes again, on the next connection).
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let receiver = &this.receiver;
        loop {
            let Some(consumer) = this.guard.consumer.as_mut() else {
                return Poll::Ready(None);
            };
            let next = match consumer.poll_next_unpin(cx) {
                Poll::Ready(Some(next)) => next,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    // The connection was replaced: this consumer is gone with the old one.
                    if this.replaced.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(this.replaced_error())));
                    }
                    return Poll::Pending;
                }
            };
            let delivery = match next {
                Ok(delivery) => delivery,
                Err(error) => {
                    this.guard.consumer = None;
                    tracing::warn!(queue = %receiver.queue, %error, "consumer interrupted; consuming again once the connection is back");
                    return Poll::Ready(Some(Err(broker_error(error, &receiver.queue))));
                }
            };
            if !receiver.is_live() || !delivery.acker.usable() {
                // Its connection died while it waited in lapin's buffer: it cannot be acked,
                // and RabbitMQ redelivers it; starting it would run it twice.
                tracing::debug!(queue = %receiver.queue, "dropping a delivery of a closed connection");
                if *receiver.current.borrow() != receiver.generation {
                    return Poll::Ready(Some(Err(this.replaced_error())));
                }
                continue;
            }
            // Every delivery read is in the book, so a coalesced ack never reaches past one
            // whose job (or hop) has not finished.
            receiver.acks.open(delivery.delivery_tag);
            let (mut message, attempt) =
                wire::decode(&delivery.properties, delivery.data, delivery.redelivered);
            if let Some(remaining) = delay::not_due_yet(&mut message) {
                tokio::spawn(send_on(
                    Arc::clone(receiver),
                    message,
                    attempt,
                    remaining,
                    delivery.acker,
                    delivery.delivery_tag,
                ));
                continue;
            }
            let acknowledger = AmqpAcknowledger {
                acker: delivery.acker,
                tag: delivery.delivery_tag,
                settled: std::sync::atomic::AtomicBool::new(false),
                receiver: Arc::clone(receiver),
            };
            return Poll::Ready(Some(Ok(Delivery::new(
                message,
                attempt,
                receiver.queue.clone(),
                acknowledger,
            ))));
        }
    }
}

impl Deliveries {
    fn replaced_error(&mut self) -> BrokerError {
        self.guard.consumer = None;
        BrokerError::Connection("the connection was replaced; consume again".into())
    }
}
