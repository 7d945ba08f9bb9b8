//! Publishing: the shared confirm-mode channel, and how a message becomes an AMQP publish.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use longshore_core::spi::{Message, headers};
use longshore_core::{Attempt, BrokerError, MessageId, QueueName};

use crate::error::broker_error;
use crate::{delay, wire};

/// The shared publishing channel, in confirm mode: every publish returns only once the
/// broker has the message, and a mandatory publish that routes nowhere is an error.
#[derive(Clone)]
pub(crate) struct Publisher {
    channel: Channel,
}

/// One message to publish.
#[derive(Clone)]
pub(crate) struct Outgoing<'a> {
    pub(crate) exchange: &'a str,
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) properties: BasicProperties,
    /// For errors: the message and the queue it was meant for.
    pub(crate) message_id: &'a MessageId,
    pub(crate) queue: &'a QueueName,
}

impl Publisher {
    pub(crate) async fn open(connection: &Connection) -> Result<Self, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| BrokerError::Connection(Box::new(e)))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| BrokerError::Connection(Box::new(e)))?;
        Ok(Self { channel })
    }

    /// The channel.
    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes with `mandatory` set and waits for the broker's confirm. A message the
    /// broker returns (no route) is [`BrokerError::QueueNotFound`]; a connection that is
    /// gone is a transient [`BrokerError::Connection`] ([`crate::connection::Link::publish`]
    /// tries again on the next connection).
    pub(crate) async fn publish(&self, out: Outgoing<'_>) -> Result<(), BrokerError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let sent = self
            .channel
            .basic_publish(
                out.exchange.into(),
                out.routing_key.into(),
                options,
                out.body,
                out.properties,
            )
            .await;
        let confirmed = match sent {
            Ok(confirm) => confirm.await,
            Err(error) => Err(error),
        };
        match confirmed {
            Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(BrokerError::QueueNotFound {
                queue: out.queue.clone(),
            }),
            Ok(Confirmation::Nack(_)) => Err(BrokerError::Refused {
                message_id: out.message_id.clone(),
            }),
            Err(error) => Err(broker_error(error, out.queue)),
        }
    }

    /// Publishes `message` for `queue` as delivery number `attempt`, after `delay` (through
    /// the ladder, in hops past its reach).
    pub(crate) async fn publish_message(
        &self,
        queue: &QueueName,
        message: &Message,
        attempt: Attempt,
        delay: std::time::Duration,
    ) -> Result<(), BrokerError> {
        let route = delay::route(queue, &message.id, delay)?;
        self.publish(outgoing(queue, message, attempt, &route))
            .await
    }
}

/// The publish of `message` along `route`.
pub(crate) fn outgoing<'a>(
    queue: &'a QueueName,
    message: &'a Message,
    attempt: Attempt,
    route: &'a delay::Route,
) -> Outgoing<'a> {
    let due_at = route.due_at.clone().map(|due| (headers::DUE_AT, due));
    Outgoing {
        exchange: &route.exchange,
        routing_key: &route.routing_key,
        body: &message.body,
        properties: wire::encode(message, attempt, due_at.as_slice()),
        message_id: &message.id,
        queue,
    }
}
