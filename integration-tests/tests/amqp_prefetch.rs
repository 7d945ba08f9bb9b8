//! `basic.qos`: RabbitMQ never hands a consumer more unacked deliveries than its prefetch.

use std::time::Duration;

use futures_util::StreamExt;
use integration_tests::harness::{amqp_broker, unique_queue};
use longshore::spi::{ConsumeOptions, Message};
use longshore::{Broker, QueueOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_deliveries_never_exceed_the_prefetch() {
    let broker = amqp_broker().await;
    let queue = unique_queue("prefetch");
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .unwrap();
    for _ in 0..20 {
        broker
            .publish(&queue, Message::new("probe", b"{}".to_vec()))
            .await
            .unwrap();
    }
    let mut stream = broker
        .consume(&queue, &ConsumeOptions::default().prefetch(5))
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    // With five unacked, the sixth must not come: give the broker a full second to prove it.
    let sixth = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
    assert!(
        sixth.is_err(),
        "a sixth delivery arrived while five were unacked"
    );
    assert_eq!(broker.stats(&queue).await.unwrap().ready, 15);
    // Acking one lets exactly one more in.
    held.pop().unwrap().ack().await.unwrap();
    held.push(
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err()
    );
    for delivery in held {
        delivery.ack().await.unwrap();
    }
    drop(stream);
    broker.delete(&queue).await.unwrap();
}
