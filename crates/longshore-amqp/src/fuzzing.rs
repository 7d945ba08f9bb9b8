//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): the decoding a consumer
//! does on what RabbitMQ delivers. Not a public API.

use crate::{delay, wire};
use lapin::protocol::basic::parse_properties;

/// Parses `properties` as the AMQP content-header property list lapin receives, decodes it
/// with `body` as the consumer does (job, headers, attempt, due time), then encodes the
/// message again and decodes that: the job name, id, body and attempt survive the round
/// trip. Panics only if decoding is wrong.
pub fn decode_delivery(properties: &[u8], body: &[u8], redelivered: bool) {
    let Ok((_, properties)) = parse_properties(properties) else {
        return;
    };
    let (mut message, attempt) = wire::decode(&properties, body.to_vec(), redelivered);
    assert!(attempt.get() >= 1);
    let _ = delay::not_due_yet(&mut message);
    let encoded = wire::encode(&message, attempt, &[]);
    let (again, again_attempt) = wire::decode(&encoded, message.body.clone(), false);
    assert_eq!(again.job, message.job);
    assert_eq!(again.id, message.id);
    assert_eq!(again.body, message.body);
    assert_eq!(again_attempt, attempt);
}
