//! Dead letters on RabbitMQ. AMQP has no browse: the dead-letter queue is consumed on a
//! channel of its own without acking, and closing that channel hands back everything not
//! acked, in its order (classic queues keep it). A redrive publishes each matching dead
//! letter to the work queue (mandatory, publisher-confirmed, attempt 1, the dead-letter
//! headers taken off) and only then acks it in the dead-letter queue.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use longshore_core::dead_letters::{DeadLetter, DeadLetters, Redrive, RedriveReport};
use longshore_core::{Attempt, BrokerError, QueueName};

use crate::error::broker_error;
use crate::{AmqpBroker, delay, publish, wire};

/// How long a dead letter the broker said is there may take to arrive.
const ARRIVAL: Duration = Duration::from_secs(10);
/// How long `connected` waits for a connection being replaced.
const CONNECTED: Duration = Duration::from_secs(10);

/// A channel consuming `dlq` without acks and without a prefetch limit, and how many
/// messages the queue held when it started.
async fn open(
    broker: &AmqpBroker,
    dlq: &QueueName,
) -> Result<(Channel, Consumer, u32), BrokerError> {
    let live = broker.inner.link.connected(CONNECTED).await?;
    let channel = live
        .connection
        .create_channel()
        .await
        .map_err(|e| broker_error(e, dlq))?;
    let declared = channel
        .queue_declare(
            dlq.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker_error(e, dlq))?;
    channel
        .basic_qos(0, BasicQosOptions::default())
        .await
        .map_err(|e| broker_error(e, dlq))?;
    let consumer = channel
        .basic_consume(
            dlq.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| broker_error(e, dlq))?;
    Ok((channel, consumer, declared.message_count()))
}

async fn next(
    consumer: &mut Consumer,
    dlq: &QueueName,
) -> Result<Option<lapin::message::Delivery>, BrokerError> {
    match tokio::time::timeout(ARRIVAL, consumer.next()).await {
        Ok(Some(Ok(delivery))) => Ok(Some(delivery)),
        Ok(Some(Err(error))) => Err(broker_error(error, dlq)),
        Ok(None) | Err(_) => Ok(None),
    }
}

/// Closes the channel: RabbitMQ requeues what was not acked.
async fn close(channel: Channel) {
    if channel.status().connected() {
        let _ = channel
            .close(200, "longshore: done with the dead letters".into())
            .await;
    }
}

fn letter(delivery: &lapin::message::Delivery) -> DeadLetter {
    let (message, _) = wire::decode(
        &delivery.properties,
        delivery.data.clone(),
        delivery.redelivered,
    );
    DeadLetter::from_message(message)
}

#[async_trait]
impl DeadLetters for AmqpBroker {
    fn dead_letter_queue(&self, queue: &QueueName) -> Result<QueueName, BrokerError> {
        match self.target_known(queue)? {
            Some(target) => target.queue_name().ok_or_else(|| BrokerError::Topology {
                queue: queue.clone(),
                problem: format!(
                    "its dead letters go to exchange `{}`, not straight to a queue: read them from the queue bound to it",
                    target.exchange
                ),
            }),
            None => Ok(queue.dead_letter_queue()),
        }
    }

    async fn browse(
        &self,
        queue: &QueueName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let dlq = DeadLetters::dead_letter_queue(self, queue)?;
        let (channel, mut consumer, count) = open(self, &dlq).await?;
        let mut letters = Vec::new();
        let wanted = limit.min(count as usize);
        let read = async {
            while letters.len() < wanted {
                match next(&mut consumer, &dlq).await? {
                    Some(delivery) => letters.push(letter(&delivery)),
                    None => break,
                }
            }
            Ok::<_, BrokerError>(())
        }
        .await;
        close(channel).await;
        read.map(|()| letters)
    }

    async fn redrive(
        &self,
        queue: &QueueName,
        redrive: &Redrive,
        progress: &(dyn for<'r> Fn(&'r RedriveReport) + Send + Sync),
    ) -> Result<RedriveReport, BrokerError> {
        let dlq = DeadLetters::dead_letter_queue(self, queue)?;
        let (channel, mut consumer, count) = open(self, &dlq).await?;
        let route = delay::route(queue, &"redrive".into(), Duration::ZERO)?;
        let mut report = RedriveReport::default();
        let moved = async {
            for _ in 0..count {
                let Some(delivery) = next(&mut consumer, &dlq).await? else {
                    break;
                };
                let letter = letter(&delivery);
                report.examined += 1;
                let take = redrive.filter.matches(&letter) && redrive.wants_more(report.matched);
                if take {
                    report.matched += 1;
                    report.ids.push(letter.message.id.clone());
                }
                if take && !redrive.dry_run {
                    let revived = letter.revived();
                    self.inner
                        .link
                        .publish(|live| {
                            let out = publish::outgoing(queue, &revived, Attempt::FIRST, &route);
                            async move { live.publisher.publish(out).await }
                        })
                        .await?;
                    delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(|e| broker_error(e, &dlq))?;
                    report.moved += 1;
                    progress(&report);
                    if let Some(pause) = redrive.pause() {
                        tokio::time::sleep(pause).await;
                    }
                } else {
                    // Not acked: handed back, in order, when the channel closes.
                    progress(&report);
                }
            }
            Ok::<_, BrokerError>(())
        }
        .await;
        close(channel).await;
        moved.map(|()| report)
    }

    async fn purge(&self, queue: &QueueName) -> Result<u64, BrokerError> {
        let dlq = DeadLetters::dead_letter_queue(self, queue)?;
        let live = self.inner.link.connected(CONNECTED).await?;
        let channel = live
            .connection
            .create_channel()
            .await
            .map_err(|e| broker_error(e, &dlq))?;
        let purged = channel
            .queue_purge(dlq.as_str().into(), QueuePurgeOptions::default())
            .await
            .map_err(|e| broker_error(e, &dlq));
        close(channel).await;
        purged.map(u64::from)
    }
}
