//! longshore's wire format on SQS: the body is the job as JSON; message attributes carry
//! the rest, packed so users keep room for their own (SQS allows 10 per message):
//!
//! - `longshore-job` (String, required): the job name;
//! - `longshore-meta` (String, optional): a JSON object with the message id (`id`), enqueue
//!   time (`enqueued_at`, Unix ms), the due time of a long delay (`due_at`), the trace
//!   context (`traceparent`, `tracestate`) and, on dead letters, `longshore-dead-*`;
//! - every other String or Number attribute is a user header; a Binary attribute is kept as
//!   it came (through retries, dead letters and redrives), under the header
//!   `longshore-binary:<name>` with its bytes in base64.
//!
//! The attempt is SQS's own `ApproximateReceiveCount`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::MessageAttributeValue;
use longshore_core::BrokerError;
use longshore_core::spi::{Headers, Message, headers, unix_millis};

/// The job-name attribute.
pub(crate) const JOB: &str = headers::JOB;
/// The packed metadata attribute.
pub(crate) const META: &str = "longshore-meta";
/// SQS's limit on message attributes.
pub(crate) const MAX_ATTRIBUTES: usize = 10;
/// SQS's limit on a message: body and attributes together.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

const DUE_AT: &str = "due_at";
/// The header prefix under which a Binary attribute travels.
const BINARY: &str = "longshore-binary:";

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in text.bytes().filter(|b| *b != b'=') {
        let value = BASE64.iter().position(|c| *c == byte)? as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn binary(bytes: Vec<u8>) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("Binary")
        .binary_value(aws_sdk_sqs::primitives::Blob::new(bytes))
        .build()
        .expect("data type is set")
}

/// Headers that travel inside `longshore-meta` rather than as attributes of their own.
fn packed(name: &str) -> bool {
    headers::is_reserved(name) || name == headers::TRACEPARENT || name == headers::TRACESTATE
}

fn string(value: impl Into<String>) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// The attributes for `message`, due at `due_at` when a long delay needs hops.
pub(crate) fn encode(
    message: &Message,
    due_at: Option<SystemTime>,
) -> Result<Vec<(String, MessageAttributeValue)>, BrokerError> {
    let mut meta = BTreeMap::new();
    meta.insert(
        "id".to_owned(),
        serde_json::Value::from(message.id.as_str()),
    );
    meta.insert(
        "enqueued_at".to_owned(),
        serde_json::Value::from(unix_millis(message.enqueued_at)),
    );
    if let Some(due_at) = due_at {
        meta.insert(
            DUE_AT.to_owned(),
            serde_json::Value::from(unix_millis(due_at)),
        );
    }
    // SQS takes no empty attribute; a message without a job name goes without (the worker
    // dead-letters it with the reason).
    let mut attributes = Vec::new();
    if !message.job.as_str().is_empty() {
        attributes.push((JOB.to_owned(), string(message.job.as_str())));
    }
    for (name, value) in message.headers.iter() {
        if let Some(original) = name.strip_prefix(BINARY)
            && original != META
            && (original != JOB || message.job.as_str().is_empty())
            && let Some(bytes) = base64_decode(value)
            && base64_encode(&bytes) == *value
        {
            attributes.push((original.to_owned(), binary(bytes)));
        } else if name.starts_with(BINARY) {
            // Not a Binary attribute longshore kept (or one that would clash with its own):
            // it travels as it is.
            attributes.push((name.clone(), string(value.as_str())));
        } else if packed(name) {
            meta.insert(name.clone(), serde_json::Value::from(value.as_str()));
        } else {
            attributes.push((name.clone(), string(value.as_str())));
        }
    }
    let meta = serde_json::Value::Object(meta.into_iter().collect()).to_string();
    attributes.push((META.to_owned(), string(meta)));
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(BrokerError::InvalidMessage {
            message_id: message.id.clone(),
            problem: format!(
                "SQS allows {MAX_ATTRIBUTES} message attributes; longshore uses 2, so a message can carry at \
                 most {} headers of your own (this one has {})",
                MAX_ATTRIBUTES - 2,
                attributes.len() - 2
            ),
        });
    }
    let size = message.body.len()
        + attributes
            .iter()
            .map(|(name, value)| {
                name.len() + value.data_type().len() + value.string_value().map_or(0, str::len)
            })
            .sum::<usize>();
    if size > MAX_MESSAGE_BYTES {
        return Err(BrokerError::InvalidMessage {
            message_id: message.id.clone(),
            problem: format!(
                "it is {size} bytes with its attributes; SQS takes at most {MAX_MESSAGE_BYTES} (store large \
                 payloads elsewhere and enqueue a reference)"
            ),
        });
    }
    Ok(attributes)
}

/// A received message: longshore's message and, for a long delay, when it is due.
pub(crate) fn decode(
    body: Option<&str>,
    attributes: Option<&std::collections::HashMap<String, MessageAttributeValue>>,
    sqs_id: Option<&str>,
) -> (Message, Option<SystemTime>) {
    let mut wire = Headers::new();
    let mut due_at = None;
    for (name, value) in attributes.into_iter().flatten() {
        let Some(text) = value.string_value() else {
            if let Some(bytes) = value.binary_value() {
                if name == META {
                    tracing::warn!(
                        "ignoring a Binary `longshore-meta` attribute: it must be a String"
                    );
                    continue;
                }
                if name == JOB {
                    wire.insert(
                        headers::WIRE_ERROR.to_owned(),
                        format!("the `{JOB}` attribute is Binary, not String"),
                    );
                }
                wire.insert(format!("{BINARY}{name}"), base64_encode(bytes.as_ref()));
            }
            continue;
        };
        if name == META {
            match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
                Ok(meta) => {
                    for (key, value) in meta {
                        let value = match value {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        };
                        match key.as_str() {
                            "id" => wire.insert(headers::MESSAGE_ID.to_owned(), value),
                            "enqueued_at" => wire.insert(headers::ENQUEUED_AT.to_owned(), value),
                            DUE_AT => {
                                due_at = value
                                    .parse::<u64>()
                                    .ok()
                                    .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
                                None
                            }
                            _ => wire.insert(key, value),
                        };
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "ignoring an unreadable `longshore-meta` attribute")
                }
            }
        } else {
            wire.insert(name.clone(), text.to_owned());
        }
    }
    let message = Message::from_wire(wire, body.unwrap_or_default().as_bytes().to_vec(), sqs_id);
    (message, due_at)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn received(
        attributes: Vec<(String, MessageAttributeValue)>,
    ) -> HashMap<String, MessageAttributeValue> {
        attributes.into_iter().collect()
    }

    #[test]
    fn round_trip_packs_trace_context_and_keeps_user_headers_apart() {
        let mut message = Message::new("resize", br#"{"w":1}"#.to_vec());
        message
            .headers_mut()
            .insert(headers::TRACEPARENT.into(), "00-aa-bb-01".into());
        message.headers_mut().insert("tenant".into(), "acme".into());
        let attributes = encode(&message, None).unwrap();
        let names: Vec<&str> = attributes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![JOB, "tenant", META],
            "trace context rides in the meta attribute"
        );
        let (back, due) = decode(
            Some(r#"{"w":1}"#),
            Some(&received(attributes)),
            Some("sqs-id"),
        );
        assert_eq!(
            (back.id, back.job, back.body),
            (message.id, message.job, message.body)
        );
        assert_eq!(
            back.headers.get(headers::TRACEPARENT).map(String::as_str),
            Some("00-aa-bb-01")
        );
        assert_eq!(back.headers.get("tenant").map(String::as_str), Some("acme"));
        assert_eq!(due, None);
    }

    #[test]
    fn base64_round_trips() {
        for bytes in [
            &b""[..],
            b"f",
            b"fo",
            b"foo",
            b"foob",
            b"\x00\xff\x10binary",
        ] {
            assert_eq!(base64_decode(&base64_encode(bytes)).as_deref(), Some(bytes));
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
    }

    /// Found by `fuzz/fuzz_targets/sqs_message.rs`: a Binary `longshore-meta` came back as
    /// a header, and encoding it again clashed with the meta attribute longshore writes.
    #[test]
    fn a_binary_meta_attribute_is_ignored_and_never_clashes() {
        let received = received(vec![
            (JOB.to_owned(), string("resize")),
            (META.to_owned(), binary(vec![0])),
        ]);
        let (message, _) = decode(Some("{}"), Some(&received), Some("sqs-id"));
        assert!(message.headers.is_empty(), "{:?}", message.headers);
        let mut odd = Message::new("resize", b"{}".to_vec());
        odd.headers_mut()
            .insert(format!("{BINARY}{META}"), "AA==".into());
        odd.headers_mut()
            .insert(format!("{BINARY}{JOB}"), "AA==".into());
        odd.headers_mut()
            .insert(format!("{BINARY}x"), "not base64!".into());
        // Found by the fuzzer too: base64 without its padding is not what decoding makes.
        odd.headers_mut().insert(format!("{BINARY}l"), "in".into());
        let attributes = encode(&odd, None).unwrap();
        let names: Vec<&str> = attributes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.iter().filter(|n| **n == META).count(), 1, "{names:?}");
        assert_eq!(names.iter().filter(|n| **n == JOB).count(), 1, "{names:?}");
        let (again, _) = decode(
            Some("{}"),
            Some(&attributes.into_iter().collect()),
            Some("sqs-id"),
        );
        assert_eq!(
            again.headers, odd.headers,
            "the odd headers travel as they are"
        );
    }

    #[test]
    fn a_binary_job_name_says_so_and_binary_attributes_are_kept() {
        let received = received(vec![
            (JOB.to_owned(), binary(b"resize".to_vec())),
            ("blob".to_owned(), binary(vec![0, 255, 7])),
        ]);
        let (message, _) = decode(Some("{}"), Some(&received), Some("sqs-id"));
        assert_eq!(message.job.as_str(), "");
        assert_eq!(
            message.headers.get(headers::WIRE_ERROR).map(String::as_str),
            Some("the `longshore-job` attribute is Binary, not String")
        );
        let attributes = encode(&message, None).unwrap();
        let blob = attributes.iter().find(|(n, _)| n == "blob").expect("kept");
        assert_eq!(blob.1.data_type(), "Binary");
        assert_eq!(
            blob.1.binary_value().map(|b| b.as_ref().to_vec()),
            Some(vec![0, 255, 7])
        );
        let job = attributes
            .iter()
            .find(|(n, _)| n == JOB)
            .expect("the job attribute, as it came");
        assert_eq!(
            job.1.binary_value().map(|b| b.as_ref().to_vec()),
            Some(b"resize".to_vec())
        );
    }

    #[test]
    fn due_time_travels_in_meta() {
        let message = Message::new("x", vec![]);
        let due = UNIX_EPOCH + Duration::from_millis(1_800_000_000_000);
        let (_, back) = decode(
            Some(""),
            Some(&received(encode(&message, Some(due)).unwrap())),
            None,
        );
        assert_eq!(back, Some(due));
    }

    #[test]
    fn too_many_headers_or_bytes_are_clear_errors() {
        let mut message = Message::new("x", vec![]);
        for n in 0..9 {
            message.headers_mut().insert(format!("h{n}"), "v".into());
        }
        let error = encode(&message, None).unwrap_err().to_string();
        assert!(
            error.contains("at most 8 headers of your own (this one has 9)"),
            "{error}"
        );

        let big = Message::new("x", vec![b'a'; MAX_MESSAGE_BYTES]);
        let error = encode(&big, None).unwrap_err().to_string();
        assert!(error.contains("SQS takes at most 1048576"), "{error}");
    }

    #[test]
    fn a_plain_message_needs_only_the_job_attribute() {
        let attributes = received(vec![(JOB.to_owned(), string("resize"))]);
        let (message, due) = decode(Some("{}"), Some(&attributes), Some("sqs-id"));
        assert_eq!(
            (message.job.as_str(), message.id.as_str(), due),
            ("resize", "sqs-id", None)
        );
    }
}
