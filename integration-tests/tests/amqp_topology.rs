//! Plugging into RabbitMQ topology someone else declared (verify mode), and clear errors
//! when what exists does not fit.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use integration_tests::conformance::{await_worker, enqueue, probe_worker};
use integration_tests::harness::{
    Behaviour, Harness, Probe, RABBITMQ_TIMING, Recorder, Running, amqp_broker, amqp_url,
    raw_amqp_channel, unique_queue,
};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use longshore::amqp::AmqpBroker;
use longshore::spi::headers;
use longshore::{Broker, BrokerError, QueueOptions, Topology, Worker, WorkerError};

fn harness(broker: AmqpBroker) -> Harness {
    Harness {
        broker: Arc::new(broker),
        timing: RABBITMQ_TIMING,
    }
}

/// Someone else's queue with its own DLX: longshore verifies it, changes nothing, and its
/// dead letters go to their DLX with longshore's reason headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_mode_uses_their_queue_and_their_dead_letter_exchange() {
    let (_connection, channel) = raw_amqp_channel().await;
    let queue = unique_queue("theirs");
    let dlx = format!("{queue}-their-dlx");
    let dead = format!("{queue}-their-dead");
    channel
        .exchange_declare(
            dlx.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_declare(
            dead.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            dead.as_str().into(),
            dlx.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    arguments.insert("x-max-priority".into(), AMQPValue::LongInt(5));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .unwrap();

    let broker = AmqpBroker::builder(amqp_url())
        .dead_letter_exchange(queue.clone(), dlx.clone(), None)
        .connect()
        .await
        .unwrap();
    let h = harness(broker);
    let recorder = Arc::new(Recorder::default());
    enqueue(
        &h,
        &queue,
        vec![
            Probe {
                key: 0,
                behaviour: Behaviour::FailPermanently,
            },
            Probe {
                key: 1,
                behaviour: Behaviour::FailUntil(2),
            },
        ],
    )
    .await;
    let worker = Running::start(probe_worker(&h, &queue, &recorder).topology(Topology::Verify));
    await_worker(
        &h,
        &worker,
        "a success after a retry and a dead letter",
        |s| s.succeeded == 1 && s.dead_lettered == 1,
    )
    .await;
    worker.stop().await;

    let mut dead_letters = channel
        .basic_consume(
            dead.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), dead_letters.next())
        .await
        .expect("a dead letter in their queue")
        .unwrap()
        .unwrap();
    let table = delivery.properties.headers().clone().unwrap_or_default();
    let header = |name: &str| match table.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {name}: {other:?}"),
    };
    assert_eq!(
        header(headers::DEAD_REASON),
        "permanent failure: this input can never work"
    );
    assert_eq!(header(headers::JOB), "probe");
    assert_eq!(header(headers::DEAD_ATTEMPT), "1");
    assert!(header(headers::DEAD_AT).parse::<u64>().is_ok());
    delivery.ack(BasicAckOptions::default()).await.unwrap();

    // Their queue kept its own arguments: redeclaring it as they did still succeeds.
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.as_str().into()),
    );
    arguments.insert("x-max-priority".into(), AMQPValue::LongInt(5));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        )
        .await
        .unwrap();
    for name in [queue.as_str(), dead.as_str()] {
        channel
            .queue_delete(name.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    channel
        .exchange_delete(dlx.as_str().into(), Default::default())
        .await
        .unwrap();
}

/// Verify mode fails at start-up when longshore cannot know where dead letters go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_mode_without_a_dead_letter_target_fails_at_start_up() {
    let (_connection, channel) = raw_amqp_channel().await;
    let queue = unique_queue("no-dlx");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let broker = Arc::new(amqp_broker().await);
    let worker = Worker::builder(broker, queue.clone())
        .handler(integration_tests::harness::probe)
        .dependency(Recorder::default())
        .topology(Topology::Verify)
        .build()
        .unwrap();
    let error = worker.run_until_stopped().await.expect_err("verify fails");
    let WorkerError::Topology {
        source: BrokerError::Topology { problem, .. },
        ..
    } = &error
    else {
        panic!("unexpected error: {error:?}");
    };
    assert!(
        problem.contains("does not know where to dead-letter"),
        "{problem}"
    );
    assert!(
        problem.contains(&format!("create the queue `{queue}.dlq`")),
        "{problem}"
    );
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

/// Declaring over an existing queue with other arguments is a clear error, not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_over_a_different_queue_is_a_clear_error() {
    let (_connection, channel) = raw_amqp_channel().await;
    let queue = unique_queue("clash");
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(10));
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .unwrap();
    let broker = amqp_broker().await;
    let error = broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect_err("declare fails");
    let BrokerError::Topology { problem, .. } = &error else {
        panic!("unexpected error: {error:?}")
    };
    assert!(
        problem.contains("exists with other settings than longshore declares"),
        "{problem}"
    );
    assert!(problem.contains("Topology::Verify"), "{problem}");
    // The broker handle still works after the failed declare.
    broker.delete(&queue).await.unwrap();
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .unwrap();
    broker.delete(&queue).await.unwrap();
}
