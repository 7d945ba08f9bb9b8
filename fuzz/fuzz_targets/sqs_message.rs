//! What SQS delivers, decoded as the consumer does: the body and message attributes
//! (`longshore-job`, `longshore-meta` JSON, user headers, Binary attributes).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use longshore_sqs::fuzzing::{Attribute, decode_message};

#[derive(Arbitrary, Debug)]
enum Kind {
    String(String),
    Number(String),
    Binary(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    body: Option<String>,
    /// Attribute names, biased towards the ones longshore reads.
    attributes: Vec<(u8, String, Kind)>,
}

const KNOWN: [&str; 4] = ["longshore-job", "longshore-meta", "longshore-attempt", "traceparent"];

fuzz_target!(|input: Input| {
    let attributes = input
        .attributes
        .into_iter()
        .map(|(pick, name, kind)| {
            let name = match KNOWN.get(usize::from(pick % 8)) {
                Some(known) => (*known).to_owned(),
                None => name,
            };
            let value = match kind {
                Kind::String(s) => Attribute::String(s),
                Kind::Number(s) => Attribute::Number(s),
                Kind::Binary(b) => Attribute::Binary(b),
            };
            (name, value)
        })
        .collect();
    decode_message(input.body.as_deref(), attributes);
});
