//! The conformance suite on RabbitMQ quorum queues (attempts counted with `x-delivery-count`).

use std::sync::Arc;

use integration_tests::harness::{Harness, RABBITMQ_TIMING, amqp_url};
use longshore::amqp::{AmqpBroker, QueueType};

async fn quorum() -> Harness {
    let broker = AmqpBroker::builder(amqp_url())
        .queue_type(QueueType::Quorum)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("RabbitMQ is not reachable: {error}. Start it with `rabbitmq-server -detached` or run `scripts/test`"));
    Harness {
        broker: Arc::new(broker),
        timing: RABBITMQ_TIMING,
    }
}

integration_tests::conformance_suite!(quorum());
