//! OTLP's protobuf messages for traces, written straight from the SDK's [`SpanData`]: what
//! `opentelemetry-proto`'s conversion and `prost` give, without building the message structs
//! (every id, name and attribute copied into a `Vec` or `String` of its own) only to encode
//! and drop them.
//!
//! Fields at their proto3 default are left out, as `prost` does; a `oneof` value and a
//! present message are always written. Field numbers are those of
//! `opentelemetry/proto/trace/v1/trace.proto`, `common/v1/common.proto` and
//! `resource/v1/resource.proto`.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status, TraceFlags};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `Span.flags`: the W3C trace flags, that the flags say whether the parent is remote, and
/// whether it is.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

/// `value` as a varint: its bytes, and how many of them there are.
fn varint_bytes(mut value: u64) -> ([u8; 10], usize) {
    let (mut bytes, mut used) = ([0; 10], 0);
    while value >= 0x80 {
        bytes[used] = (value as u8) | 0x80;
        value >>= 7;
        used += 1;
    }
    bytes[used] = value as u8;
    (bytes, used + 1)
}

fn varint(out: &mut Vec<u8>, value: u64) {
    let (bytes, used) = varint_bytes(value);
    out.extend_from_slice(&bytes[..used]);
}

/// How many bytes `value` takes as a varint.
pub(super) fn varint_len(value: u64) -> usize {
    // One byte per started group of seven bits; zero takes one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

/// How many bytes a length-delimited field of `len` bytes takes, its key and length included
/// (fields up to 15 have one-byte keys).
pub(super) fn field_len(field: u32, len: usize) -> usize {
    varint_len(u64::from(field << 3)) + varint_len(len as u64) + len
}

/// The key and length of a length-delimited field whose `len` bytes follow.
pub(super) fn len_header(out: &mut Vec<u8>, field: u32, len: usize) {
    key(out, field, LEN);
    varint(out, len as u64);
}

fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    if !value.is_empty() {
        len_header(out, field, value.len());
        out.extend_from_slice(value);
    }
}

fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

fn uint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(out, field, VARINT);
        varint(out, value);
    }
}

fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        key(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

/// A message field whose body `body` writes: its length is written in front of it once
/// known (one byte is kept for it; a body of 128 bytes or more moves up to make room).
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    sized_message(out, field, 1, body);
}

/// A message field whose length is expected to take `kept` bytes (a span's body is 128
/// bytes to 16 KiB: two); the body moves only when it takes another number.
fn sized_message(out: &mut Vec<u8>, field: u32, kept: usize, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    let at = out.len();
    out.resize(at + kept, 0);
    body(out);
    let end = out.len();
    let (prefix, used) = varint_bytes((end - at - kept) as u64);
    if used > kept {
        out.resize(end + used - kept, 0);
        out.copy_within(at + kept..end, at + used);
    } else if used < kept {
        out.copy_within(at + kept..end, at + used);
        out.truncate(end - (kept - used));
    }
    out[at..at + used].copy_from_slice(&prefix[..used]);
}

/// Nanoseconds since the Unix epoch (0 before it), as OTLP counts time.
fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

fn flags(trace_flags: TraceFlags, remote: bool) -> u32 {
    u32::from(trace_flags.to_u8()) | HAS_IS_REMOTE | if remote { IS_REMOTE } else { 0 }
}

/// `AnyValue`'s body.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(value) => bool_value(out, *value),
        Value::I64(value) => int_value(out, *value),
        Value::F64(value) => double_value(out, *value),
        Value::String(value) => string_value(out, value.as_str()),
        Value::Array(array) => message(out, 5, |out| match array {
            Array::Bool(values) => each(out, values, |out, v| bool_value(out, *v)),
            Array::I64(values) => each(out, values, |out, v| int_value(out, *v)),
            Array::F64(values) => each(out, values, |out, v| double_value(out, *v)),
            Array::String(values) => each(out, values, |out, v| string_value(out, v.as_str())),
            // A kind of array this version does not know: its text.
            other => each(out, &[other.to_string()], |out, v| string_value(out, v)),
        }),
        // A kind of value this version does not know: its text.
        other => string_value(out, &other.to_string()),
    }
}

/// `ArrayValue.values`: each element as an `AnyValue`.
fn each<T>(out: &mut Vec<u8>, values: &[T], one: impl Fn(&mut Vec<u8>, &T)) {
    for value in values {
        message(out, 1, |out| one(out, value));
    }
}

// The `oneof` of `AnyValue`: written even at its default.
fn string_value(out: &mut Vec<u8>, value: &str) {
    len_header(out, 1, value.len());
    out.extend_from_slice(value.as_bytes());
}

fn bool_value(out: &mut Vec<u8>, value: bool) {
    key(out, 2, VARINT);
    out.push(u8::from(value));
}

fn int_value(out: &mut Vec<u8>, value: i64) {
    key(out, 3, VARINT);
    varint(out, value as u64);
}

fn double_value(out: &mut Vec<u8>, value: f64) {
    key(out, 4, FIXED64);
    out.extend_from_slice(&value.to_bits().to_le_bytes());
}

/// `KeyValue`s as the repeated field `field`.
fn attributes<'a>(
    out: &mut Vec<u8>,
    field: u32,
    attributes: impl IntoIterator<Item = &'a KeyValue>,
) {
    for attribute in attributes {
        key_value(out, field, attribute.key.as_str(), &attribute.value);
    }
}

fn key_value(out: &mut Vec<u8>, field: u32, name: &str, value: &Value) {
    message(out, field, |out| {
        string(out, 1, name);
        message(out, 2, |out| any_value(out, value));
    });
}

/// One span as the field `spans` (2) of `ScopeSpans`.
pub(super) fn span(out: &mut Vec<u8>, span: &SpanData) {
    sized_message(out, 2, 2, |out| {
        let context = &span.span_context;
        bytes(out, 1, &context.trace_id().to_bytes());
        bytes(out, 2, &context.span_id().to_bytes());
        string(out, 3, &context.trace_state().header());
        if span.parent_span_id != SpanId::INVALID {
            bytes(out, 4, &span.parent_span_id.to_bytes());
        }
        string(out, 5, &span.name);
        uint(out, 6, span_kind(&span.span_kind));
        fixed64(out, 7, nanos(span.start_time));
        fixed64(out, 8, nanos(span.end_time));
        attributes(out, 9, &span.attributes);
        uint(out, 10, u64::from(span.dropped_attributes_count));
        for event in span.events.iter() {
            message(out, 11, |out| {
                fixed64(out, 1, nanos(event.timestamp));
                string(out, 2, &event.name);
                attributes(out, 3, &event.attributes);
                uint(out, 4, u64::from(event.dropped_attributes_count));
            });
        }
        uint(out, 12, u64::from(span.events.dropped_count));
        for link in span.links.iter() {
            message(out, 13, |out| {
                let context = &link.span_context;
                bytes(out, 1, &context.trace_id().to_bytes());
                bytes(out, 2, &context.span_id().to_bytes());
                string(out, 3, &context.trace_state().header());
                attributes(out, 4, &link.attributes);
                uint(out, 5, u64::from(link.dropped_attributes_count));
                fixed32(out, 6, flags(context.trace_flags(), context.is_remote()));
            });
        }
        uint(out, 14, u64::from(span.links.dropped_count));
        message(out, 15, |out| match &span.status {
            Status::Unset => {}
            Status::Ok => uint(out, 3, 1),
            Status::Error { description } => {
                string(out, 2, description);
                uint(out, 3, 2);
            }
        });
        fixed32(
            out,
            16,
            flags(context.trace_flags(), span.parent_span_is_remote),
        );
    });
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// The `Resource` message's body.
pub(super) fn resource(out: &mut Vec<u8>, resource: &Resource) {
    for (name, value) in resource.iter() {
        key_value(out, 1, name.as_str(), value);
    }
}

/// The `ScopeSpans` fields that go before its spans: the scope (1).
pub(super) fn scope(out: &mut Vec<u8>, scope: &InstrumentationScope) {
    message(out, 1, |out| {
        string(out, 1, scope.name());
        string(out, 2, scope.version().unwrap_or_default());
        attributes(out, 3, scope.attributes());
    });
}

/// A `schema_url` field (3 of `ResourceSpans` and of `ScopeSpans`).
pub(super) fn schema_url(out: &mut Vec<u8>, url: Option<&str>) {
    string(out, 3, url.unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::varint_len;

    /// A message's length is right whichever number of bytes was kept for it.
    #[test]
    fn message_lengths_are_written_whatever_was_kept() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            for kept in 1..=3 {
                let mut out = vec![9];
                super::sized_message(&mut out, 2, kept, |out| out.resize(out.len() + len, 7));
                let mut expected = vec![9, 2 << 3 | 2];
                super::varint(&mut expected, len as u64);
                expected.resize(expected.len() + len, 7);
                assert_eq!(out, expected, "{len} bytes, {kept} kept");
            }
        }
    }

    #[test]
    fn varint_lengths() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            super::varint(&mut out, value);
            assert_eq!(varint_len(value), out.len(), "{value}");
        }
    }
}
