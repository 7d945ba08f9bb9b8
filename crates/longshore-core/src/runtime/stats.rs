//! [`WorkerStats`]: live counters of what a worker did, for progress displays and tests.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::telemetry::JobResult;

/// Live counters of one worker; read them with [`WorkerStats::snapshot`].
#[derive(Debug, Default)]
pub struct WorkerStats {
    started: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    settle_failed: AtomicU64,
    lease_lost: AtomicU64,
    in_flight: AtomicU64,
}

/// The counters of a worker at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Job attempts started.
    pub started: u64,
    /// Attempts that succeeded and were acked.
    pub succeeded: u64,
    /// Attempts that failed and were scheduled for a retry.
    pub retried: u64,
    /// Deliveries moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Deliveries handed back untouched (shutdown).
    pub released: u64,
    /// Settlements the broker did not take (its redelivery is the safety net).
    pub settle_failed: u64,
    /// Jobs stopped because their lease was lost (another worker may run them).
    pub lease_lost: u64,
    /// Attempts running now.
    pub in_flight: u64,
}

impl WorkerStats {
    pub(crate) fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn finished(&self, result: JobResult) {
        let counter = match result {
            JobResult::Succeeded => &self.succeeded,
            JobResult::Retried => &self.retried,
            JobResult::DeadLettered => &self.dead_lettered,
            JobResult::Released => &self.released,
            JobResult::SettleFailed => &self.settle_failed,
            JobResult::LeaseLost => &self.lease_lost,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            started: self.started.load(Ordering::Relaxed),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            settle_failed: self.settle_failed.load(Ordering::Relaxed),
            lease_lost: self.lease_lost.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}
