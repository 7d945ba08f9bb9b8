//! Acks on RabbitMQ: a job finishing out of order never gets an earlier, unfinished
//! delivery acked with it. Job 0 is slow, jobs 1–99 fast, all held by one worker process at
//! once; once the 99 are acked the process is killed with SIGKILL while job 0 still runs:
//! RabbitMQ redelivers job 0, and only job 0.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::chaos::Chaos;
use integration_tests::harness::{eventually, unique_queue};
use integration_tests::process::WorkerProcess;
use integration_tests::rabbit_node::RabbitNode;
use longshore::{Broker, Producer, QueueOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_job_is_not_acked_with_the_fast_ones_after_it() {
    // A node of the test's own: rabbitmqctl counts the unacknowledged deliveries.
    let node = RabbitNode::start("acks");
    let broker: Arc<dyn Broker> = longshore::connect(node.url()).await.expect("connect");
    let queue = unique_queue("acks");
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare");
    let producer = Producer::new(Arc::clone(&broker), queue.clone());
    for n in 0..100 {
        let ms = if n == 0 { Some(120_000) } else { None };
        producer
            .enqueue(&Chaos { n, fail: false, ms })
            .await
            .expect("enqueue");
    }
    // Concurrency and prefetch 100: every job is delivered and started at once, the slow
    // one first (delivery tag 1).
    let args = [
        node.url(),
        queue.to_string(),
        "100".into(),
        "100".into(),
        "5".into(),
    ];
    let process = WorkerProcess::start(env!("CARGO_BIN_EXE_chaos_worker"), &args);
    process.expect_line("ready", Duration::from_secs(20));
    for _ in 1..100 {
        process.expect_line("done ", Duration::from_secs(30));
    }
    // The 99 fast jobs are acked: only job 0 is held.
    eventually(
        Duration::from_secs(30),
        "the 99 fast jobs acked",
        || async {
            match node.queue_counts(queue.as_str()) {
                (0, 1) => Ok(()),
                other => Err(format!("ready, unacked: {other:?}")),
            }
        },
    )
    .await;
    process.signal("KILL");
    assert!(!process.wait(Duration::from_secs(5)).success());
    // Job 0 comes back, and nothing else.
    let (ready, unacked) = eventually(
        Duration::from_secs(30),
        "job 0 back in the queue",
        || async {
            match node.queue_counts(queue.as_str()) {
                (ready, 0) => Ok((ready, 0)),
                other => Err(format!("ready, unacked: {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        (ready, unacked),
        (1, 0),
        "only the unfinished job is redelivered"
    );
    let dead = broker.dead_letters().expect("RabbitMQ reads dead letters");
    assert!(dead.browse(&queue, 10).await.expect("browse").is_empty());
}
