//! The conformance suite: behaviour every broker must share, written once as functions of a
//! [`Harness`] and called for memory, RabbitMQ and SQS through [`conformance_suite!`] and
//! [`lease_suite!`].
//!
//! [`conformance_suite!`]: crate::conformance_suite
//! [`lease_suite!`]: crate::lease_suite

pub mod leases;
pub mod schedules;
pub mod scope;
pub mod settlement;
pub mod status;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use longshore::spi::{ConsumeOptions, Message};
use longshore::{
    Producer, QueueName, QueueOptions, QueueStats, RetryPolicy, StatsSnapshot, Worker,
    WorkerBuilder,
};

use crate::harness::{Harness, Probe, Recorder, Running, eventually, probe};

/// A fresh queue with a dead-letter queue, declared on the harness's broker.
pub async fn declared_queue(h: &Harness, purpose: &str) -> QueueName {
    let queue = crate::harness::unique_queue(purpose);
    h.broker
        .declare(
            &queue,
            &QueueOptions::default().visibility_timeout(h.timing.visibility),
        )
        .await
        .expect("declare the test queue");
    queue
}

/// A worker for the probe job with fast retries (20 ms base, 100 ms cap, 3 attempts).
pub fn probe_worker(h: &Harness, queue: &QueueName, recorder: &Arc<Recorder>) -> WorkerBuilder {
    Worker::builder(Arc::clone(&h.broker), queue.clone())
        .dependency_arc(Arc::clone(recorder))
        .handler(probe)
        .retry_policy(RetryPolicy::exponential(
            Duration::from_millis(20),
            Duration::from_millis(100),
            3,
        ))
        .queue_options(QueueOptions::default().visibility_timeout(h.timing.visibility))
}

/// Enqueues probes.
pub async fn enqueue(h: &Harness, queue: &QueueName, probes: Vec<Probe>) {
    let producer = Producer::new(Arc::clone(&h.broker), queue.clone());
    for job in probes {
        producer.enqueue(&job).await.expect("enqueue a probe");
    }
}

/// The queue's statistics.
pub async fn stats(h: &Harness, queue: &QueueName) -> QueueStats {
    h.broker.stats(queue).await.expect("queue statistics")
}

/// Waits until a running worker's counters satisfy `done`.
pub async fn await_worker(
    h: &Harness,
    worker: &Running,
    what: &str,
    done: impl Fn(&StatsSnapshot) -> bool,
) {
    eventually(
        Duration::from_secs(30) + h.timing.slack * 4,
        what,
        || async {
            let now = worker.stats.snapshot();
            if done(&now) {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;
}

/// Waits until the queue holds exactly `ready` ready messages and `dead` dead letters, with
/// nothing in flight or delayed (where the broker can tell).
pub async fn await_settled(h: &Harness, queue: &QueueName, ready: u64, dead: u64) {
    eventually(
        Duration::from_secs(15) + h.timing.slack * 4,
        &format!("queue `{queue}` to hold {ready} ready and {dead} dead-lettered"),
        || async {
            let now = stats(h, queue).await;
            let done = now.ready == ready
                && now.delayed.unwrap_or(0) == 0
                && now.in_flight.unwrap_or(0) == 0
                && now.dead_lettered.unwrap_or(dead) == dead;
            if done {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        },
    )
    .await;
}

/// Takes `count` messages off the queue's dead-letter queue (acking them) and returns them.
pub async fn take_dead_letters(h: &Harness, queue: &QueueName, count: usize) -> Vec<Message> {
    let dlq = h.broker.dead_letter_queue(queue);
    let mut stream = h
        .broker
        .consume(&dlq, &ConsumeOptions::default())
        .await
        .expect("consume the dead-letter queue");
    let mut messages = Vec::new();
    while messages.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(15) + h.timing.slack, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "dead-letter queue `{dlq}` yielded {} of {count} messages",
                    messages.len()
                )
            })
            .expect("the dead-letter stream does not end")
            .expect("a dead-letter delivery");
        messages.push(next.message().clone());
        next.ack().await.expect("ack a dead letter");
    }
    messages
}

/// Deletes the test queue and what was declared with it.
pub async fn cleanup(h: &Harness, queue: &QueueName) {
    h.broker.delete(queue).await.expect("delete the test queue");
}

/// Generates one `#[tokio::test]` per shared behaviour for a broker. `$setup` is an async
/// expression giving a [`Harness`].
#[macro_export]
macro_rules! conformance_suite {
    ($setup:expr) => {
        $crate::conformance_suite!(@tests $setup;
            worker::succeeded_jobs_are_acked,
            worker::retryable_failures_retry_until_success,
            worker::exhausted_attempts_dead_letter_with_reason,
            worker::permanent_failures_dead_letter_at_once,
            worker::panics_are_retried_and_the_worker_survives,
            worker::unknown_jobs_dead_letter_with_reason,
            worker::messages_without_job_header_dead_letter,
            worker::oversized_bodies_dead_letter_with_their_size,
            worker::undecodable_bodies_dead_letter_with_reason,
            worker::concurrency_limit_is_never_exceeded,
            worker::graceful_shutdown_finishes_in_flight_and_leaves_the_rest,
            worker::shutdown_deadline_releases_running_jobs,
            worker::enqueue_many_answers_for_every_job_in_order,
            scope::scoped_values_are_fresh_and_disposed_on_every_outcome,
            scope::failing_panicking_and_hanging_disposers_fail_the_attempt_and_settle,
            settlement::retry_redelivers_after_its_delay_with_the_next_attempt,
            settlement::release_returns_the_message_at_once,
            settlement::a_delivery_dropped_unsettled_comes_back_at_once,
            settlement::dead_letter_carries_the_reason,
            settlement::delayed_messages_are_not_delivered_early,
            settlement::jobs_enqueued_at_a_time_are_not_delivered_before_it,
            settlement::publish_to_a_missing_queue_fails,
            settlement::verify_fails_for_a_missing_queue,
        );
    };
    (@tests $setup:expr; $($module:ident :: $test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let harness = $setup.await;
                $crate::conformance::$module::$test(&harness).await;
            }
        )*
    };
}

/// Generates the tests of behaviour only brokers that lease deliveries have (SQS, memory).
#[macro_export]
macro_rules! lease_suite {
    ($setup:expr) => {
        $crate::conformance_suite!(@tests $setup;
            leases::unsettled_deliveries_are_redelivered_after_the_visibility_timeout,
            leases::long_jobs_are_extended_and_run_once,
        );
    };
}
