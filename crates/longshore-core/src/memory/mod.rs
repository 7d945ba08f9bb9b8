//! The embedded in-memory broker: the default when no broker URL is given (`memory://`).
//!
//! It keeps the settlement semantics of the real brokers in one process: a delivery not
//! settled within its visibility timeout is redelivered with the next attempt number,
//! delays hold messages back, dead letters go to the queue's `<queue>.dlq`, release hands a
//! message back without counting an attempt, and stale settlements (after a lease expired)
//! fail with [`BrokerError::LeaseLost`] instead of touching the redelivered copy.

mod dead_letters;
mod lease;
mod queue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::broker::{
    Broker, BrokerError, ConsumeOptions, DeliveryStream, QueueOptions, QueueStats,
};
use crate::check::{DeadLetterTarget, QueueFacts};
use crate::dead_letters::DeadLetters;
use crate::delivery::{Acknowledger, Delivery, Settlement};
use crate::message::{Message, headers, unix_millis};
use crate::names::{Attempt, MessageId, QueueName};
use crate::schedule::{ScheduleInfo, ScheduleKey, ScheduleLease, ScheduleStore};
use queue::{QueueState, Stored};

/// An in-process broker with real visibility, delay, retry and dead-letter semantics.
///
/// Cloning gives another handle to the same queues.
#[derive(Clone, Default)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    queues: Mutex<HashMap<QueueName, QueueState>>,
    next_lease: AtomicU64,
    schedules: lease::Slots,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<QueueName, QueueState>> {
        // A panic while holding the lock cannot leave a queue half-updated in a way that
        // loses messages (each operation moves one message between maps), so keep going.
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn queue_mut<'a>(
    queues: &'a mut HashMap<QueueName, QueueState>,
    name: &QueueName,
) -> Result<&'a mut QueueState, BrokerError> {
    queues
        .get_mut(name)
        .ok_or_else(|| BrokerError::QueueNotFound {
            queue: name.clone(),
        })
}

impl MemoryBroker {
    /// A broker with no queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// The messages ready in `queue` now, oldest first, without taking them: for inspecting
    /// a dead-letter queue or asserting in tests.
    pub fn messages(&self, queue: &QueueName) -> Result<Vec<Message>, BrokerError> {
        let mut queues = self.inner.lock();
        let state = queue_mut(&mut queues, queue)?;
        state.promote(Instant::now());
        Ok(state.ready.iter().map(|s| s.message.clone()).collect())
    }

    async fn next_delivery(
        inner: &Arc<Inner>,
        queue: &QueueName,
        visibility: Option<Duration>,
    ) -> Result<Delivery, BrokerError> {
        loop {
            let notify;
            let wake;
            {
                let mut queues = inner.lock();
                let state = queue_mut(&mut queues, queue)?;
                let now = Instant::now();
                state.promote(now);
                let lease_for = visibility.unwrap_or(state.options.visibility_timeout);
                let lease = inner.next_lease.fetch_add(1, Ordering::Relaxed);
                if let Some((message, attempt)) = state.lease_next(lease, now + lease_for) {
                    let acknowledger = MemoryAcknowledger {
                        inner: Arc::clone(inner),
                        queue: queue.clone(),
                        message_id: message.id.clone(),
                        lease,
                    };
                    return Ok(Delivery::new(
                        message,
                        Attempt::new(attempt),
                        queue.clone(),
                        acknowledger,
                    )
                    .with_lease(lease_for));
                }
                notify = Arc::clone(&state.notify);
                wake = state.next_wake();
            }
            let notified = notify.notified();
            tokio::pin!(notified);
            // Register before re-checking, so a publish between the check and the wait wakes us.
            notified.as_mut().enable();
            if !inner.lock().get(queue).is_some_and(|s| s.ready.is_empty()) {
                continue;
            }
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn system(&self) -> &'static str {
        "memory"
    }

    async fn declare(&self, queue: &QueueName, options: &QueueOptions) -> Result<(), BrokerError> {
        let mut queues = self.inner.lock();
        if options.dead_letter_queue {
            queues
                .entry(queue.dead_letter_queue())
                .or_insert_with(|| QueueState::new(options.clone().dead_letter_queue(false)));
        }
        queues
            .entry(queue.clone())
            .or_insert_with(|| QueueState::new(options.clone()));
        Ok(())
    }

    async fn verify(&self, queue: &QueueName) -> Result<(), BrokerError> {
        let queues = self.inner.lock();
        let state = queues
            .get(queue)
            .ok_or_else(|| BrokerError::QueueNotFound {
                queue: queue.clone(),
            })?;
        if state.options.dead_letter_queue && !queues.contains_key(&queue.dead_letter_queue()) {
            return Err(BrokerError::Topology {
                queue: queue.clone(),
                problem: format!(
                    "its dead-letter queue `{}` is missing; declare it or use Topology::Declare",
                    queue.dead_letter_queue()
                ),
            });
        }
        Ok(())
    }

    async fn publish(&self, queue: &QueueName, message: Message) -> Result<(), BrokerError> {
        let mut queues = self.inner.lock();
        let state = queue_mut(&mut queues, queue)?;
        let delay = message.delay;
        state.push(
            Stored {
                message,
                receive_count: 0,
            },
            delay,
            Instant::now(),
        );
        Ok(())
    }

    async fn consume(
        &self,
        queue: &QueueName,
        options: &ConsumeOptions,
    ) -> Result<DeliveryStream, BrokerError> {
        self.verify(queue).await?;
        let inner = Arc::clone(&self.inner);
        let queue = queue.clone();
        let visibility = options.visibility_timeout;
        // Deliveries are leased when the consumer asks for the next one, so the stream
        // buffers nothing: dropping it leaves every unstarted message in the queue.
        let stream = futures_util::stream::unfold((), move |()| {
            let inner = Arc::clone(&inner);
            let queue = queue.clone();
            async move { Some((Self::next_delivery(&inner, &queue, visibility).await, ())) }
        });
        Ok(stream.boxed())
    }

    async fn delete(&self, queue: &QueueName) -> Result<(), BrokerError> {
        let mut queues = self.inner.lock();
        for name in [queue.dead_letter_queue(), queue.clone()] {
            // Wake its consumers so they see the queue is gone instead of waiting forever.
            if let Some(state) = queues.remove(&name) {
                state.notify.notify_waiters();
            }
        }
        Ok(())
    }

    fn schedules(&self) -> Option<&dyn ScheduleStore> {
        Some(self)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    async fn list_queues(&self) -> Result<Option<Vec<QueueName>>, BrokerError> {
        let mut names: Vec<QueueName> = self
            .inner
            .lock()
            .keys()
            .filter(|name| !name.as_str().ends_with(".dlq"))
            .cloned()
            .collect();
        names.sort();
        Ok(Some(names))
    }

    async fn inspect(&self, queue: &QueueName) -> Result<QueueFacts, BrokerError> {
        let queues = self.inner.lock();
        let state = queues
            .get(queue)
            .ok_or_else(|| BrokerError::QueueNotFound {
                queue: queue.clone(),
            })?;
        let dlq = queue.dead_letter_queue();
        let dead_letters = if queues.contains_key(&dlq) {
            DeadLetterTarget::Queue(dlq)
        } else {
            DeadLetterTarget::Missing(format!("`{dlq}` does not exist"))
        };
        Ok(QueueFacts {
            visibility_timeout: Some(state.options.visibility_timeout),
            dead_letters,
            ..QueueFacts::default()
        })
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats, BrokerError> {
        let mut queues = self.inner.lock();
        let now = Instant::now();
        let dead_lettered = queues.get_mut(&queue.dead_letter_queue()).map(|dlq| {
            dlq.promote(now);
            dlq.len() as u64
        });
        let state = queue_mut(&mut queues, queue)?;
        state.promote(now);
        Ok(QueueStats {
            ready: state.ready.len() as u64,
            delayed: Some(state.delayed_len() as u64),
            in_flight: Some(state.leased_len() as u64),
            dead_lettered,
        })
    }
}

#[async_trait]
impl ScheduleStore for MemoryBroker {
    async fn lease(
        &self,
        key: &ScheduleKey,
    ) -> Result<Option<Box<dyn ScheduleLease>>, BrokerError> {
        queue_mut(&mut self.inner.lock(), &key.queue)?;
        let holder = self.inner.next_lease.fetch_add(1, Ordering::Relaxed);
        Ok(self
            .inner
            .schedules
            .take(key, holder)
            .map(|watermark| -> Box<dyn ScheduleLease> {
                Box::new(lease::MemoryLease {
                    broker: self.clone(),
                    key: key.clone(),
                    holder,
                    watermark,
                })
            }))
    }

    async fn delete(&self, key: &ScheduleKey) -> Result<(), BrokerError> {
        self.inner.schedules.forget(key);
        Ok(())
    }

    async fn list(&self, queue: &QueueName) -> Result<Vec<ScheduleInfo>, BrokerError> {
        Ok(self.inner.schedules.list(queue))
    }
}

/// Settles one memory delivery by its lease id. Dropped unsettled, it hands the message
/// back at once (as the real brokers' adapters do) instead of letting the lease run out.
struct MemoryAcknowledger {
    inner: Arc<Inner>,
    queue: QueueName,
    message_id: MessageId,
    lease: u64,
}

#[async_trait]
impl Acknowledger for MemoryAcknowledger {
    async fn settle(
        &self,
        message: &Message,
        attempt: Attempt,
        settlement: Settlement,
    ) -> Result<(), BrokerError> {
        let mut queues = self.inner.lock();
        let now = Instant::now();
        if let Settlement::DeadLetter { .. } = settlement {
            // Check the target first, so a failed dead-letter keeps the lease (nothing lost).
            let dlq = self.queue.dead_letter_queue();
            if !queues.contains_key(&dlq) {
                return Err(BrokerError::Topology {
                    queue: self.queue.clone(),
                    problem: format!(
                        "it has no dead-letter queue `{dlq}` to move message `{}` to; declare the queue with a dead-letter queue",
                        message.id
                    ),
                });
            }
        }
        let state = queue_mut(&mut queues, &self.queue)?;
        let mut stored = state
            .take_lease(self.lease)
            .ok_or_else(|| BrokerError::LeaseLost {
                queue: self.queue.clone(),
                message_id: message.id.clone(),
            })?;
        match settlement {
            Settlement::Ack => {}
            Settlement::Retry { delay } => state.push(stored, Some(delay), now),
            Settlement::Release => {
                stored.receive_count -= 1;
                state.ready.push_front(stored);
                state.notify.notify_waiters();
            }
            Settlement::DeadLetter { reason } => {
                let mut dead = stored.message;
                dead.headers_mut()
                    .insert(headers::DEAD_REASON.into(), reason);
                dead.headers_mut()
                    .insert(headers::DEAD_ATTEMPT.into(), attempt.get().to_string());
                dead.headers_mut().insert(
                    headers::DEAD_AT.into(),
                    unix_millis(SystemTime::now()).to_string(),
                );
                dead.headers_mut()
                    .insert(headers::DEAD_QUEUE.into(), self.queue.to_string());
                let dlq = queue_mut(&mut queues, &self.queue.dead_letter_queue())?;
                dlq.push(
                    Stored {
                        message: dead,
                        receive_count: 0,
                    },
                    None,
                    now,
                );
            }
        }
        Ok(())
    }

    async fn extend(&self, by: Duration) -> Result<(), BrokerError> {
        let mut queues = self.inner.lock();
        let state = queue_mut(&mut queues, &self.queue)?;
        if state.extend_lease(self.lease, Instant::now() + by) {
            Ok(())
        } else {
            Err(BrokerError::LeaseLost {
                queue: self.queue.clone(),
                message_id: self.message_id.clone(),
            })
        }
    }
}

impl Drop for MemoryAcknowledger {
    fn drop(&mut self) {
        let mut queues = self.inner.lock();
        if let Some(state) = queues.get_mut(&self.queue)
            && let Some(stored) = state.take_lease(self.lease)
        {
            state.ready.push_front(stored);
            state.notify.notify_waiters();
        }
    }
}
