//! [`WorkerStats`]: live counters of what a worker did, for progress displays and tests.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::outcome::Outcome;

/// Live counters of one worker; read them with [`WorkerStats::snapshot`].
#[derive(Debug, Default)]
pub struct WorkerStats {
    started: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    skipped: AtomicU64,
    abandoned: AtomicU64,
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
    /// Jobs acked without running: cancelled, or succeeded already (a redelivery).
    pub skipped: u64,
    /// Attempts this worker could not settle: the lease was lost, or the broker did not take
    /// the settlement. The broker redelivers them.
    pub abandoned: u64,
    /// Attempts running now.
    pub in_flight: u64,
}

impl WorkerStats {
    /// Counts an attempt as started and running, until the guard is finished or dropped
    /// (an attempt whose task ended without an outcome counts as abandoned).
    pub(crate) fn start(&self) -> Running<'_> {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Running {
            stats: self,
            counted: false,
        }
    }

    fn count(&self, outcome: Option<&Outcome>) {
        let counter = match outcome {
            Some(Outcome::Succeeded) => &self.succeeded,
            Some(Outcome::Retried { .. }) => &self.retried,
            Some(Outcome::DeadLettered { .. }) => &self.dead_lettered,
            Some(Outcome::Released) => &self.released,
            Some(Outcome::Skipped { .. }) => &self.skipped,
            Some(Outcome::Abandoned { .. } | Outcome::Failed(_)) | None => &self.abandoned,
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
            skipped: self.skipped.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

/// One running attempt in the counters.
pub(crate) struct Running<'a> {
    stats: &'a WorkerStats,
    counted: bool,
}

impl Running<'_> {
    /// Counts the attempt's outcome.
    pub(crate) fn finish(mut self, outcome: &Outcome) {
        self.stats.count(Some(outcome));
        self.counted = true;
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.counted {
            self.stats.count(None);
        }
    }
}
