//! Connection and recovery: connecting by URL with lapin's automatic recovery, the shared
//! confirm-mode publishing channel, and mapping lapin errors to [`BrokerError`].

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use longshore_core::{Attempt, BrokerError, BrokerUrl, Message, MessageId, QueueName, headers};

use crate::{delay, wire};

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

/// One live connection and its publishing channel.
pub(crate) struct Live {
    pub(crate) connection: Connection,
    pub(crate) publisher: Publisher,
}

/// The broker's connection, kept alive: lapin's automatic recovery first, and a fresh
/// connection when that recovery does not bring it back. (lapin 4.12 can leave a connection
/// reset by the peer in `Reconnecting` for good, when the reset arrives before RabbitMQ's
/// close frame: its I/O loop checks for a recovery that its RPC task has not started yet.
/// Seen here in about one broker restart in four.)
pub(crate) struct Link {
    url: BrokerUrl,
    live: std::sync::RwLock<std::sync::Arc<Live>>,
    /// Bumped each time the connection is replaced; consumers of the old one end.
    generation: tokio::sync::watch::Sender<u64>,
}

/// How long a connection may stay down before it is replaced: longer than lapin's own
/// reconnect backoff (at most 5 s between tries), so lapin's recovery has its chance first.
const DEAD_FOR: std::time::Duration = std::time::Duration::from_secs(8);

impl Link {
    pub(crate) async fn open(url: BrokerUrl) -> Result<std::sync::Arc<Self>, BrokerError> {
        let live = Self::connect_live(&url).await?;
        let (generation, _) = tokio::sync::watch::channel(0);
        let link = std::sync::Arc::new(Self {
            url,
            live: std::sync::RwLock::new(std::sync::Arc::new(live)),
            generation,
        });
        tokio::spawn(Self::supervise(std::sync::Arc::downgrade(&link)));
        Ok(link)
    }

    async fn connect_live(url: &BrokerUrl) -> Result<Live, BrokerError> {
        let connection = connect(url).await?;
        let publisher = Publisher::open(&connection).await?;
        Ok(Live {
            connection,
            publisher,
        })
    }

    /// The current connection.
    pub(crate) fn live(&self) -> std::sync::Arc<Live> {
        std::sync::Arc::clone(
            &self
                .live
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Changes when the connection is replaced.
    pub(crate) fn generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Watches the connection; replaces it when it has been down longer than [`DEAD_FOR`].
    async fn supervise(link: std::sync::Weak<Self>) {
        let mut dead_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let Some(link) = link.upgrade() else { return };
            if link.live().connection.status().connected() {
                dead_since = None;
                continue;
            }
            let since = *dead_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() < DEAD_FOR {
                continue;
            }
            tracing::warn!(url = %link.url, "the connection has been down for {DEAD_FOR:?}; opening a new one");
            let mut wait = std::time::Duration::from_millis(200);
            loop {
                match Self::connect_live(&link.url).await {
                    Ok(live) => {
                        *link
                            .live
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            std::sync::Arc::new(live);
                        link.generation.send_modify(|n| *n += 1);
                        tracing::info!(url = %link.url, "reconnected to RabbitMQ");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(url = %link.url, %error, "reconnect failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            }
            dead_since = None;
        }
    }

    /// Publishes on the current connection; if it is lost, waits for it to come back (lapin's
    /// recovery or a replacement) and tries again, for up to a minute.
    pub(crate) async fn publish(&self, out: Outgoing<'_>) -> Result<(), BrokerError> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut generation = self.generation();
        loop {
            let live = self.live();
            match live.publisher.publish(out.clone()).await {
                Err(error) if error.is_transient() && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(%error, "publish failed; waiting for the connection");
                    let _ = tokio::time::timeout_at(
                        deadline
                            .min(tokio::time::Instant::now() + std::time::Duration::from_secs(1)),
                        generation.changed(),
                    )
                    .await;
                }
                other => return other,
            }
        }
    }
}
