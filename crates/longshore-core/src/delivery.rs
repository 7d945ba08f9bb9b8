//! [`Delivery`]: one received message and the only ways it can be settled.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::broker::BrokerError;
use crate::message::Message;
use crate::names::{Attempt, QueueName};

/// How a delivery ends. Each broker adapter maps these to its native operations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// Done; the broker forgets the message. AMQP `basic.ack`; SQS `DeleteMessage` (batched).
    Ack,
    /// Run it again no sooner than `delay`. AMQP: republish to a delay queue (confirmed),
    /// then ack; SQS: `ChangeMessageVisibility` to the delay.
    Retry {
        /// The least time before the next attempt.
        delay: Duration,
    },
    /// Give up: move it to the dead-letter queue with the reason in its headers.
    DeadLetter {
        /// Why, in a sentence a person can act on.
        reason: String,
    },
    /// Hand it back untouched, for shutdown. AMQP `basic.nack(requeue=true)`; SQS visibility 0.
    Release,
}

impl Settlement {
    /// A short lowercase name for logs and metrics: `ack`, `retry`, `dead_letter`, `release`.
    pub fn name(&self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::Retry { .. } => "retry",
            Settlement::DeadLetter { .. } => "dead_letter",
            Settlement::Release => "release",
        }
    }
}

/// The broker side of one delivery, implemented by each adapter.
///
/// [`Delivery`] calls [`settle`](Acknowledger::settle) at most once; adapters need not guard
/// against a second call.
#[async_trait]
pub trait Acknowledger: Send + Sync + 'static {
    /// Settles the delivery of `message` (received as `attempt`) on the broker.
    async fn settle(
        &self,
        message: &Message,
        attempt: Attempt,
        settlement: Settlement,
    ) -> Result<(), BrokerError>;

    /// Keeps the delivery invisible to other consumers for `by` from now (SQS heartbeat).
    /// A no-op where the broker holds the message for the life of the consumer (AMQP).
    async fn extend(&self, by: Duration) -> Result<(), BrokerError>;
}

/// One received message plus what the broker knows of it, settled exactly once.
///
/// Settling consumes the delivery, so a double ack does not compile; a failed settle hands
/// the delivery back inside the [`SettleError`].
pub struct Delivery {
    message: Message,
    attempt: Attempt,
    queue: QueueName,
    lease: Option<(Duration, Instant)>,
    /// The broker waits retries in whole multiples of it (zero: any delay).
    retry_unit: Duration,
    acknowledger: Arc<dyn Acknowledger>,
}

/// What keeps a leased delivery invisible while its job runs: the runtime's heartbeat.
pub(crate) struct Lease {
    acknowledger: Arc<dyn Acknowledger>,
    /// How long each renewal keeps it.
    pub(crate) period: Duration,
    /// When the current lease ends.
    pub(crate) deadline: Instant,
}

impl Lease {
    /// Extends the lease by its period from now.
    pub(crate) async fn renew(&self) -> Result<(), BrokerError> {
        self.acknowledger.extend(self.period).await
    }
}

impl Delivery {
    /// A delivery of `message` from `queue`, the broker's `attempt`-th delivery of it.
    pub fn new(
        message: Message,
        attempt: Attempt,
        queue: QueueName,
        acknowledger: impl Acknowledger,
    ) -> Self {
        Self {
            message,
            attempt,
            queue,
            lease: None,
            retry_unit: Duration::ZERO,
            acknowledger: Arc::new(acknowledger),
        }
    }

    /// Says the broker waits retries in whole multiples of `unit` (SQS: a second, its
    /// visibility timeout's unit). The runtime then draws retry delays in whole units with
    /// the policy's mean, so jitter keeps its spread instead of every short delay rounding
    /// up to the same unit.
    pub fn with_retry_unit(mut self, unit: Duration) -> Self {
        self.retry_unit = unit;
        self
    }

    /// The unit the broker waits retries in ([`Delivery::with_retry_unit`]); zero: any.
    pub fn retry_unit(&self) -> Duration {
        self.retry_unit
    }

    /// Marks the delivery as leased for `lease` (its visibility timeout) from now: the
    /// runtime then extends it while the job runs. Brokers that hold deliveries per consumer
    /// leave it unset.
    pub fn with_lease(self, lease: Duration) -> Self {
        self.with_lease_until(lease, Instant::now() + lease)
    }

    /// Marks the delivery as leased until `deadline`, renewable by `lease` at a time: for a
    /// delivery that waited in a receive buffer, so its first renewal comes in time.
    pub fn with_lease_until(mut self, lease: Duration, deadline: Instant) -> Self {
        self.lease = Some((lease, deadline));
        self
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Which delivery of the message this is, as the broker counts.
    pub fn attempt(&self) -> Attempt {
        self.attempt
    }

    /// The queue it came from.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The visibility timeout it was received with, if the broker leases deliveries.
    pub fn lease(&self) -> Option<Duration> {
        self.lease.map(|(lease, _)| lease)
    }

    /// When the current lease ends, if the broker leases deliveries.
    pub fn lease_deadline(&self) -> Option<Instant> {
        self.lease.map(|(_, deadline)| deadline)
    }

    /// The lease to keep while the job runs, if the broker leases deliveries.
    pub(crate) fn lease_keeper(&self) -> Option<Lease> {
        self.lease.map(|(period, deadline)| Lease {
            acknowledger: Arc::clone(&self.acknowledger),
            period,
            deadline,
        })
    }

    /// Settles the delivery as `settlement`.
    pub async fn settle(self, settlement: Settlement) -> Result<(), SettleError> {
        match self
            .acknowledger
            .settle(&self.message, self.attempt, settlement)
            .await
        {
            Ok(()) => Ok(()),
            Err(error) => Err(SettleError {
                delivery: Box::new(self),
                error,
            }),
        }
    }

    /// Done: the broker forgets the message.
    pub async fn ack(self) -> Result<(), SettleError> {
        self.settle(Settlement::Ack).await
    }

    /// Runs it again no sooner than `delay`.
    pub async fn retry(self, delay: Duration) -> Result<(), SettleError> {
        self.settle(Settlement::Retry { delay }).await
    }

    /// Moves it to the dead-letter queue with `reason`.
    pub async fn dead_letter(self, reason: impl Into<String>) -> Result<(), SettleError> {
        self.settle(Settlement::DeadLetter {
            reason: reason.into(),
        })
        .await
    }

    /// Hands it back untouched, for shutdown.
    pub async fn release(self) -> Result<(), SettleError> {
        self.settle(Settlement::Release).await
    }

    /// Keeps it invisible to other consumers for `by` from now (SQS heartbeat; no-op on AMQP).
    pub async fn extend(&self, by: Duration) -> Result<(), BrokerError> {
        self.acknowledger.extend(by).await
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue)
            .field("message_id", &self.message.id)
            .field("job", &self.message.job)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// A settlement the broker did not take; the delivery comes back so nothing is lost.
#[derive(Debug, thiserror::Error)]
#[error("could not settle message `{}` from queue `{}`: {error}", .delivery.message.id, .delivery.queue)]
pub struct SettleError {
    /// The delivery, still unsettled.
    pub delivery: Box<Delivery>,
    /// What the broker said.
    pub error: BrokerError,
}
