//! Leases, on brokers that lease deliveries (SQS, memory): redelivery after the visibility
//! timeout, and heartbeats that keep long jobs from running twice.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use longshore::BrokerError;
use longshore::spi::{ConsumeOptions, Message};

use super::{await_settled, cleanup, declared_queue, enqueue, probe_worker};
use crate::harness::{Behaviour, Harness, Probe, Recorder, Running, eventually};

/// A delivery nobody settles comes back after its visibility timeout as the next attempt;
/// the stale holder can no longer settle it.
pub async fn unsettled_deliveries_are_redelivered_after_the_visibility_timeout(h: &Harness) {
    let queue = declared_queue(h, "lease").await;
    h.broker
        .publish(&queue, Message::new("probe", b"{}".to_vec()))
        .await
        .expect("publish");
    let options = ConsumeOptions::default()
        .prefetch(1)
        .visibility_timeout(h.timing.visibility);
    let mut first_consumer = h.broker.consume(&queue, &options).await.expect("consume");
    let wait = h.timing.visibility * 4 + h.timing.slack;
    let hung = tokio::time::timeout(wait, first_consumer.next())
        .await
        .expect("first delivery")
        .expect("stream open")
        .expect("delivery");
    assert_eq!(hung.attempt().get(), 1);
    drop(first_consumer);

    // The holder "hangs": no settlement, no heartbeat. Another consumer gets it back.
    let mut second_consumer = h.broker.consume(&queue, &options).await.expect("consume");
    let again = tokio::time::timeout(wait, second_consumer.next())
        .await
        .expect("redelivery after the visibility timeout")
        .expect("stream open")
        .expect("delivery");
    assert_eq!(
        (&again.message().id, again.attempt().get()),
        (&hung.message().id, 2)
    );

    let stale = hung
        .ack()
        .await
        .expect_err("a stale ack must not delete the redelivered copy");
    assert!(
        matches!(stale.error, BrokerError::LeaseLost { .. }),
        "{:?}",
        stale.error
    );
    again.ack().await.expect("the current holder acks");
    drop(second_consumer);
    await_settled(h, &queue, 0, 0).await;
    cleanup(h, &queue).await;
}

/// A job running three times its visibility timeout is kept invisible by the runtime's
/// heartbeat and runs exactly once.
pub async fn long_jobs_are_extended_and_run_once(h: &Harness) {
    let queue = declared_queue(h, "heartbeat").await;
    let recorder = Arc::new(Recorder::default());
    let runtime = h.timing.visibility * 3;
    enqueue(
        h,
        &queue,
        vec![Probe {
            key: 0,
            behaviour: Behaviour::Sleep(runtime.as_millis() as u64),
        }],
    )
    .await;
    // Two workers on the queue: the second would pick the job up if its lease lapsed.
    let first =
        Running::start(probe_worker(h, &queue, &recorder).visibility_timeout(h.timing.visibility));
    let second =
        Running::start(probe_worker(h, &queue, &recorder).visibility_timeout(h.timing.visibility));
    eventually(
        Duration::from_secs(30) + runtime,
        "the long job to succeed",
        || async {
            let done = first.stats.snapshot().succeeded + second.stats.snapshot().succeeded;
            if done == 1 {
                Ok(())
            } else {
                Err(format!("{done} succeeded"))
            }
        },
    )
    .await;
    await_settled(h, &queue, 0, 0).await;
    let (a, b) = (first.stop().await, second.stop().await);
    assert_eq!(a.stats.succeeded + b.stats.succeeded, 1);
    assert_eq!(
        recorder.runs(0).len(),
        1,
        "the job ran once: {:?}",
        recorder.runs(0)
    );
    assert_eq!(a.stats.abandoned + b.stats.abandoned, 0);
    cleanup(h, &queue).await;
}
