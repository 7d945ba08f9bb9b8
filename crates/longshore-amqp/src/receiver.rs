//! What every delivery of one consumer shares: the queue, the publisher of the consumer's
//! connection (retries and dead letters are published on it), the dead-letter target, and
//! the generation of the connection it is on. [`crate::consume`] makes one per consumer and
//! [`crate::settle`] settles with it; neither knows the other.

use lapin::Channel;
use longshore_core::QueueName;
use tokio::sync::watch;

use std::sync::Arc;

use crate::DeadLetterTarget;
use crate::acks::Acks;
use crate::publish::Publisher;

pub(crate) struct Receiver {
    pub(crate) queue: QueueName,
    pub(crate) publisher: Publisher,
    pub(crate) dead_letter: Option<DeadLetterTarget>,
    /// The consumer's channel: held until the last of its deliveries is settled, even after
    /// the stream is dropped, so running jobs can still be acked.
    pub(crate) channel: Channel,
    /// The generation of the connection this consumer is on.
    pub(crate) generation: u64,
    /// The link's current generation: once it differs, this consumer's connection was
    /// replaced and its deliveries are gone.
    pub(crate) current: watch::Receiver<u64>,
    /// The channel's acks, coalesced.
    pub(crate) acks: Arc<Acks>,
}

impl Receiver {
    /// Whether the connection this consumer is on is still the link's connection and its
    /// channel is open.
    pub(crate) fn is_live(&self) -> bool {
        *self.current.borrow() == self.generation && self.channel.status().connected()
    }
}

/// Resolves once the link's connection is no longer the one of `generation` (or the link
/// is gone): deliveries and acks of that connection will never be answered.
pub(crate) async fn replaced(mut current: watch::Receiver<u64>, generation: u64) {
    let _ = current.wait_for(|now| *now != generation).await;
}
