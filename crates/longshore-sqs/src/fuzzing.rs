//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the decoding a consumer
//! does on what SQS delivers. Not a public API.

use std::collections::HashMap;

use aws_sdk_sqs::primitives::Blob;
use aws_sdk_sqs::types::MessageAttributeValue;

use crate::wire;

/// One message attribute as SQS may deliver it.
#[derive(Debug)]
pub enum Attribute {
    /// `String` (and `String.<custom>`).
    String(String),
    /// `Number`: SQS keeps it as text.
    Number(String),
    /// `Binary`.
    Binary(Vec<u8>),
}

/// Whether SQS would deliver such an attribute: a name of 1 to 256 letters, digits, `_`,
/// `-` and `.` (not starting with `AWS.` or `Amazon.`), and a value that is not empty.
fn deliverable(name: &str, value: &Attribute) -> bool {
    let name_ok = (1..=256).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !name.starts_with("AWS.")
        && !name.starts_with("Amazon.");
    let value_ok = match value {
        Attribute::String(text) | Attribute::Number(text) => !text.is_empty(),
        Attribute::Binary(bytes) => !bytes.is_empty(),
    };
    name_ok && value_ok
}

/// Decodes a received message (body, attributes including `longshore-meta`) as the consumer
/// does, then encodes it again and decodes that: the job name, id, body, user headers and
/// Binary attributes survive the round trip. Panics only if decoding is wrong.
pub fn decode_message(body: Option<&str>, attributes: Vec<(String, Attribute)>) {
    let attributes: HashMap<String, MessageAttributeValue> = attributes
        .into_iter()
        .filter(|(name, value)| deliverable(name, value))
        .filter_map(|(name, value)| {
            let built = match value {
                Attribute::String(text) => MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(text),
                Attribute::Number(text) => MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value(text),
                Attribute::Binary(bytes) => MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(Blob::new(bytes)),
            };
            Some((name, built.build().ok()?))
        })
        .collect();
    let (message, _due_at) = wire::decode(body, Some(&attributes), Some("fuzz-sqs-id"));
    let Ok(encoded) = wire::encode(&message, None) else {
        // Too large for SQS, or too many attributes: a clear error, not a panic.
        return;
    };
    let encoded: HashMap<String, MessageAttributeValue> = encoded.into_iter().collect();
    let (again, _) = wire::decode(
        Some(std::str::from_utf8(&message.body).expect("decoded from a str")),
        Some(&encoded),
        Some("fuzz-sqs-id"),
    );
    assert_eq!(again.job, message.job);
    assert_eq!(again.id, message.id);
    assert_eq!(again.body, message.body);
    assert_eq!(again.headers, message.headers);
}
