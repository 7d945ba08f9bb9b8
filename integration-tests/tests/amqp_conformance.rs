//! The conformance suite on a real RabbitMQ (`LONGSHORE_AMQP_URL`, default 127.0.0.1:5672).

use std::sync::Arc;
use std::time::Duration;

use integration_tests::harness::{Harness, Timing, amqp_broker};

async fn rabbitmq() -> Harness {
    Harness {
        broker: Arc::new(amqp_broker().await),
        // RabbitMQ does not lease deliveries; TTL expiry takes a few ms per delay level.
        timing: Timing {
            visibility: Duration::from_secs(1),
            slack: Duration::from_millis(500),
        },
    }
}

integration_tests::conformance_suite!(rabbitmq());
