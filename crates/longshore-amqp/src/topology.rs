//! Topology: declaring or verifying the work queue, its dead-letter target and the delay
//! ladder; queue statistics; deleting.

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use longshore_core::{BrokerError, QueueName, QueueOptions, QueueStats};

use crate::delay;
use crate::error::broker_error;
use crate::{AmqpOptions, DeadLetterTarget, QueueType};

/// Runs `operation` on a channel of its own, closed afterwards: a failed passive declare
/// closes its channel, and must not take the shared ones down with it.
pub(crate) async fn on_fresh_channel<T, F, Fut>(
    connection: &Connection,
    queue: &QueueName,
    operation: F,
) -> Result<T, BrokerError>
where
    F: FnOnce(Channel) -> Fut,
    Fut: Future<Output = Result<T, lapin::Error>>,
{
    let channel = connection
        .create_channel()
        .await
        .map_err(|error| broker_error(error, queue))?;
    let result = operation(channel.clone()).await;
    if channel.status().connected() {
        let _ = channel.close(200, "done".into()).await;
    }
    result.map_err(|error| broker_error(error, queue))
}

fn check_name(queue: &QueueName) -> Result<(), BrokerError> {
    if queue.as_str().contains(['*', '#']) || queue.as_str().is_empty() {
        return Err(BrokerError::Topology {
            queue: queue.clone(),
            problem:
                "AMQP queue names used with longshore must be non-empty and contain no `*` or `#` \
                      (the delay queues route by queue name)"
                    .into(),
        });
    }
    Ok(())
}

fn table(entries: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in entries {
        table.insert(ShortString::from(name), value);
    }
    table
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Queue arguments for a work queue or dead-letter queue of this type.
fn type_arguments(options: &AmqpOptions) -> Vec<(&'static str, AMQPValue)> {
    match options.queue_type {
        QueueType::Classic => vec![("x-queue-type", string("classic"))],
        // State the delivery limit: RabbitMQ 4 otherwise applies a default of 20.
        QueueType::Quorum => vec![
            ("x-queue-type", string("quorum")),
            (
                "x-delivery-limit",
                AMQPValue::LongLongInt(i64::from(options.delivery_limit)),
            ),
        ],
    }
}

/// Declares the delay ladder (idempotent; longshore's own exchanges and queues).
pub(crate) async fn declare_ladder(connection: &Connection) -> Result<(), BrokerError> {
    let ladder = QueueName::new(delay::entry_exchange());
    on_fresh_channel(connection, &ladder, |channel| async move {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                delay::DELIVERY_EXCHANGE.into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        for level in 0..delay::LEVELS {
            let name = delay::level_name(level);
            let next = delay::next_exchange(level);
            channel
                .exchange_declare(
                    name.as_str().into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await?;
            let arguments = table(vec![
                ("x-queue-type", string("classic")),
                ("x-message-ttl", AMQPValue::LongLongInt(1i64 << level)),
                ("x-dead-letter-exchange", string(&next)),
            ]);
            channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions::durable(),
                    arguments,
                )
                .await?;
            let (to_queue, onward) = delay::level_patterns(level);
            channel
                .queue_bind(
                    name.as_str().into(),
                    name.as_str().into(),
                    to_queue.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            channel
                .exchange_bind(
                    next.as_str().into(),
                    name.as_str().into(),
                    onward.into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    })
    .await
}

/// Whether the delay ladder is declared: its entry exchange, its delivery exchange and the
/// queue of its lowest level exist.
pub(crate) async fn ladder_declared(connection: &Connection) -> Result<bool, BrokerError> {
    let entry = delay::entry_exchange();
    let probe = QueueName::new(&entry);
    for exchange in [entry.as_str(), delay::DELIVERY_EXCHANGE] {
        match exchange_exists(connection, exchange, &probe).await {
            Ok(()) => {}
            Err(BrokerError::QueueNotFound { .. }) => return Ok(false),
            Err(other) => return Err(other),
        }
    }
    match queue_exists(connection, &QueueName::new(delay::level_name(0))).await {
        Ok(_) => Ok(true),
        Err(BrokerError::QueueNotFound { .. }) => Ok(false),
        Err(other) => Err(other),
    }
}

/// Routes messages leaving the ladder for `queue` into it.
async fn bind_delivery(connection: &Connection, queue: &QueueName) -> Result<(), BrokerError> {
    on_fresh_channel(connection, queue, |channel| async move {
        channel
            .queue_bind(
                queue.as_str().into(),
                delay::DELIVERY_EXCHANGE.into(),
                delay::delivery_pattern(queue.as_str()).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    })
    .await
}

/// Declares the work queue and, unless a target is configured or none is wanted, its
/// dead-letter queue `<queue>.dlq`, which the work queue's own DLX points at (so RabbitMQ's
/// own dead-lettering, such as a quorum delivery limit, lands there too).
pub(crate) async fn declare(
    connection: &Connection,
    queue: &QueueName,
    core: &QueueOptions,
    options: &AmqpOptions,
) -> Result<Option<DeadLetterTarget>, BrokerError> {
    check_name(queue)?;
    let configured = options.dead_letter_targets.get(queue).cloned();
    let target = match configured {
        Some(target) => Some(target),
        None if core.dead_letter_queue => Some(DeadLetterTarget::queue(&queue.dead_letter_queue())),
        None => None,
    };
    let mut arguments = type_arguments(options);
    if let Some(target) = &target {
        arguments.push(("x-dead-letter-exchange", string(&target.exchange)));
        if let Some(key) = &target.routing_key {
            arguments.push(("x-dead-letter-routing-key", string(key)));
        }
    }
    if core.dead_letter_queue && !options.dead_letter_targets.contains_key(queue) {
        let dlq = queue.dead_letter_queue();
        let dlq_arguments = table(
            type_arguments(options)
                .into_iter()
                .filter(|(k, _)| *k != "x-delivery-limit")
                .collect(),
        );
        let name: lapin::types::ShortString = dlq.as_str().into();
        on_fresh_channel(connection, &dlq, |channel| async move {
            channel
                .queue_declare(name, QueueDeclareOptions::durable(), dlq_arguments)
                .await
        })
        .await?;
    }
    let arguments = table(arguments);
    on_fresh_channel(connection, queue, |channel| async move {
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await
    })
    .await?;
    bind_delivery(connection, queue).await?;
    Ok(target)
}

pub(crate) async fn queue_exists(
    connection: &Connection,
    queue: &QueueName,
) -> Result<u32, BrokerError> {
    on_fresh_channel(connection, queue, |channel| async move {
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(declared.message_count())
    })
    .await
}

async fn exchange_exists(
    connection: &Connection,
    exchange: &str,
    queue: &QueueName,
) -> Result<(), BrokerError> {
    on_fresh_channel(connection, queue, |channel| async move {
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
    })
    .await
}

/// Finds an existing queue's dead-letter target: the exchange configured for it, else
/// `<queue>.dlq` if that queue exists, else `None`. AMQP cannot read a queue's arguments,
/// so a queue whose DLX is elsewhere must have it configured.
pub(crate) async fn find_target(
    connection: &Connection,
    queue: &QueueName,
    options: &AmqpOptions,
) -> Result<Option<DeadLetterTarget>, BrokerError> {
    check_name(queue)?;
    queue_exists(connection, queue).await?;
    if let Some(target) = options.dead_letter_targets.get(queue) {
        if !target.exchange.is_empty() {
            exchange_exists(connection, &target.exchange, queue)
                .await
                .map_err(|error| match error {
                    BrokerError::QueueNotFound { .. } => BrokerError::Topology {
                        queue: queue.clone(),
                        problem: format!(
                            "its dead-letter exchange `{}` does not exist",
                            target.exchange
                        ),
                    },
                    other => other,
                })?;
        }
        return Ok(Some(target.clone()));
    }
    let dlq = queue.dead_letter_queue();
    match queue_exists(connection, &dlq).await {
        Ok(_) => Ok(Some(DeadLetterTarget::queue(&dlq))),
        Err(BrokerError::QueueNotFound { .. }) => Ok(None),
        Err(other) => Err(other),
    }
}

/// Checks an existing queue without changing it: it must exist and have a dead-letter
/// target longshore knows (see [`find_target`]).
pub(crate) async fn verify(
    connection: &Connection,
    queue: &QueueName,
    options: &AmqpOptions,
) -> Result<DeadLetterTarget, BrokerError> {
    let Some(target) = find_target(connection, queue, options).await? else {
        let dlq = queue.dead_letter_queue();
        return Err(BrokerError::Topology {
            queue: queue.clone(),
            problem: format!(
                "longshore does not know where to dead-letter its messages: configure its \
                 dead-letter exchange (`AmqpBroker::builder(url).dead_letter_exchange(\"{queue}\", \
                 \"<its x-dead-letter-exchange>\", None)`), or create the queue `{dlq}`"
            ),
        });
    };
    bind_delivery(connection, queue).await?;
    Ok(target)
}

/// Ready messages in the queue and in its `<queue>.dlq` (RabbitMQ counts neither unacked
/// nor delayed messages per queue, so those are `None`).
pub(crate) async fn stats(
    connection: &Connection,
    queue: &QueueName,
    target: Option<&DeadLetterTarget>,
) -> Result<QueueStats, BrokerError> {
    let ready = queue_exists(connection, queue).await?;
    let dead_lettered = match target.and_then(DeadLetterTarget::queue_name) {
        Some(dlq) => Some(u64::from(queue_exists(connection, &dlq).await?)),
        None => None,
    };
    Ok(QueueStats {
        ready: u64::from(ready),
        delayed: None,
        in_flight: None,
        dead_lettered,
    })
}

/// Deletes the queue and its `<queue>.dlq`; the shared delay ladder stays.
pub(crate) async fn delete(connection: &Connection, queue: &QueueName) -> Result<(), BrokerError> {
    delete_queues(connection, &[queue.clone(), queue.dead_letter_queue()]).await
}

/// Deletes queues, each on a channel of its own (deleting a missing queue is no error).
pub(crate) async fn delete_queues(
    connection: &Connection,
    queues: &[QueueName],
) -> Result<(), BrokerError> {
    for name in queues {
        let amqp_name: ShortString = name.as_str().into();
        on_fresh_channel(connection, name, |channel| async move {
            channel
                .queue_delete(amqp_name, QueueDeleteOptions::default())
                .await
        })
        .await?;
    }
    Ok(())
}
