//! The conformance suite on a real RabbitMQ (`LONGSHORE_AMQP_URL`, default 127.0.0.1:5672).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use integration_tests::harness::{Harness, Timing, amqp_broker};
use longshore::Broker;

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

/// Another replica: a broker of its own, with its own connections.
fn another_rabbitmq(_: &Harness) -> BoxFuture<'static, Arc<dyn Broker>> {
    Box::pin(async { Arc::new(amqp_broker().await) as Arc<dyn Broker> })
}

integration_tests::schedule_suite!(rabbitmq(), another_rabbitmq);
