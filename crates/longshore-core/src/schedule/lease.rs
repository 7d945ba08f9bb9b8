//! [`ScheduleLease`]: what a broker adapter provides so that one replica at a time enqueues a
//! schedule's ticks, and the newest tick is recorded on the broker.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::broker::BrokerError;
use crate::message::Message;
use crate::names::QueueName;

/// One schedule on one work queue: what a lease is taken for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ScheduleKey {
    /// The queue its ticks are enqueued on.
    pub queue: QueueName,
    /// The schedule's name (ASCII letters, digits, `-`, `_`; at most 40).
    pub name: String,
}

impl ScheduleKey {
    /// `<queue>.schedule.<name>`: the base name of the broker objects holding the lease.
    pub fn base_name(&self) -> String {
        format!("{}.schedule.{}", self.queue, self.name)
    }
}

impl std::fmt::Display for ScheduleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "schedule `{}` on queue `{}`", self.name, self.queue)
    }
}

/// What a broker keeps for cron schedules: one lease per schedule, with the newest tick
/// recorded; [`Broker::schedules`](crate::Broker::schedules) offers it.
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Takes the lease of a schedule if no replica holds it (`Ok(None)` if one does), with
    /// the schedule's recorded watermark.
    async fn lease(&self, key: &ScheduleKey)
    -> Result<Option<Box<dyn ScheduleLease>>, BrokerError>;

    /// Deletes what the broker keeps for a schedule (its lease and recorded watermark): for
    /// a schedule removed for good. Stop the replicas running it first; a schedule that runs
    /// again afterwards starts afresh.
    async fn delete(&self, key: &ScheduleKey) -> Result<(), BrokerError>;

    /// The schedules whose ticks go to `queue`, as the broker keeps them.
    async fn list(&self, queue: &QueueName) -> Result<Vec<ScheduleInfo>, BrokerError>;
}

/// A schedule as the broker keeps it: for `longshore schedules list`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleInfo {
    /// Its name.
    pub name: String,
    /// Whether a replica holds its lease now (`None` where the broker cannot tell).
    pub held: Option<bool>,
    /// The replica that recorded the watermark last (`host:pid`).
    pub holder: Option<String>,
    /// The newest tick enqueued (or skipped).
    pub watermark: Option<SystemTime>,
}

/// A schedule's lease, held by one replica at a time, with the schedule's watermark (the
/// newest tick enqueued or skipped) as recorded on the broker.
///
/// Adapters implement it with their broker's own exclusivity (see [`crate::schedule`]).
/// Dropping a lease without [`release`](ScheduleLease::release) lets it expire.
#[async_trait]
pub trait ScheduleLease: Send + Sync {
    /// The recorded watermark; `None` if the schedule never ran on this broker.
    fn watermark(&self) -> Option<SystemTime>;

    /// Whether this replica still holds the lease.
    fn is_held(&self) -> bool;

    /// Keeps the lease; the scheduler calls it at least every [`RENEW_EVERY`].
    async fn renew(&mut self) -> Result<(), BrokerError>;

    /// Publishes a tick's job on `queue`, only while the lease is held.
    async fn publish(&mut self, queue: &QueueName, message: Message) -> Result<(), BrokerError>;

    /// Records `watermark` on the broker. It may pass the lease on (SQS hands the new token to
    /// whichever replica receives it first): check [`is_held`](ScheduleLease::is_held) after.
    async fn record(&mut self, watermark: SystemTime) -> Result<(), BrokerError>;

    /// Gives the lease up at once, so that another replica takes over without waiting for it
    /// to expire.
    async fn release(self: Box<Self>);
}

/// How often a holder renews its lease.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// The error of a lease that is gone when something needed it.
pub fn lease_lost(key: &ScheduleKey) -> BrokerError {
    BrokerError::Other(format!("the lease of {key} was lost").into())
}

/// The body a broker stores a schedule's watermark in: JSON
/// `{"queue":…,"schedule":…,"watermark_ms":<Unix ms>,"holder":"<host>:<pid>"}`.
pub fn encode_watermark(key: &ScheduleKey, watermark: SystemTime) -> Vec<u8> {
    serde_json::json!({
        "queue": key.queue.as_str(),
        "schedule": key.name,
        "watermark_ms": crate::message::unix_millis(watermark),
        "holder": crate::process_name(),
    })
    .to_string()
    .into_bytes()
}

/// The replica that wrote a body of [`encode_watermark`].
pub fn decode_holder(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("holder")?.as_str().map(str::to_owned)
}

/// The watermark in a body written by [`encode_watermark`]; `None` for anything else.
pub fn decode_watermark(body: &[u8]) -> Option<SystemTime> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let millis = value.get("watermark_ms")?.as_u64()?;
    Some(std::time::UNIX_EPOCH + Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_round_trip_and_junk_reads_as_none() {
        let key = ScheduleKey {
            queue: QueueName::new("orders"),
            name: "nightly".into(),
        };
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(decode_watermark(&encode_watermark(&key, at)), Some(at));
        for junk in [
            &b"{\"seed\":true}"[..],
            b"",
            b"not json",
            b"{\"watermark_ms\":-1}",
        ] {
            assert_eq!(decode_watermark(junk), None);
        }
    }
}
