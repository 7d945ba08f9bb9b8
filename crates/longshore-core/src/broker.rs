//! The [`Broker`] trait every adapter implements, and its options, statistics and errors.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::check::{DeadLetterTarget, QueueFacts};
use crate::dead_letters::DeadLetters;
use crate::delivery::Delivery;
use crate::message::Message;
use crate::names::{MessageId, QueueName};
use crate::schedule::ScheduleStore;

/// A boxed error from a broker client or user code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The deliveries of one consumer, in the order the broker hands them out.
///
/// Dropping the stream stops consuming; deliveries the broker buffered for it and that were
/// not yet yielded go back to the queue.
pub type DeliveryStream = BoxStream<'static, Result<Delivery, BrokerError>>;

/// A message broker, seen through longshore's vocabulary.
///
/// Object-safe: the runtime holds an `Arc<dyn Broker>` and never knows which broker it is.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The OpenTelemetry `messaging.system` value: `memory`, `rabbitmq` or `aws_sqs`.
    fn system(&self) -> &'static str;

    /// Creates the queue and what it needs (its dead-letter queue, delay queues), or checks
    /// that what exists matches; idempotent.
    async fn declare(&self, queue: &QueueName, options: &QueueOptions) -> Result<(), BrokerError>;

    /// Checks, without creating anything, that the queue and its dead-letter target exist.
    async fn verify(&self, queue: &QueueName) -> Result<(), BrokerError>;

    /// Publishes a message; returns once the broker has it (confirmed), or an error if the
    /// queue does not exist. Never a silent drop.
    async fn publish(&self, queue: &QueueName, message: Message) -> Result<(), BrokerError>;

    /// Starts consuming `queue`.
    async fn consume(
        &self,
        queue: &QueueName,
        options: &ConsumeOptions,
    ) -> Result<DeliveryStream, BrokerError>;

    /// Deletes the queue and what longshore declared for it (dead-letter and delay queues),
    /// with their messages. Deleting a missing queue is not an error.
    async fn delete(&self, queue: &QueueName) -> Result<(), BrokerError>;

    /// The queue longshore declares as `queue`'s dead-letter queue (`<queue>.dlq` unless the
    /// broker's naming rules need another form).
    fn dead_letter_queue(&self, queue: &QueueName) -> QueueName {
        queue.dead_letter_queue()
    }

    /// After how many deliveries the broker itself dead-letters a message of `queue` (an SQS
    /// redrive policy's `maxReceiveCount`, a quorum queue's delivery limit), if it does and
    /// it is known (after `declare` or `verify`).
    fn max_receive_count(&self, _queue: &QueueName) -> Option<u32> {
        None
    }

    /// How many messages the queue holds, by state.
    async fn stats(&self, queue: &QueueName) -> Result<QueueStats, BrokerError>;

    /// Whether the broker answers now, for readiness probes: the connection is up (AMQP),
    /// the last receive call got an answer (SQS). Default: `true`.
    fn is_connected(&self) -> bool {
        true
    }

    /// Where the broker keeps cron schedules' leases and watermarks, if it can (see
    /// [`crate::schedule`]). A worker with schedules on a broker without it fails to build.
    fn schedules(&self) -> Option<&dyn ScheduleStore> {
        None
    }

    /// What the broker offers for dead letters (browse, redrive, purge), if it can.
    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        None
    }

    /// The queues the broker holds, where it can list them (SQS, memory); `None` where it
    /// cannot (RabbitMQ has no listing over AMQP: name the queues).
    async fn list_queues(&self) -> Result<Option<Vec<QueueName>>, BrokerError> {
        Ok(None)
    }

    /// What the broker tells of `queue` for the policy check ([`crate::check`]). Default:
    /// verifies it, and its dead letters go to [`dead_letter_queue`](Self::dead_letter_queue).
    async fn inspect(&self, queue: &QueueName) -> Result<QueueFacts, BrokerError> {
        let dead_letters = match self.verify(queue).await {
            Ok(()) => DeadLetterTarget::Queue(self.dead_letter_queue(queue)),
            Err(BrokerError::Topology { problem, .. }) => DeadLetterTarget::Missing(problem),
            Err(other) => return Err(other),
        };
        Ok(QueueFacts {
            max_receive_count: self.max_receive_count(queue),
            dead_letters,
            ..QueueFacts::default()
        })
    }
}

/// Anything a worker or producer takes as its broker: an adapter (`MemoryBroker`,
/// `AmqpBroker`, `SqsBroker`), an `Arc` of one, or the `Arc<dyn Broker>` that
/// `longshore::connect` returns.
pub trait IntoBroker {
    /// The broker behind a shared pointer.
    fn into_broker(self) -> Arc<dyn Broker>;
}

impl<B: Broker> IntoBroker for B {
    fn into_broker(self) -> Arc<dyn Broker> {
        Arc::new(self)
    }
}

impl<B: Broker> IntoBroker for Arc<B> {
    fn into_broker(self) -> Arc<dyn Broker> {
        self
    }
}

impl IntoBroker for Arc<dyn Broker> {
    fn into_broker(self) -> Arc<dyn Broker> {
        self
    }
}

/// Whether a worker creates its queues or only plugs into existing ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Topology {
    /// Create the work queue, its dead-letter queue and delay queues if missing.
    #[default]
    Declare,
    /// Create nothing; fail at start-up with a clear message when something is missing.
    Verify,
}

/// What a declared queue looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Declare a dead-letter queue (`<queue>.dlq`) for it. Default: true.
    pub dead_letter_queue: bool,
    /// How long a received message stays invisible before redelivery (SQS, memory).
    /// Default: 30 s.
    pub visibility_timeout: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            dead_letter_queue: true,
            visibility_timeout: Duration::from_secs(30),
        }
    }
}

impl QueueOptions {
    /// Sets the visibility timeout.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// Declares (or not) a dead-letter queue.
    pub fn dead_letter_queue(mut self, yes: bool) -> Self {
        self.dead_letter_queue = yes;
        self
    }
}

/// How a consumer receives.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumeOptions {
    /// Deliveries the broker may hand out ahead of settlement (AMQP `basic.qos`, SQS batch
    /// size). The runtime ties it to its concurrency limit.
    pub prefetch: u16,
    /// Lease for each delivery, where the broker leases them (SQS, memory). `None`: the
    /// queue's own visibility timeout.
    pub visibility_timeout: Option<Duration>,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        Self {
            prefetch: 10,
            visibility_timeout: None,
        }
    }
}

impl ConsumeOptions {
    /// Sets the prefetch.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Sets the per-delivery lease.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = Some(timeout);
        self
    }
}

/// How many messages a queue holds, by state; `None` where the broker cannot say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Ready to be delivered now.
    pub ready: u64,
    /// Waiting for a delay to pass.
    pub delayed: Option<u64>,
    /// Delivered and not yet settled.
    pub in_flight: Option<u64>,
    /// In the queue's dead-letter queue.
    pub dead_lettered: Option<u64>,
}

impl QueueStats {
    /// The counts the broker can tell, by state name: `ready`, `delayed`, `in_flight`,
    /// `dead_lettered`.
    pub fn by_state(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("ready", Some(self.ready)),
            ("delayed", self.delayed),
            ("in_flight", self.in_flight),
            ("dead_lettered", self.dead_lettered),
        ]
        .into_iter()
        .filter_map(|(state, count)| Some((state, count?)))
    }

    /// Every message the queue and its dead-letter queue hold, in any state.
    pub fn total(&self) -> u64 {
        self.ready
            + self.delayed.unwrap_or(0)
            + self.in_flight.unwrap_or(0)
            + self.dead_lettered.unwrap_or(0)
    }
}

/// What went wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The queue is missing.
    #[error(
        "queue `{queue}` does not exist; declare it (Topology::Declare) or create it on the broker"
    )]
    QueueNotFound {
        /// The queue.
        queue: QueueName,
    },
    /// The queue exists but lacks something longshore needs, or differs from what was asked.
    #[error("queue `{queue}` does not fit: {problem}")]
    Topology {
        /// The queue.
        queue: QueueName,
        /// What is missing or different, and how to fix it.
        problem: String,
    },
    /// The delivery is no longer ours to settle.
    #[error(
        "message `{message_id}` from queue `{queue}` is no longer held by this worker (its lease expired or its connection closed); the broker redelivers it"
    )]
    LeaseLost {
        /// The queue.
        queue: QueueName,
        /// The message.
        message_id: MessageId,
    },
    /// The message cannot be published as it is.
    #[error("message `{message_id}` cannot be published: {problem}")]
    InvalidMessage {
        /// The message.
        message_id: MessageId,
        /// Why, and how to fix it.
        problem: String,
    },
    /// The broker connection failed or closed; the operation may succeed after reconnecting.
    #[error("broker connection failed: {0}")]
    Connection(#[source] BoxError),
    /// The broker refused to take the message now (a RabbitMQ publisher nack: a quorum
    /// queue electing a leader, or a queue at its length limit that rejects publishes);
    /// trying again later may succeed.
    #[error("the broker refused message `{message_id}` for now (publisher nack); try again later")]
    Refused {
        /// The message.
        message_id: MessageId,
    },
    /// The broker was shut down by this process.
    #[error("the broker client was closed")]
    Closed,
    /// Any other broker or client error.
    #[error("broker error: {0}")]
    Other(#[source] BoxError),
}

impl BrokerError {
    /// Whether retrying the same operation later may succeed (connection trouble, or the
    /// broker refusing a message for now).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Connection(_) | BrokerError::Refused { .. }
        )
    }
}
