//! SQS FIFO queues: jobs of one group run in order, one at a time, even across retries,
//! while different groups run concurrently.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::conformance::{await_settled, await_worker, cleanup};
use integration_tests::harness::{Harness, Running, Timing, sqs_broker, unique_queue};
use longshore::{
    Dep, EnqueueOptions, Job, JobContext, JobError, Producer, QueueName, QueueOptions, RetryPolicy,
    Worker,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

#[derive(Serialize, Deserialize)]
struct Step {
    group: String,
    seq: u32,
}

impl Job for Step {
    const NAME: &'static str = "step";
}

#[derive(Default)]
struct Log {
    order: Mutex<HashMap<String, Vec<u32>>>,
    running: Mutex<HashMap<String, u32>>,
    overlaps: Mutex<u32>,
    groups_at_once: Mutex<(u32, u32)>,
}

async fn step(job: Step, log: Dep<Log>, ctx: JobContext) -> Result<(), JobError> {
    {
        let mut running = log.running.lock().unwrap();
        let count = running.entry(job.group.clone()).or_default();
        *count += 1;
        if *count > 1 {
            *log.overlaps.lock().unwrap() += 1;
        }
        let busy = running.values().filter(|n| **n > 0).count() as u32;
        let mut peak = log.groups_at_once.lock().unwrap();
        peak.1 = peak.1.max(busy);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    *log.running.lock().unwrap().get_mut(&job.group).unwrap() -= 1;
    // The third step of each group fails once: its group must wait for the retry.
    if job.seq == 3 && ctx.attempt.get() == 1 {
        return Err(JobError::retryable("flaky"));
    }
    log.order
        .lock()
        .unwrap()
        .entry(job.group)
        .or_default()
        .push(job.seq);
    Ok(())
}

/// A fresh FIFO queue on the SQS emulator, with a 5 s visibility timeout.
async fn fifo_queue(purpose: &str) -> (Harness, QueueName, QueueOptions) {
    let h = Harness {
        broker: Arc::new(sqs_broker().await),
        timing: Timing {
            visibility: Duration::from_secs(5),
            slack: Duration::from_millis(1500),
        },
    };
    let queue = QueueName::new(format!("{}.fifo", unique_queue(purpose)));
    let options = QueueOptions::default().visibility_timeout(Duration::from_secs(5));
    h.broker.declare(&queue, &options).await.unwrap();
    (h, queue, options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_run_in_order_one_at_a_time_and_concurrently_with_each_other() {
    let (h, queue, options) = fifo_queue("fifo").await;
    let producer = Producer::new(Arc::clone(&h.broker), queue.clone());
    for seq in 1..=6 {
        for group in ["alpha", "beta", "gamma"] {
            let job = Step {
                group: group.into(),
                seq,
            };
            producer
                .enqueue_with(&job, EnqueueOptions::default().group(group))
                .await
                .unwrap();
        }
    }
    let log = Arc::new(Log::default());
    let worker = Running::start(
        Worker::builder(Arc::clone(&h.broker), queue.clone())
            .dependency_arc(Arc::clone(&log))
            .handler(step)
            .concurrency(6)
            .retry_policy(RetryPolicy::exponential(
                Duration::from_millis(100),
                Duration::from_millis(100),
                3,
            ))
            .queue_options(options),
    );
    await_worker(&h, &worker, "18 steps done", |s| s.succeeded == 18).await;
    worker.stop().await;
    let order = log.order.lock().unwrap().clone();
    for group in ["alpha", "beta", "gamma"] {
        assert_eq!(
            order[group],
            vec![1, 2, 3, 4, 5, 6],
            "group {group} in order despite a retry"
        );
    }
    assert_eq!(
        *log.overlaps.lock().unwrap(),
        0,
        "never two of one group at once"
    );
    assert!(
        log.groups_at_once.lock().unwrap().1 >= 2,
        "different groups ran concurrently"
    );
    await_settled(&h, &queue, 0, 0).await;
    cleanup(&h, &queue).await;
}

/// Holds the first step of the group until the test lets it fail.
#[derive(Default)]
struct Hold {
    started: Notify,
    fail: Notify,
    order: Mutex<Vec<u32>>,
}

async fn held_first(job: Step, hold: Dep<Hold>, ctx: JobContext) -> Result<(), JobError> {
    if job.seq == 1 && ctx.attempt.get() == 1 {
        hold.started.notify_one();
        hold.fail.notified().await;
        return Err(JobError::retryable("flaky"));
    }
    hold.order.lock().unwrap().push(job.seq);
    Ok(())
}

/// The pattern behind a CI failure: step 2 was received with step 1 and held; step 1 failed, so step 2 went back
/// to SQS with it. Steps 3 and 4 were sent while step 1 ran. Once step 1's retry was due,
/// LocalStack handed out 1, 3 and 4 while step 2 was still invisible, and 3 and 4 ran first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_handed_back_with_a_retry_is_not_overtaken_by_later_ones() {
    let (h, queue, options) = fifo_queue("fifo-handed-back").await;
    let producer = Producer::new(Arc::clone(&h.broker), queue.clone());
    let send = |seq| {
        let producer = producer.clone();
        async move {
            let job = Step {
                group: "g".into(),
                seq,
            };
            producer
                .enqueue_with(&job, EnqueueOptions::default().group("g"))
                .await
                .unwrap();
        }
    };
    // Both before the worker starts, so that one receive returns both.
    send(1).await;
    send(2).await;
    let hold = Arc::new(Hold::default());
    let worker = Running::start(
        Worker::builder(Arc::clone(&h.broker), queue.clone())
            .dependency_arc(Arc::clone(&hold))
            .handler(held_first)
            .concurrency(4)
            .retry_policy(RetryPolicy::exponential(
                Duration::from_millis(100),
                Duration::from_millis(100),
                3,
            ))
            .queue_options(options),
    );
    tokio::time::timeout(Duration::from_secs(30), hold.started.notified())
        .await
        .expect("step 1 started within 30 s");
    send(3).await;
    send(4).await;
    hold.fail.notify_one();
    await_worker(&h, &worker, "4 steps done", |s| s.succeeded == 4).await;
    worker.stop().await;
    assert_eq!(
        *hold.order.lock().unwrap(),
        vec![1, 2, 3, 4],
        "the group in order despite a retry"
    );
    await_settled(&h, &queue, 0, 0).await;
    cleanup(&h, &queue).await;
}
