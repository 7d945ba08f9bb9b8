//! What RabbitMQ delivers, decoded as the consumer does: the content header's property
//! list (headers of every AMQP type, message id, timestamp) and the body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, Vec<u8>, Vec<u8>)| {
    let (redelivered, properties, body) = input;
    longshore_amqp::fuzzing::decode_delivery(&properties, &body, redelivered);
});
