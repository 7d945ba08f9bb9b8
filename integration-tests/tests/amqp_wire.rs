//! The documented wire format on RabbitMQ: a message from a plain AMQP client is processed,
//! and retries through the delay queues carry no dead-letter history.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use integration_tests::conformance::{await_worker, cleanup, declared_queue, probe_worker};
use integration_tests::harness::{Harness, Recorder, Running, rabbitmq_harness, raw_amqp_channel};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use longshore::Trigger;
use longshore::spi::{ConsumeOptions, Message};

/// Publishes a probe as a plain AMQP client would: the JSON body, `longshore-job`, and
/// `headers`, on a channel in confirm mode; asserts RabbitMQ took it.
async fn publish_plain(
    channel: &lapin::Channel,
    queue: &longshore::QueueName,
    body: &[u8],
    headers: Vec<(&str, AMQPValue)>,
) {
    let mut table = FieldTable::default();
    table.insert(
        "longshore-job".into(),
        AMQPValue::LongString("probe".into()),
    );
    for (name, value) in headers {
        table.insert(name.into(), value);
    }
    publish_table(channel, queue, body, table).await;
}

/// Publishes `body` with exactly the headers `table`; asserts RabbitMQ took it.
async fn publish_table(
    channel: &lapin::Channel,
    queue: &longshore::QueueName,
    body: &[u8],
    table: FieldTable,
) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_headers(table),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

/// A plain client's connection and a channel of it in confirm mode.
async fn confirming_channel() -> (lapin::Connection, lapin::Channel) {
    let (connection, channel) = raw_amqp_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    (connection, channel)
}

async fn rabbitmq() -> Harness {
    rabbitmq_harness().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_plain_amqp_client_is_processed() {
    let h = rabbitmq().await;
    let queue = declared_queue(&h, "foreign").await;
    let (_connection, channel) = confirming_channel().await;
    // What a producer in another language sends: the JSON body and the job header. One
    // sends the attempt as an integer, as some clients do.
    for (key, attempt) in [(7, None), (8, Some(AMQPValue::LongInt(1)))] {
        let mut headers = vec![("tenant", AMQPValue::LongString("acme".into()))];
        if let Some(attempt) = attempt {
            headers.push(("longshore-attempt", attempt));
        }
        let body = format!(r#"{{"key": {key}, "behaviour": "Succeed"}}"#);
        publish_plain(&channel, &queue, body.as_bytes(), headers).await;
    }
    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(probe_worker(&h, &queue, &recorder));
    await_worker(&h, &worker, "both foreign messages processed", |s| {
        s.succeeded == 2
    })
    .await;
    worker.stop().await;
    for key in [7, 8] {
        let runs = recorder.runs(key);
        assert_eq!(runs.len(), 1);
        assert_eq!((runs[0].attempt, &runs[0].trigger), (1, &Trigger::Queue));
    }
    cleanup(&h, &queue).await;
}

/// RabbitMQ drops a message dead-lettered into a queue it already passed through without a
/// rejection in between ("cycle detection") when `x-death` says so. Retrying three times
/// through the same delay queue must therefore not carry `x-death` along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_through_the_same_delay_queues_are_not_dropped_as_cycles() {
    let h = rabbitmq().await;
    let queue = declared_queue(&h, "cycles").await;
    h.broker
        .publish(&queue, Message::new("probe", b"{}".to_vec()))
        .await
        .unwrap();
    let mut stream = h
        .broker
        .consume(&queue, &ConsumeOptions::default().prefetch(1))
        .await
        .unwrap();
    for expected in 1..=4 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("attempt {expected} never came back: dropped as a cycle?"))
            .unwrap()
            .unwrap();
        assert_eq!(delivery.attempt().get(), expected);
        assert!(
            delivery
                .message()
                .headers
                .keys()
                .all(|name| !name.starts_with("x-"))
        );
        if expected < 4 {
            // 7 ms = levels 0, 1 and 2 every time.
            delivery.retry(Duration::from_millis(7)).await.unwrap();
        } else {
            delivery.ack().await.unwrap();
        }
    }
    drop(stream);
    cleanup(&h, &queue).await;
}

/// A delay longer than the ladder holds (about 49.7 days) travels in hops carrying
/// `longshore-due-at`. The last hop is a message at the work queue that is not due yet: the
/// consumer sends it on for the rest of its delay, and it runs no sooner than its due time.
/// (Waiting out a real 50-day delay is not a test; this is its last hop.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_not_yet_due_hops_until_its_due_time() {
    let h = rabbitmq().await;
    let queue = declared_queue(&h, "hop").await;
    let (_connection, channel) = confirming_channel().await;
    let due = std::time::SystemTime::now() + Duration::from_millis(1500);
    let due_ms = longshore::spi::unix_millis(due);
    let due_header = AMQPValue::LongString(due_ms.to_string().into());
    publish_plain(
        &channel,
        &queue,
        br#"{"key": 1, "behaviour": "Succeed"}"#,
        vec![("longshore-due-at", due_header)],
    )
    .await;
    let mut stream = h
        .broker
        .consume(&queue, &ConsumeOptions::default().prefetch(1))
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("delivered once due")
        .unwrap()
        .unwrap();
    let now = std::time::SystemTime::now();
    assert!(now >= due, "delivered {:?} early", due.duration_since(now));
    assert!(
        now.duration_since(due).unwrap() < Duration::from_millis(500),
        "delivered {:?} late",
        now.duration_since(due)
    );
    assert_eq!(delivery.attempt().get(), 1, "a hop is not an attempt");
    assert!(
        !delivery.message().headers.contains_key("longshore-due-at"),
        "the due time is the adapter's business, not the handler's"
    );
    delivery.ack().await.unwrap();
    drop(stream);
    cleanup(&h, &queue).await;
}

/// A `longshore-job` header of the wrong type is dead-lettered with a reason that says so
/// (not "no `longshore-job` header"); an unreadable `longshore-attempt` runs as attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_typed_headers_are_named_in_the_dead_letter_reason() {
    let h = rabbitmq().await;
    let queue = declared_queue(&h, "wrongtyped").await;
    let (_connection, channel) = confirming_channel().await;
    let wrong = [
        AMQPValue::ByteArray(b"probe".to_vec().into()),
        AMQPValue::FieldTable(FieldTable::default()),
    ];
    for (key, job) in wrong.into_iter().enumerate() {
        let mut table = FieldTable::default();
        table.insert("longshore-job".into(), job);
        table.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        let body = format!(r#"{{"key": {key}, "behaviour": "Succeed"}}"#);
        publish_table(&channel, &queue, body.as_bytes(), table).await;
    }
    // An attempt header that is not a number: the job runs, as attempt 1.
    publish_plain(
        &channel,
        &queue,
        br#"{"key": 9, "behaviour": "Succeed"}"#,
        vec![("longshore-attempt", AMQPValue::LongString("abc".into()))],
    )
    .await;
    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(probe_worker(&h, &queue, &recorder));
    await_worker(&h, &worker, "two dead letters and one job", |s| {
        s.dead_lettered == 2 && s.succeeded == 1
    })
    .await;
    worker.stop().await;
    assert_eq!(recorder.runs(9)[0].attempt, 1);
    assert!(recorder.runs(0).is_empty() && recorder.runs(1).is_empty());
    let dead_letters = h
        .broker
        .dead_letters()
        .expect("RabbitMQ reads dead letters");
    let mut reasons: Vec<String> = dead_letters
        .browse(&queue, 10)
        .await
        .expect("browse")
        .into_iter()
        .map(|letter| {
            assert_eq!(
                letter.message.headers.get("tenant").map(String::as_str),
                Some("acme"),
                "the other headers are kept"
            );
            letter.reason.unwrap_or_default()
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "the `longshore-job` header is a byte array, not a string, so no handler can be chosen",
            "the `longshore-job` header is a table, not a string, so no handler can be chosen",
        ]
    );
    cleanup(&h, &queue).await;
}
