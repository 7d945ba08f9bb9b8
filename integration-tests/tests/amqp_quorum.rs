//! The conformance suite on RabbitMQ quorum queues (attempts counted with `x-delivery-count`).

use std::sync::Arc;
use std::time::Duration;

use integration_tests::harness::{Harness, Timing, amqp_url};
use longshore::amqp::{AmqpBroker, QueueType};

async fn quorum() -> Harness {
    let broker = AmqpBroker::builder(amqp_url())
        .queue_type(QueueType::Quorum)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("RabbitMQ is not reachable: {error}. Start it with `rabbitmq-server -detached` or run `scripts/test`"));
    Harness {
        broker: Arc::new(broker),
        timing: Timing {
            visibility: Duration::from_secs(1),
            slack: Duration::from_millis(500),
        },
    }
}

integration_tests::conformance_suite!(quorum());
