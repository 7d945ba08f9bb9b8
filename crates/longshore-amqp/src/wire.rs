//! longshore's wire format on AMQP: message properties and headers to and from [`Message`].
//!
//! - body: the job as JSON (`content-type: application/json`), persistent (`delivery-mode 2`);
//! - `message-id` property: the message id (a `longshore-message-id` header is read too,
//!   and wins, as older longshore versions and other producers may send it);
//! - headers (AMQP long strings; integers are accepted too when reading):
//!   `longshore-job` (required), `longshore-enqueued-at` (Unix ms), `longshore-attempt`
//!   (1 when absent, and not sent on a first attempt), `traceparent`/`tracestate`, and any
//!   user header.
//!
//! RabbitMQ's own `x-*` headers (`x-death`, `x-first-death-*`, `x-delivery-count`, ...) are
//! read for the attempt count and never copied onward, so a retried message carries no
//! dead-letter history that RabbitMQ's cycle detection could drop it for.

use std::time::SystemTime;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use longshore_core::Attempt;
use longshore_core::spi::{Headers, Message, headers, unix_millis};

/// The attempt header, maintained by the AMQP adapter on every republish.
pub(crate) const ATTEMPT: &str = "longshore-attempt";

/// The string value of an AMQP header, for the types a producer plausibly sends.
fn text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        _ => return None,
    })
}

/// The AMQP type of a value, as a sentence names it.
fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::ByteArray(_) => "a byte array",
        AMQPValue::FieldTable(_) => "a table",
        AMQPValue::FieldArray(_) => "an array",
        AMQPValue::Float(_) | AMQPValue::Double(_) | AMQPValue::DecimalValue(_) => "a number",
        AMQPValue::Void => "void",
        AMQPValue::Boolean(_) => "a boolean",
        _ => "an integer",
    }
}

/// Warns, at most once a minute, that a message's attempt header is unreadable.
fn warn_malformed_attempt(value: &AMQPValue) {
    static LAST: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.is_none_or(|at| at.elapsed() >= std::time::Duration::from_secs(60)) {
        *last = Some(std::time::Instant::now());
        tracing::warn!(
            value = ?value,
            "a message's `{ATTEMPT}` header is not a whole number; counting it as attempt 1 \
             (further ones are not logged for a minute)"
        );
    }
}

fn integer(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => text(value)?.trim().parse().ok(),
        other => text(other)?.parse().ok(),
    }
}

/// A received message: longshore's message, and the attempt computed from its headers.
pub(crate) fn decode(
    properties: &BasicProperties,
    body: Vec<u8>,
    redelivered: bool,
) -> (Message, Attempt) {
    let table = properties.headers().as_ref();
    let mut headers = Headers::new();
    let mut attempt_header = 1;
    let mut delivery_count = None;
    if let Some(table) = table {
        for (name, value) in table.inner() {
            let name = name.as_str();
            match name {
                ATTEMPT => {
                    attempt_header = integer(value).unwrap_or_else(|| {
                        warn_malformed_attempt(value);
                        1
                    });
                    attempt_header = attempt_header.max(1);
                }
                headers::JOB
                    if !matches!(value, AMQPValue::LongString(_) | AMQPValue::ShortString(_)) =>
                {
                    headers.insert(
                        headers::WIRE_ERROR.to_owned(),
                        format!(
                            "the `{}` header is {}, not a string",
                            headers::JOB,
                            type_name(value)
                        ),
                    );
                }
                "x-delivery-count" => delivery_count = integer(value),
                _ if name.starts_with("x-") => {}
                _ => {
                    if let Some(value) = text(value) {
                        headers.insert(name.to_owned(), value);
                    }
                }
            }
        }
    }
    // Deliveries since the last republish: quorum queues count them; classic queues only
    // say whether there was at least one.
    let redeliveries = delivery_count.unwrap_or(u64::from(redelivered));
    let attempt = attempt_header.saturating_add(redeliveries);
    let fallback_id = properties.message_id().as_ref().map(ShortString::as_str);
    let message = Message::from_wire(headers, body, fallback_id);
    (
        message,
        Attempt::new(u32::try_from(attempt).unwrap_or(u32::MAX)),
    )
}

/// Properties for publishing `message` as delivery number `attempt`, plus extra headers.
pub(crate) fn encode(
    message: &Message,
    attempt: Attempt,
    extra: &[(&str, String)],
) -> BasicProperties {
    // RabbitMQ decodes every header of every publish, so a message carries only what the
    // `message-id` property and the defaults cannot: the id goes in the property alone, and
    // the attempt header is left out on a first attempt (absent means 1).
    let mut table = FieldTable::default();
    for (name, value) in message.headers.iter() {
        table.insert(
            ShortString::from(name.as_str()),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    table.insert(
        ShortString::from(headers::JOB),
        AMQPValue::LongString(LongString::from(message.job.as_str())),
    );
    table.insert(
        ShortString::from(headers::ENQUEUED_AT),
        AMQPValue::LongString(LongString::from(
            unix_millis(message.enqueued_at).to_string(),
        )),
    );
    if attempt != Attempt::FIRST {
        table.insert(
            ShortString::from(ATTEMPT),
            AMQPValue::LongString(LongString::from(attempt.get().to_string())),
        );
    }
    for (name, value) in extra {
        table.insert(
            ShortString::from(*name),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    let seconds = unix_millis(message.enqueued_at) / 1000;
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(message.id.as_str().into())
        .with_timestamp(seconds)
        .with_headers(table)
}

/// Now, as the `longshore-dead-at` header wants it.
pub(crate) fn now_millis() -> String {
    unix_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use longshore_core::spi::headers;

    #[test]
    fn a_job_header_of_the_wrong_type_is_named_and_a_bad_attempt_counts_as_one() {
        for (value, named) in [
            (
                AMQPValue::ByteArray(b"resize".to_vec().into()),
                "a byte array",
            ),
            (AMQPValue::FieldTable(FieldTable::default()), "a table"),
        ] {
            let mut table = FieldTable::default();
            table.insert(ShortString::from(headers::JOB), value);
            table.insert(
                ShortString::from(ATTEMPT),
                AMQPValue::LongString(LongString::from("abc")),
            );
            let properties = BasicProperties::default().with_headers(table);
            let (message, attempt) = decode(&properties, b"{}".to_vec(), false);
            assert_eq!(message.job.as_str(), "");
            assert_eq!(
                message.headers.get(headers::WIRE_ERROR).map(String::as_str),
                Some(format!("the `longshore-job` header is {named}, not a string").as_str())
            );
            assert_eq!(attempt.get(), 1);
        }
    }

    #[test]
    fn round_trip_keeps_message_and_counts_the_attempt() {
        let mut message = Message::new("resize", b"{}".to_vec());
        message
            .headers_mut()
            .insert("traceparent".into(), "00-abc-def-01".into());
        let properties = encode(&message, Attempt::new(3), &[]);
        let (back, attempt) = decode(&properties, message.body.clone(), false);
        assert_eq!(
            (back.id, back.job, attempt.get()),
            (message.id, message.job, 3)
        );
        assert_eq!(
            back.headers.get("traceparent").map(String::as_str),
            Some("00-abc-def-01")
        );
        assert!(!back.headers.contains_key(ATTEMPT));
    }

    #[test]
    fn a_first_attempt_carries_only_the_headers_it_needs() {
        let message = Message::new("resize", b"{}".to_vec());
        let names = |attempt| -> Vec<String> {
            let properties = encode(&message, attempt, &[]);
            let table = properties.headers().clone().expect("headers");
            table.inner().keys().map(|name| name.to_string()).collect()
        };
        // The id is in the `message-id` property; the attempt header only from attempt 2.
        assert_eq!(names(Attempt::FIRST), [headers::ENQUEUED_AT, headers::JOB]);
        assert_eq!(
            names(Attempt::new(2)),
            [ATTEMPT, headers::ENQUEUED_AT, headers::JOB]
        );
        let properties = encode(&message, Attempt::FIRST, &[]);
        assert_eq!(
            properties.message_id().as_ref().map(ShortString::as_str),
            Some(message.id.as_str())
        );
        let (back, attempt) = decode(&properties, message.body.clone(), false);
        assert_eq!(
            (back.id, back.job, attempt),
            (message.id, message.job, Attempt::FIRST)
        );
        assert_eq!(
            unix_millis(back.enqueued_at),
            unix_millis(message.enqueued_at)
        );
        assert!(back.headers.is_empty(), "{:?}", back.headers);
    }

    #[test]
    fn an_id_header_wins_over_the_property() {
        let mut table = FieldTable::default();
        table.insert(headers::JOB.into(), AMQPValue::LongString("resize".into()));
        table.insert(
            headers::MESSAGE_ID.into(),
            AMQPValue::LongString("from-header".into()),
        );
        let properties = BasicProperties::default()
            .with_headers(table)
            .with_message_id("from-property".into());
        let (message, _) = decode(&properties, b"{}".to_vec(), false);
        assert_eq!(message.id.as_str(), "from-header");
        assert!(message.headers.is_empty(), "{:?}", message.headers);
    }

    #[test]
    fn redeliveries_add_to_the_attempt_and_x_headers_are_dropped() {
        let mut table = FieldTable::default();
        table.insert(headers::JOB.into(), AMQPValue::LongString("resize".into()));
        table.insert(ATTEMPT.into(), AMQPValue::LongLongInt(2));
        table.insert("x-death".into(), AMQPValue::FieldArray(Default::default()));
        table.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString("q".into()),
        );
        let properties = BasicProperties::default().with_headers(table.clone());
        let (message, attempt) = decode(&properties, vec![], true);
        assert_eq!(attempt.get(), 3, "classic redelivery counts one");
        assert!(message.headers.is_empty(), "{:?}", message.headers);

        table.insert("x-delivery-count".into(), AMQPValue::LongInt(4));
        let properties = BasicProperties::default().with_headers(table);
        assert_eq!(
            decode(&properties, vec![], true).1.get(),
            6,
            "quorum counts each"
        );
    }

    #[test]
    fn a_foreign_message_uses_the_message_id_property() {
        let mut table = FieldTable::default();
        table.insert(headers::JOB.into(), AMQPValue::ShortString("resize".into()));
        let properties = BasicProperties::default()
            .with_headers(table)
            .with_message_id("from-python".into());
        let (message, attempt) = decode(&properties, b"{}".to_vec(), false);
        assert_eq!(
            (message.id.as_str(), message.job.as_str(), attempt.get()),
            ("from-python", "resize", 1)
        );
    }
}
