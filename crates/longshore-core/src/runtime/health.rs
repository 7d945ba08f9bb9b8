//! [`Health`]: liveness and readiness of a worker, for container probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::broker::Broker;
use crate::names::{MessageId, QueueName};
use crate::runtime::stats::WorkerStats;
use crate::status::tracking::Cancels;

/// Liveness and readiness of one [`Worker`](crate::Worker); cheap to clone, read from any
/// thread (an HTTP probe, say).
#[derive(Clone)]
pub struct Health {
    state: Arc<State>,
    broker: Arc<dyn Broker>,
    queue: QueueName,
    stats: Arc<WorkerStats>,
    capacity: usize,
    cancels: Arc<Cancels>,
}

#[derive(Default)]
pub(crate) struct State {
    /// The worker's loop is running (set at start, cleared when it returns).
    running: AtomicBool,
    /// The worker is fetching: its consumer is open and it is not shutting down.
    consuming: AtomicBool,
    /// A graceful shutdown has begun.
    stopping: AtomicBool,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("queue", &self.queue)
            .field("alive", &self.is_alive())
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Health {
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        queue: QueueName,
        stats: Arc<WorkerStats>,
        capacity: usize,
        cancels: Arc<Cancels>,
    ) -> Self {
        Self {
            state: Arc::default(),
            broker,
            queue,
            stats,
            capacity,
            cancels,
        }
    }

    /// How many jobs the worker runs at once at most (its concurrency).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a graceful shutdown has begun (readiness is false from then on).
    pub fn is_stopping(&self) -> bool {
        self.state.stopping.load(Ordering::Relaxed)
    }

    /// The jobs running now whose status is tracked (their progress is in the status store).
    pub fn running_tracked(&self) -> Vec<MessageId> {
        self.cancels.running_ids()
    }

    /// Alive: the worker's loop is running (it has started and not returned).
    pub fn is_alive(&self) -> bool {
        self.state.running.load(Ordering::Relaxed)
    }

    /// Ready: alive, consuming its queue, not stopping, and the broker answers.
    pub fn is_ready(&self) -> bool {
        self.is_alive()
            && !self.is_stopping()
            && self.state.consuming.load(Ordering::Relaxed)
            && self.broker.is_connected()
    }

    /// The queue the worker consumes.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The broker the worker consumes from.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// The worker's live counters.
    pub fn stats(&self) -> &Arc<WorkerStats> {
        &self.stats
    }

    pub(crate) fn set_consuming(&self, consuming: bool) {
        self.state.consuming.store(consuming, Ordering::Relaxed);
    }

    /// Marks a graceful shutdown as begun: not ready from now on.
    pub(crate) fn set_stopping(&self) {
        self.state.stopping.store(true, Ordering::Relaxed);
        self.state.consuming.store(false, Ordering::Relaxed);
    }

    /// Marks the worker running until the guard drops.
    pub(crate) fn running(&self) -> RunningGuard {
        self.state.running.store(true, Ordering::Relaxed);
        RunningGuard(Arc::clone(&self.state))
    }
}

/// Clears liveness and readiness when the worker's loop ends, however it ends.
pub(crate) struct RunningGuard(Arc<State>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.consuming.store(false, Ordering::Relaxed);
        self.0.running.store(false, Ordering::Relaxed);
    }
}
