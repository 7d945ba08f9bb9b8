//! [`Message`]: what a producer publishes and a broker stores, and its wire headers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::names::{JobName, MessageId};

/// Header names of longshore's wire format, shared by every broker.
///
/// AMQP carries them as message headers, SQS as message attributes, the memory broker as
/// they are. A producer in another language enqueues a job by sending the JSON body with at
/// least [`JOB`](headers::JOB) set.
pub mod headers {
    /// The job name (required): which handler runs the message.
    pub const JOB: &str = "longshore-job";
    /// The producer's message id (optional; the broker's own id is used when absent).
    pub const MESSAGE_ID: &str = "longshore-message-id";
    /// When the job was first enqueued, in milliseconds since the Unix epoch (optional).
    pub const ENQUEUED_AT: &str = "longshore-enqueued-at";
    /// Why the message was dead-lettered, set on dead-letter.
    pub const DEAD_REASON: &str = "longshore-dead-reason";
    /// The attempt on which the message was dead-lettered, set on dead-letter.
    pub const DEAD_ATTEMPT: &str = "longshore-dead-attempt";
    /// When the message was dead-lettered, in milliseconds since the Unix epoch.
    pub const DEAD_AT: &str = "longshore-dead-at";
    /// The queue the message was dead-lettered from.
    pub const DEAD_QUEUE: &str = "longshore-dead-queue";
    /// Why the job was enqueued: `manual`, or `schedule:<name>@<tick unix millis>` (optional).
    pub const TRIGGER: &str = "longshore-trigger";
    /// When a delayed job is due, in milliseconds since the Unix epoch: set on delays longer
    /// than the broker can hold at once (RabbitMQ's delay ladder, SQS's 15 minutes), which
    /// travel in hops until then.
    pub const DUE_AT: &str = "longshore-due-at";
    /// Set (`1`) on jobs whose producer wrote their status to a status store: a worker with
    /// the same store tracks them.
    pub const STATUS: &str = "longshore-status";
    /// Set by a broker adapter that met a longshore header it could not read (a job name
    /// of the wrong type, say): what it was. A message without a job name is dead-lettered
    /// with this as the reason.
    pub const WIRE_ERROR: &str = "longshore-wire-error";
    /// W3C trace context of the producer.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state of the producer.
    pub const TRACESTATE: &str = "tracestate";

    /// Whether a header is longshore's own (it is rewritten by longshore, not copied from users).
    pub fn is_reserved(name: &str) -> bool {
        name.starts_with("longshore-")
    }
}

/// String headers of a message; user headers and longshore's wire headers share the map.
pub type Headers = BTreeMap<String, String>;

/// One job as it travels through a broker: body bytes plus headers.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Unique id, kept across retries and dead-lettering.
    pub id: MessageId,
    /// The job name; finds the handler.
    pub job: JobName,
    /// The encoded job (JSON for jobs enqueued by [`Producer`](crate::Producer)).
    pub body: Vec<u8>,
    /// Trace context, user headers and longshore's wire headers; shared, so a worker hands
    /// them to each job's context without copying (change them with [`headers_mut`](Self::headers_mut)).
    pub headers: Arc<Headers>,
    /// When the job was first enqueued.
    pub enqueued_at: SystemTime,
    /// Do not deliver before this much time has passed since publishing.
    pub delay: Option<Duration>,
    /// Ordering group (SQS FIFO `MessageGroupId`): messages of one group run one at a time,
    /// in order. Ignored by brokers without groups.
    pub group: Option<String>,
    /// Deduplication id (SQS FIFO `MessageDeduplicationId`); the message id when `None`.
    pub deduplication_id: Option<String>,
}

impl Message {
    /// A message for `job` with a fresh id, enqueued now, without delay.
    pub fn new(job: impl Into<JobName>, body: Vec<u8>) -> Self {
        Self {
            id: MessageId::generate(),
            job: job.into(),
            body,
            headers: Arc::default(),
            enqueued_at: SystemTime::now(),
            delay: None,
            group: None,
            deduplication_id: None,
        }
    }

    /// The headers to change (copied first if they are shared).
    pub fn headers_mut(&mut self) -> &mut Headers {
        Arc::make_mut(&mut self.headers)
    }

    /// The message's wire headers: its own headers plus longshore's job, id and enqueue time.
    pub fn wire_headers(&self) -> Headers {
        let mut wire = Headers::clone(&self.headers);
        wire.insert(headers::JOB.to_owned(), self.job.to_string());
        wire.insert(headers::MESSAGE_ID.to_owned(), self.id.to_string());
        wire.insert(
            headers::ENQUEUED_AT.to_owned(),
            unix_millis(self.enqueued_at).to_string(),
        );
        wire
    }

    /// Rebuilds a message from wire headers and body, as a broker adapter receives them.
    ///
    /// `fallback_id` is the broker's own id, used when the producer set none. A missing job
    /// header leaves the job name empty: the runtime dead-letters such a message with the reason.
    pub fn from_wire(mut wire: Headers, body: Vec<u8>, fallback_id: Option<&str>) -> Self {
        let job = wire.remove(headers::JOB).unwrap_or_default();
        let id = wire
            .remove(headers::MESSAGE_ID)
            .or_else(|| fallback_id.map(str::to_owned))
            .map(MessageId::from)
            .unwrap_or_else(MessageId::generate);
        let enqueued_at = wire
            .remove(headers::ENQUEUED_AT)
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
            .unwrap_or_else(SystemTime::now);
        Self {
            id,
            job: JobName::from(job),
            body,
            headers: Arc::new(wire),
            enqueued_at,
            delay: None,
            group: None,
            deduplication_id: None,
        }
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip_keeps_id_job_time_and_user_headers() {
        let mut message = Message::new("send_email", b"{}".to_vec());
        message.headers_mut().insert("tenant".into(), "acme".into());
        let wire = message.wire_headers();
        let back = Message::from_wire(wire, message.body.clone(), Some("broker-id"));
        assert_eq!(back.id, message.id);
        assert_eq!(back.job, message.job);
        assert_eq!(
            unix_millis(back.enqueued_at),
            unix_millis(message.enqueued_at)
        );
        assert_eq!(back.headers.get("tenant").map(String::as_str), Some("acme"));
        assert!(!back.headers.contains_key(headers::JOB));
    }

    #[test]
    fn foreign_message_without_longshore_headers_uses_broker_id_and_empty_job() {
        let back = Message::from_wire(Headers::new(), b"x".to_vec(), Some("broker-id"));
        assert_eq!(back.id.as_str(), "broker-id");
        assert_eq!(back.job.as_str(), "");
    }
}
