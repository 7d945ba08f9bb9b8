//! Settlement on a broker, driven by hand: retry delays, release, dead-letter, publishing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use longshore::spi::{ConsumeOptions, Delivery, DeliveryStream, Message, headers};
use longshore::{BrokerError, Producer};

use super::{await_settled, cleanup, declared_queue, take_dead_letters};
use crate::harness::{Behaviour, Harness, Probe, unique_queue};

async fn next(h: &Harness, stream: &mut DeliveryStream, timeout: Duration) -> Delivery {
    tokio::time::timeout(timeout + h.timing.slack, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no delivery within {:?}", timeout + h.timing.slack))
        .expect("the stream does not end")
        .expect("a delivery")
}

pub(crate) async fn consumer(h: &Harness, queue: &longshore::QueueName) -> DeliveryStream {
    h.broker
        .consume(queue, &ConsumeOptions::default().prefetch(1))
        .await
        .expect("consume")
}

/// `retry(delay)` brings the message back no sooner than the delay, as the next attempt.
pub async fn retry_redelivers_after_its_delay_with_the_next_attempt(h: &Harness) {
    let queue = declared_queue(h, "settle-retry").await;
    h.broker
        .publish(&queue, Message::new("probe", b"{}".to_vec()))
        .await
        .expect("publish");
    let mut stream = consumer(h, &queue).await;
    let first = next(h, &mut stream, Duration::from_secs(5)).await;
    assert_eq!(first.attempt().get(), 1);
    let id = first.message().id.clone();
    let delay = Duration::from_millis(1500);
    let retried_at = Instant::now();
    first.retry(delay).await.expect("retry");
    let second = next(h, &mut stream, delay + Duration::from_secs(5)).await;
    let waited = retried_at.elapsed();
    assert!(
        waited >= delay,
        "redelivered after {waited:?}, before its {delay:?} delay"
    );
    assert!(
        waited <= delay + Duration::from_secs(3) + h.timing.slack,
        "redelivered late: {waited:?}"
    );
    assert_eq!((second.attempt().get(), &second.message().id), (2, &id));
    second.ack().await.expect("ack");
    drop(stream);
    await_settled(h, &queue, 0, 0).await;
    cleanup(h, &queue).await;
}

/// A delivery dropped without being settled (a job task that ended abnormally) comes back
/// at once, counted as another attempt, not when its lease or channel ends.
pub async fn a_delivery_dropped_unsettled_comes_back_at_once(h: &Harness) {
    let queue = declared_queue(h, "settle-dropped").await;
    h.broker
        .publish(&queue, Message::new("probe", b"{}".to_vec()))
        .await
        .expect("publish");
    let options = ConsumeOptions::default()
        .prefetch(1)
        .visibility_timeout(Duration::from_secs(60));
    let mut stream = h.broker.consume(&queue, &options).await.expect("consume");
    let first = next(h, &mut stream, Duration::from_secs(5)).await;
    let id = first.message().id.clone();
    drop(first);
    let again = next(h, &mut stream, Duration::from_secs(5)).await;
    assert_eq!(again.message().id, id);
    assert_eq!(again.attempt().get(), 2);
    again.ack().await.expect("ack");
    drop(stream);
    cleanup(h, &queue).await;
}

/// `release` hands the message back for immediate redelivery.
pub async fn release_returns_the_message_at_once(h: &Harness) {
    let queue = declared_queue(h, "settle-release").await;
    h.broker
        .publish(&queue, Message::new("probe", b"{}".to_vec()))
        .await
        .expect("publish");
    let mut stream = consumer(h, &queue).await;
    let first = next(h, &mut stream, Duration::from_secs(5)).await;
    let id = first.message().id.clone();
    let released_at = Instant::now();
    first.release().await.expect("release");
    let again = next(h, &mut stream, Duration::from_secs(2)).await;
    assert_eq!(again.message().id, id);
    assert!(released_at.elapsed() < Duration::from_secs(2) + h.timing.slack);
    again.ack().await.expect("ack");
    drop(stream);
    await_settled(h, &queue, 0, 0).await;
    cleanup(h, &queue).await;
}

/// `dead_letter(reason)` moves the message, body and headers kept, with the reason.
pub async fn dead_letter_carries_the_reason(h: &Harness) {
    let queue = declared_queue(h, "settle-dead").await;
    let mut message = Message::new("probe", br#"{"k":1}"#.to_vec());
    message.headers_mut().insert("tenant".into(), "acme".into());
    let id = message.id.clone();
    h.broker.publish(&queue, message).await.expect("publish");
    let mut stream = consumer(h, &queue).await;
    let delivery = next(h, &mut stream, Duration::from_secs(5)).await;
    delivery
        .dead_letter("card expired")
        .await
        .expect("dead-letter");
    drop(stream);
    await_settled(h, &queue, 0, 1).await;
    let dead = take_dead_letters(h, &queue, 1).await.remove(0);
    assert_eq!(
        (&dead.id, dead.job.as_str(), &dead.body[..]),
        (&id, "probe", &br#"{"k":1}"#[..])
    );
    let header = |name: &str| dead.headers.get(name).cloned().unwrap_or_default();
    assert_eq!(header(headers::DEAD_REASON), "card expired");
    assert_eq!(header(headers::DEAD_ATTEMPT), "1");
    assert_eq!(header(headers::DEAD_QUEUE), queue.as_str());
    assert!(header(headers::DEAD_AT).parse::<u64>().is_ok());
    assert_eq!(header("tenant"), "acme");
    cleanup(h, &queue).await;
}

/// A delayed job is not delivered before its delay.
pub async fn delayed_messages_are_not_delivered_early(h: &Harness) {
    let queue = declared_queue(h, "delayed").await;
    let producer = Producer::new(Arc::clone(&h.broker), queue.clone());
    let delay = Duration::from_secs(2);
    let enqueued_at = Instant::now();
    producer
        .enqueue_in(
            &Probe {
                key: 0,
                behaviour: Behaviour::Succeed,
            },
            delay,
        )
        .await
        .expect("enqueue with delay");
    let mut stream = consumer(h, &queue).await;
    let delivery = next(h, &mut stream, delay + Duration::from_secs(5)).await;
    let waited = enqueued_at.elapsed();
    assert!(
        waited >= delay,
        "delivered after {waited:?}, before its {delay:?} delay"
    );
    assert!(
        waited <= delay + Duration::from_secs(3) + h.timing.slack,
        "delivered late: {waited:?}"
    );
    delivery.ack().await.expect("ack");
    drop(stream);
    cleanup(h, &queue).await;
}

/// A job enqueued for a wall-clock time is not delivered before it.
pub async fn jobs_enqueued_at_a_time_are_not_delivered_before_it(h: &Harness) {
    let queue = declared_queue(h, "at").await;
    let producer = Producer::new(Arc::clone(&h.broker), queue.clone());
    let due = std::time::SystemTime::now() + Duration::from_millis(1500);
    producer
        .enqueue_at(
            &Probe {
                key: 0,
                behaviour: Behaviour::Succeed,
            },
            due,
        )
        .await
        .expect("enqueue at a time");
    let mut stream = consumer(h, &queue).await;
    let delivery = next(h, &mut stream, Duration::from_secs(6)).await;
    let now = std::time::SystemTime::now();
    assert!(now >= due, "delivered {:?} early", due.duration_since(now));
    assert!(
        now.duration_since(due).unwrap_or_default() <= Duration::from_secs(1) + h.timing.slack,
        "delivered late"
    );
    delivery.ack().await.expect("ack");
    drop(stream);
    cleanup(h, &queue).await;
}

/// Publishing to a queue that does not exist is an error, never a silent drop.
pub async fn publish_to_a_missing_queue_fails(h: &Harness) {
    let missing = unique_queue("missing");
    let error = h
        .broker
        .publish(&missing, Message::new("probe", b"{}".to_vec()))
        .await
        .expect_err("publishing to a missing queue fails");
    assert!(
        matches!(error, BrokerError::QueueNotFound { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains(missing.as_str()), "{error}");
}

/// Verify mode fails with a clear error for a queue nobody declared.
pub async fn verify_fails_for_a_missing_queue(h: &Harness) {
    let missing = unique_queue("missing");
    let error = h.broker.verify(&missing).await.expect_err("verify fails");
    assert!(
        matches!(error, BrokerError::QueueNotFound { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "queue `{missing}` does not exist; declare it (Topology::Declare) or create it on the broker"
        )
    );
}
