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

/// A worker whose retry policy outlasts the quorum queue's delivery limit is told at start
/// (and refuses to start with strict checks).
#[tokio::test]
async fn a_delivery_limit_below_the_attempts_is_found_at_start() {
    use integration_tests::conformance::declared_queue;
    use integration_tests::harness::{Recorder, probe};
    use longshore::{RetryPolicy, Worker, WorkerError};

    let broker = AmqpBroker::builder(amqp_url())
        .queue_type(QueueType::Quorum)
        .delivery_limit(3)
        .connect()
        .await
        .unwrap_or_else(|error| panic!("RabbitMQ is not reachable: {error}. Start it with `rabbitmq-server -detached` or run `scripts/test`"));
    let h = Harness {
        broker: Arc::new(broker),
        timing: RABBITMQ_TIMING,
    };
    let queue = declared_queue(&h, "quorum-check").await;
    let worker = Worker::builder(Arc::clone(&h.broker), queue.clone())
        .dependency_arc(Arc::new(Recorder::default()))
        .handler(probe)
        .retry_policy(RetryPolicy::exponential(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_millis(10),
            5,
        ))
        .strict_checks(true)
        .build()
        .expect("builds");
    match worker.run_until_stopped().await {
        Err(WorkerError::Check { findings, .. }) => {
            assert!(
                findings.iter().any(|f| f
                    .message
                    .contains("after 3 deliveries, but jobs may take 5 attempts")),
                "{findings:?}"
            );
        }
        other => panic!("the check should stop the worker: {other:?}"),
    }
}
