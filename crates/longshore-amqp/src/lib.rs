//! longshore's RabbitMQ adapter, on [lapin](https://docs.rs/lapin).
//!
//! It maps longshore's vocabulary to RabbitMQ's own mechanics:
//!
//! | longshore | RabbitMQ |
//! | --- | --- |
//! | prefetch | `basic.qos` on the consumer's channel, manual acks |
//! | `ack` | `basic.ack`, coalesced: a run of finished deliveries is one `multiple=true` ack (see `acks.rs`) |
//! | `release` | `basic.nack(requeue=true)` |
//! | `retry(delay)` | republish through the delay ladder (TTL queues, see [`delay`]) with `longshore-attempt` + 1, publisher-confirmed, then `basic.ack` |
//! | `dead_letter(reason)` | publish to the queue's dead-letter target with `longshore-dead-*` headers, confirmed, then `basic.ack` |
//! | `extend` | nothing: a delivery is held for the life of its channel |
//! | publish | `basic.publish` with `mandatory` and publisher confirms: returns once the broker has it; no route is an error |
//! | attempt | `longshore-attempt` header plus `x-delivery-count` (quorum) or the redelivered flag |
//!
//! Connecting is bounded ([`AmqpBrokerBuilder::connect_timeout`], 30 s by default), each
//! failed try logged with its cause. After that, a lost connection is replaced by one
//! supervisor (reconnect with backoff, for as long as it takes), and the worker consumes
//! again on the new connection: one connection and one consumer per worker, always.
//! Deliveries of the dead connection cannot be acked any more; they are never started, and
//! RabbitMQ redelivers them.
//!
//! ```no_run
//! use longshore_amqp::{AmqpBroker, QueueType};
//!
//! # async fn run() -> Result<(), longshore_core::BrokerError> {
//! let broker = AmqpBroker::builder("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .queue_type(QueueType::Quorum)
//!     // A queue someone else declared, whose x-dead-letter-exchange is `billing-dlx`:
//!     .dead_letter_exchange("billing", "billing-dlx", None)
//!     .connect()
//!     .await?;
//! # let _ = broker; Ok(()) }
//! ```

mod acks;
mod connection;
mod consume;
mod dead_letters;
mod delay;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod publish;
mod receiver;
mod schedule;
mod settle;
mod topology;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use longshore_core::check::{DeadLetterTarget as CheckedTarget, QueueFacts};
use longshore_core::dead_letters::DeadLetters;
use longshore_core::spi::{
    ConsumeOptions, DeliveryStream, Message, ScheduleInfo, ScheduleKey, ScheduleLease,
    ScheduleStore,
};
use longshore_core::{
    Attempt, Broker, BrokerError, BrokerUrl, QueueName, QueueOptions, QueueStats,
};
use tokio::sync::OnceCell;

use connection::Link;

/// How long `consume` waits for a connection that is being replaced.
const CONSUME_WAIT: Duration = Duration::from_secs(10);

/// The kind of queue longshore declares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    /// A classic durable queue.
    #[default]
    Classic,
    /// A quorum queue (replicated; counts deliveries in `x-delivery-count`).
    Quorum,
}

/// Where a queue's dead letters go: an exchange and the routing key to publish with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterTarget {
    /// The exchange (`""` is the default exchange, which routes by queue name).
    pub exchange: String,
    /// The routing key; `None` keeps the work queue's name, as RabbitMQ does when a queue has
    /// no `x-dead-letter-routing-key`.
    pub routing_key: Option<String>,
}

impl DeadLetterTarget {
    /// The queue `dlq`, through the default exchange.
    pub fn queue(dlq: &QueueName) -> Self {
        Self {
            exchange: String::new(),
            routing_key: Some(dlq.to_string()),
        }
    }

    /// The queue it lands in, when it is a queue through the default exchange.
    pub fn queue_name(&self) -> Option<QueueName> {
        match (&*self.exchange, &self.routing_key) {
            ("", Some(key)) => Some(QueueName::new(key)),
            _ => None,
        }
    }
}

/// RabbitMQ-specific settings.
#[derive(Clone, Debug)]
pub struct AmqpOptions {
    queue_type: QueueType,
    delivery_limit: u32,
    dead_letter_targets: HashMap<QueueName, DeadLetterTarget>,
}

impl Default for AmqpOptions {
    fn default() -> Self {
        Self {
            queue_type: QueueType::Classic,
            delivery_limit: 20,
            dead_letter_targets: HashMap::new(),
        }
    }
}

/// Builds an [`AmqpBroker`].
#[derive(Debug)]
pub struct AmqpBrokerBuilder {
    url: BrokerUrl,
    options: AmqpOptions,
    connect_timeout: Duration,
    ca: Option<String>,
}

impl AmqpBrokerBuilder {
    /// The type of queue to declare. Default: classic.
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.options.queue_type = queue_type;
        self
    }

    /// For quorum queues: deliveries (crashes, releases) before RabbitMQ dead-letters a
    /// message itself (`x-delivery-limit`). Default: 20, stated explicitly.
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.options.delivery_limit = limit;
        self
    }

    /// Dead-letters `queue`'s messages to `exchange` (its `x-dead-letter-exchange`), with
    /// `routing_key` or the queue's name. Needed to plug into a queue whose DLX is not
    /// `<queue>.dlq`: AMQP cannot read a queue's arguments.
    pub fn dead_letter_exchange(
        mut self,
        queue: impl Into<QueueName>,
        exchange: impl Into<String>,
        routing_key: Option<String>,
    ) -> Self {
        self.options.dead_letter_targets.insert(
            queue.into(),
            DeadLetterTarget {
                exchange: exchange.into(),
                routing_key,
            },
        );
        self
    }

    /// How long [`connect`](Self::connect) keeps trying before it fails, naming the host,
    /// the port and the cause. Default: 30 s. (Reconnecting after a successful start is
    /// never given up.)
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Trusts this certificate authority (PEM, one or more certificates) for `amqps://`,
    /// besides the system's: for a RabbitMQ whose certificate your own CA signed. Without
    /// it, the PEM file named by `LONGSHORE_AMQP_CA_FILE` is used when that is set.
    pub fn tls_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Connects and opens the confirm-mode publishing channel; a lost connection is
    /// replaced from then on.
    pub async fn connect(self) -> Result<AmqpBroker, BrokerError> {
        let ca = match self.ca {
            Some(pem) => Some(pem),
            None => match std::env::var_os("LONGSHORE_AMQP_CA_FILE") {
                Some(path) => Some(std::fs::read_to_string(&path).map_err(|error| {
                    BrokerError::Connection(
                        format!(
                            "cannot read LONGSHORE_AMQP_CA_FILE `{}`: {error}",
                            std::path::Path::new(&path).display()
                        )
                        .into(),
                    )
                })?),
                None => None,
            },
        };
        let link = Link::open(self.url.clone(), ca, self.connect_timeout).await?;
        tracing::info!(url = %self.url, "connected to RabbitMQ");
        Ok(AmqpBroker {
            inner: Arc::new(Inner {
                url: self.url,
                link,
                options: self.options,
                ladder: OnceCell::new(),
                targets: Mutex::default(),
                leases: schedule::Leases::default(),
            }),
        })
    }
}

/// A RabbitMQ broker. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<Inner>,
}

struct Inner {
    url: BrokerUrl,
    /// The connection, kept alive (see [`Link`]).
    link: Arc<Link>,
    options: AmqpOptions,
    ladder: OnceCell<()>,
    /// Dead-letter targets found by declare or verify, per queue.
    targets: Mutex<HashMap<QueueName, Option<DeadLetterTarget>>>,
    /// Schedule leases, on a connection of their own.
    leases: schedule::Leases,
}

impl std::fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("url", &self.inner.url)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// A builder for a broker at `url` (`amqp://user:pass@host:port/vhost`, `amqps://…`).
    pub fn builder(url: impl Into<BrokerUrl>) -> AmqpBrokerBuilder {
        AmqpBrokerBuilder {
            url: url.into(),
            options: AmqpOptions::default(),
            connect_timeout: Duration::from_secs(30),
            ca: None,
        }
    }

    /// Connects to `url` with default settings.
    pub async fn connect(url: impl Into<BrokerUrl>) -> Result<Self, BrokerError> {
        Self::builder(url).connect().await
    }

    async fn ladder(&self) -> Result<(), BrokerError> {
        self.inner
            .ladder
            .get_or_try_init(|| async {
                let live = self.inner.link.live();
                topology::declare_ladder(&live.connection).await
            })
            .await
            .map(|_| ())
    }

    fn remember(&self, queue: &QueueName, target: Option<DeadLetterTarget>) {
        self.inner
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.clone(), target);
    }

    /// The dead-letter target of `queue`: the one declare or verify found, else looked up
    /// now (a queue without one can still be consumed; dead-lettering from it fails).
    async fn target(&self, queue: &QueueName) -> Result<Option<DeadLetterTarget>, BrokerError> {
        let known = self
            .inner
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
            .cloned();
        match known {
            Some(target) => Ok(target),
            None => {
                let target = topology::find_target(
                    &self.inner.link.live().connection,
                    queue,
                    &self.inner.options,
                )
                .await?;
                self.remember(queue, target.clone());
                Ok(target)
            }
        }
    }

    /// Whether this broker declared or verified `queue` (so it exists).
    fn is_known(&self, queue: &QueueName) -> bool {
        self.inner
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(queue)
    }

    fn target_known(&self, queue: &QueueName) -> Result<Option<DeadLetterTarget>, BrokerError> {
        Ok(self
            .inner
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
            .cloned()
            .flatten())
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn system(&self) -> &'static str {
        "rabbitmq"
    }

    async fn declare(&self, queue: &QueueName, options: &QueueOptions) -> Result<(), BrokerError> {
        self.ladder().await?;
        let target = topology::declare(
            &self.inner.link.live().connection,
            queue,
            options,
            &self.inner.options,
        )
        .await?;
        self.remember(queue, target);
        Ok(())
    }

    async fn verify(&self, queue: &QueueName) -> Result<(), BrokerError> {
        self.ladder().await?;
        let target = topology::verify(
            &self.inner.link.live().connection,
            queue,
            &self.inner.options,
        )
        .await?;
        self.remember(queue, Some(target));
        Ok(())
    }

    async fn publish(&self, queue: &QueueName, message: Message) -> Result<(), BrokerError> {
        let delay = message.delay.unwrap_or_default();
        if !delay.is_zero() {
            self.ladder().await?;
            // A delayed message routes to a delay queue whatever the target: check the
            // target exists now, not when the delay ends (once: a queue this broker
            // declared or verified is known to exist).
            if !self.is_known(queue) {
                self.stats(queue).await?;
            }
        }
        let route = delay::route(queue, &message.id, delay)?;
        self.inner
            .link
            .publish(|live| {
                let out = publish::outgoing(queue, &message, Attempt::FIRST, &route);
                async move { live.publisher.publish(out).await }
            })
            .await
    }

    async fn consume(
        &self,
        queue: &QueueName,
        options: &ConsumeOptions,
    ) -> Result<DeliveryStream, BrokerError> {
        let dead_letter = self.target(queue).await?;
        let live = self.inner.link.connected(CONSUME_WAIT).await?;
        consume::consume(
            &live,
            queue.clone(),
            dead_letter,
            options,
            self.inner.link.generation(),
        )
        .await
    }

    async fn delete(&self, queue: &QueueName) -> Result<(), BrokerError> {
        self.inner
            .targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(queue);
        topology::delete(&self.inner.link.live().connection, queue).await
    }

    fn dead_letter_queue(&self, queue: &QueueName) -> QueueName {
        self.target_known(queue)
            .ok()
            .flatten()
            .and_then(|target| target.queue_name())
            .unwrap_or_else(|| queue.dead_letter_queue())
    }

    fn is_connected(&self) -> bool {
        self.inner.link.live().connection.status().connected()
    }

    fn schedules(&self) -> Option<&dyn ScheduleStore> {
        Some(self)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    async fn inspect(&self, queue: &QueueName) -> Result<QueueFacts, BrokerError> {
        let connection = &self.inner.link.live().connection;
        let dead_letters =
            match topology::find_target(connection, queue, &self.inner.options).await? {
                Some(target) => match target.queue_name() {
                    Some(dlq) => CheckedTarget::Queue(dlq),
                    None => CheckedTarget::Queue(QueueName::new(format!(
                        "(exchange `{}`)",
                        target.exchange
                    ))),
                },
                None => CheckedTarget::Missing(format!(
                    "no dead-letter exchange is configured for it and `{}` does not exist",
                    queue.dead_letter_queue()
                )),
            };
        let max_receive_count = (self.inner.options.queue_type == QueueType::Quorum)
            .then_some(self.inner.options.delivery_limit);
        let mut facts = QueueFacts::default();
        facts.max_receive_count = max_receive_count;
        facts.dead_letters = dead_letters;
        facts.delay_queues = Some(topology::ladder_declared(connection).await?);
        Ok(facts)
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats, BrokerError> {
        let target = self
            .target_known(queue)?
            .or_else(|| Some(DeadLetterTarget::queue(&queue.dead_letter_queue())));
        match topology::stats(&self.inner.link.live().connection, queue, target.as_ref()).await {
            // The `<queue>.dlq` guess may not exist for a queue with its own DLX.
            Err(BrokerError::QueueNotFound { queue: missing }) if &missing != queue => {
                topology::stats(&self.inner.link.live().connection, queue, None).await
            }
            other => other,
        }
    }
}

#[async_trait]
impl ScheduleStore for AmqpBroker {
    async fn lease(
        &self,
        key: &ScheduleKey,
    ) -> Result<Option<Box<dyn ScheduleLease>>, BrokerError> {
        self.inner.leases.take(self.inner.link.nodes(), key).await
    }

    async fn delete(&self, key: &ScheduleKey) -> Result<(), BrokerError> {
        schedule::delete(&self.inner.link.live().connection, key).await
    }

    async fn list(&self, queue: &QueueName) -> Result<Vec<ScheduleInfo>, BrokerError> {
        schedule::list(&self.inner.link.live().connection, queue).await
    }
}
