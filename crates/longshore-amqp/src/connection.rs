//! Connection and recovery: connecting by URL with lapin's automatic recovery, the shared
//! confirm-mode publishing channel, and mapping lapin errors to [`BrokerError`].

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use longshore_core::{BrokerError, BrokerUrl, MessageId, QueueName};

/// How many times a publish is retried across connection recoveries before it fails.
const PUBLISH_TRIES: usize = 5;

/// Connects with lapin's automatic recovery: on connection loss it reconnects with backoff
/// and replays exchanges, queues, bindings, consumers, QoS and confirm mode.
pub(crate) async fn connect(url: &BrokerUrl) -> Result<Connection, BrokerError> {
    let properties = ConnectionProperties::default()
        .with_connection_name("longshore".into())
        .enable_auto_recover()
        .configure_backoff(|backoff| {
            backoff
                .with_min_delay(std::time::Duration::from_millis(100))
                .with_max_delay(std::time::Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
        });
    Connection::connect(url.expose(), properties)
        .await
        .map_err(|error| {
            BrokerError::Connection(format!("cannot connect to {url}: {error}").into())
        })
}

/// Maps a lapin error; `queue` names the queue the operation was about.
pub(crate) fn broker_error(error: lapin::Error, queue: &QueueName) -> BrokerError {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => BrokerError::QueueNotFound {
                queue: queue.clone(),
            },
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => BrokerError::Topology {
                queue: queue.clone(),
                problem: format!(
                    "it exists with other settings than longshore declares ({}); delete it, or \
                     plug into it as it is with Topology::Verify",
                    amqp.get_message()
                ),
            },
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => BrokerError::Topology {
                queue: queue.clone(),
                problem: format!("the broker refused access ({})", amqp.get_message()),
            },
            _ => BrokerError::Other(Box::new(error)),
        },
        ErrorKind::IOError(_)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::MissingHeartbeatError => BrokerError::Connection(Box::new(error)),
        _ => BrokerError::Other(Box::new(error)),
    }
}

/// The shared publishing channel, in confirm mode: every publish returns only once the
/// broker has the message, and a mandatory publish that routes nowhere is an error.
#[derive(Clone)]
pub(crate) struct Publisher {
    channel: Channel,
}

/// One message to publish.
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

    /// Publishes with `mandatory` set and waits for the broker's confirm, retrying across
    /// connection recoveries. A message the broker returns (no route) is
    /// [`BrokerError::QueueNotFound`].
    pub(crate) async fn publish(&self, out: Outgoing<'_>) -> Result<(), BrokerError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let sent = self
                .channel
                .basic_publish(
                    out.exchange.into(),
                    out.routing_key.into(),
                    options,
                    out.body,
                    out.properties.clone(),
                )
                .await;
            let confirmed = match sent {
                Ok(confirm) => confirm.await,
                Err(error) => Err(error),
            };
            match confirmed {
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => return Ok(()),
                Ok(Confirmation::Ack(Some(_))) => {
                    return Err(BrokerError::QueueNotFound {
                        queue: out.queue.clone(),
                    });
                }
                Ok(Confirmation::Nack(_)) => {
                    return Err(BrokerError::Other(
                        format!(
                            "RabbitMQ refused message `{}` (publisher nack)",
                            out.message_id
                        )
                        .into(),
                    ));
                }
                Err(error) if tries < PUBLISH_TRIES && error.can_be_recovered() => {
                    tracing::warn!(%error, "publish failed; waiting for the connection to recover");
                    if let Err(error) = self.channel.wait_for_recovery(error).await {
                        return Err(broker_error(error, out.queue));
                    }
                }
                Err(error) => return Err(broker_error(error, out.queue)),
            }
        }
    }
}
