//! One in-memory queue's state: ready, delayed and leased messages.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::QueueOptions;
use crate::message::Message;

/// A message as the memory broker stores it.
#[derive(Debug)]
pub(super) struct Stored {
    pub(super) message: Message,
    /// How many times it was handed out (its next delivery is attempt `receive_count + 1`).
    pub(super) receive_count: u32,
}

/// The state of one queue.
#[derive(Debug)]
pub(super) struct QueueState {
    pub(super) options: QueueOptions,
    pub(super) ready: VecDeque<Stored>,
    /// Waiting for their delay, by (due time, sequence).
    delayed: BTreeMap<(Instant, u64), Stored>,
    /// Handed out and not settled, by (lease deadline, lease id).
    leased: BTreeMap<(Instant, u64), Stored>,
    /// Lease id → its deadline, to find a lease by id.
    lease_deadlines: HashMap<u64, Instant>,
    next_seq: u64,
    /// Woken when a message may have become ready.
    pub(super) notify: Arc<Notify>,
}

impl QueueState {
    pub(super) fn new(options: QueueOptions) -> Self {
        Self {
            options,
            ready: VecDeque::new(),
            delayed: BTreeMap::new(),
            leased: BTreeMap::new(),
            lease_deadlines: HashMap::new(),
            next_seq: 0,
            notify: Arc::new(Notify::new()),
        }
    }

    /// Adds a message, ready now or after `delay`.
    pub(super) fn push(&mut self, stored: Stored, delay: Option<Duration>, now: Instant) {
        match delay {
            Some(delay) if !delay.is_zero() => {
                self.next_seq += 1;
                self.delayed.insert((now + delay, self.next_seq), stored);
            }
            _ => self.ready.push_back(stored),
        }
        self.notify.notify_waiters();
    }

    /// Moves due delayed messages and expired leases to the ready queue.
    pub(super) fn promote(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            self.ready.push_back(entry.remove());
        }
        // Expired leases were handed out before anything now ready: they go first.
        let mut expired = Vec::new();
        while let Some(entry) = self.leased.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (_, lease) = *entry.key();
            self.lease_deadlines.remove(&lease);
            expired.push(entry.remove());
        }
        for stored in expired.into_iter().rev() {
            self.ready.push_front(stored);
        }
    }

    /// Takes the next ready message under a new lease until `deadline`; returns it with
    /// its attempt number.
    pub(super) fn lease_next(&mut self, lease: u64, deadline: Instant) -> Option<(Message, u32)> {
        let mut stored = self.ready.pop_front()?;
        stored.receive_count += 1;
        let attempt = stored.receive_count;
        let message = stored.message.clone();
        self.leased.insert((deadline, lease), stored);
        self.lease_deadlines.insert(lease, deadline);
        Some((message, attempt))
    }

    /// Ends a lease, returning its message; `None` if the lease already expired.
    pub(super) fn take_lease(&mut self, lease: u64) -> Option<Stored> {
        let deadline = self.lease_deadlines.remove(&lease)?;
        self.leased.remove(&(deadline, lease))
    }

    /// Moves a lease's deadline; false if the lease already expired.
    pub(super) fn extend_lease(&mut self, lease: u64, deadline: Instant) -> bool {
        let Some(stored) = self.take_lease(lease) else {
            return false;
        };
        self.leased.insert((deadline, lease), stored);
        self.lease_deadlines.insert(lease, deadline);
        true
    }

    /// When the next delayed message is due or the next lease expires.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let delayed = self.delayed.first_key_value().map(|(key, _)| key.0);
        let leased = self.leased.first_key_value().map(|(key, _)| key.0);
        match (delayed, leased) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn delayed_len(&self) -> usize {
        self.delayed.len()
    }

    pub(super) fn leased_len(&self) -> usize {
        self.leased.len()
    }

    /// Every message the queue holds in any state.
    pub(super) fn len(&self) -> usize {
        self.ready.len() + self.delayed.len() + self.leased.len()
    }
}
