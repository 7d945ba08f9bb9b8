//! The conformance suite on a real RabbitMQ (`LONGSHORE_AMQP_URL`, default 127.0.0.1:5672).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use integration_tests::harness::{Harness, amqp_broker, rabbitmq_harness};
use longshore::Broker;

async fn rabbitmq() -> Harness {
    rabbitmq_harness().await
}

integration_tests::conformance_suite!(rabbitmq());

/// Another replica: a broker of its own, with its own connections.
fn another_rabbitmq(_: &Harness) -> BoxFuture<'static, Arc<dyn Broker>> {
    Box::pin(async { Arc::new(amqp_broker().await) as Arc<dyn Broker> })
}

integration_tests::schedule_suite!(rabbitmq(), another_rabbitmq);
