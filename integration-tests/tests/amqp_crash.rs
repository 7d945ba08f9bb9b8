//! A worker killed with SIGKILL mid-job: RabbitMQ redelivers its job and the next worker
//! completes it.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::conformance::{
    await_settled, await_worker, cleanup, declared_queue, probe_worker,
};
use integration_tests::harness::{Recorder, Running, amqp_url, rabbitmq_harness};
use integration_tests::process::WorkerProcess;
use longshore::Trigger;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_job_is_redelivered_and_completed() {
    let h = rabbitmq_harness().await;
    let queue = declared_queue(&h, "sigkill").await;
    // The process enqueues one job that stalls on its first attempt, and starts it.
    let args = [
        "stall".to_owned(),
        "1".to_owned(),
        "1".to_owned(),
        amqp_url(),
        queue.to_string(),
    ];
    let process = WorkerProcess::start(env!("CARGO_BIN_EXE_signal_worker"), &args);
    process.expect_line("jobs running", Duration::from_secs(20));
    process.signal("KILL");
    assert!(!process.wait(Duration::from_secs(5)).success());

    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(probe_worker(&h, &queue, &recorder));
    await_worker(&h, &worker, "the redelivered job to succeed", |s| {
        s.succeeded == 1
    })
    .await;
    worker.stop().await;
    let runs = recorder.runs(0);
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].attempt, &runs[0].trigger),
        (2, &Trigger::Retry),
        "a redelivery counts as an attempt"
    );
    await_settled(&h, &queue, 0, 0).await;
    cleanup(&h, &queue).await;
}
