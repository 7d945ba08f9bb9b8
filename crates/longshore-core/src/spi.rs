//! For people writing a broker adapter or telemetry hooks: the vocabulary an adapter
//! translates to its broker's mechanics, and what a worker needs from one. Applications
//! writing jobs need nothing from here.
//!
//! An adapter implements [`Broker`](crate::Broker): `publish` takes a [`Message`];
//! `consume` yields [`Delivery`]s, each settled exactly once through the adapter's
//! [`Acknowledger`] as one of the [`Settlement`]s. What only some brokers can do is a
//! capability the broker offers (`Broker::schedules` → [`ScheduleStore`]), checked when a
//! worker is built.

pub use crate::broker::{BoxError, ConsumeOptions, DeliveryStream};
pub use crate::delivery::{Acknowledger, Delivery, SettleError, Settlement};
pub use crate::message::{Headers, Message, headers, unix_millis};
pub use crate::retry::RetryDecision;
pub use crate::schedule::{
    RENEW_EVERY, ScheduleInfo, ScheduleKey, ScheduleLease, ScheduleStore, decode_holder,
    decode_watermark, encode_watermark, lease_lost,
};
pub use crate::scope::{Requirement, Root};
pub use crate::telemetry::{JobEvent, Telemetry};
pub use crate::url::Secret;
