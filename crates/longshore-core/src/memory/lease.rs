//! Schedule leases of the memory broker: one slot per schedule, in the broker, holding who
//! holds the lease and the watermark. Replicas sharing one `MemoryBroker` see one another.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;

use super::MemoryBroker;
use crate::broker::{Broker, BrokerError};
use crate::message::Message;
use crate::names::QueueName;
use crate::schedule::{ScheduleInfo, ScheduleKey, ScheduleLease, lease_lost};

/// The lease slots of one broker.
#[derive(Default)]
pub(super) struct Slots(Mutex<HashMap<ScheduleKey, Slot>>);

#[derive(Default)]
struct Slot {
    holder: Option<u64>,
    watermark: Option<SystemTime>,
}

impl Slots {
    fn with<T>(&self, key: &ScheduleKey, f: impl FnOnce(&mut Slot) -> T) -> T {
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(slots.entry(key.clone()).or_default())
    }

    /// Forgets `key`'s slot (a holder still running keeps nothing: its next record fails).
    pub(super) fn forget(&self, key: &ScheduleKey) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// The schedules of `queue`, by name.
    pub(super) fn list(&self, queue: &QueueName) -> Vec<ScheduleInfo> {
        let slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<ScheduleInfo> = slots
            .iter()
            .filter(|(key, _)| &key.queue == queue)
            .map(|(key, slot)| ScheduleInfo {
                name: key.name.clone(),
                held: Some(slot.holder.is_some()),
                holder: slot
                    .holder
                    .map(|holder| format!("replica {holder} of this process")),
                watermark: slot.watermark,
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Takes the lease of `key` for `holder` if nobody holds it.
    pub(super) fn take(&self, key: &ScheduleKey, holder: u64) -> Option<Option<SystemTime>> {
        self.with(key, |slot| {
            if slot.holder.is_some() {
                return None;
            }
            slot.holder = Some(holder);
            Some(slot.watermark)
        })
    }
}

/// A held lease of the memory broker; released when dropped.
pub(super) struct MemoryLease {
    pub(super) broker: MemoryBroker,
    pub(super) key: ScheduleKey,
    pub(super) holder: u64,
    pub(super) watermark: Option<SystemTime>,
}

impl MemoryLease {
    fn held(&self) -> bool {
        self.broker
            .inner
            .schedules
            .with(&self.key, |slot| slot.holder == Some(self.holder))
    }
}

#[async_trait]
impl ScheduleLease for MemoryLease {
    fn watermark(&self) -> Option<SystemTime> {
        self.watermark
    }

    fn is_held(&self) -> bool {
        self.held()
    }

    async fn renew(&mut self) -> Result<(), BrokerError> {
        if self.held() {
            Ok(())
        } else {
            Err(lease_lost(&self.key))
        }
    }

    async fn publish(&mut self, queue: &QueueName, message: Message) -> Result<(), BrokerError> {
        if !self.held() {
            return Err(lease_lost(&self.key));
        }
        self.broker.publish(queue, message).await
    }

    async fn record(&mut self, watermark: SystemTime) -> Result<(), BrokerError> {
        let recorded = self.broker.inner.schedules.with(&self.key, |slot| {
            if slot.holder != Some(self.holder) {
                return false;
            }
            slot.watermark = Some(watermark);
            true
        });
        if !recorded {
            return Err(lease_lost(&self.key));
        }
        self.watermark = Some(watermark);
        Ok(())
    }

    async fn release(self: Box<Self>) {
        drop(self);
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        self.broker.inner.schedules.with(&self.key, |slot| {
            if slot.holder == Some(self.holder) {
                slot.holder = None;
            }
        });
    }
}
