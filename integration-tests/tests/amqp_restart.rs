//! RabbitMQ restarted (`rabbitmqctl stop_app` / `start_app`) while 5,000 jobs flow: the
//! worker reconnects by itself and every job completes; none is lost.
//!
//! In a test binary of its own: it takes the broker down under every other test too.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::conformance::{
    await_settled, cleanup, declared_queue, enqueue, probe_worker,
};
use integration_tests::harness::{
    Behaviour, Harness, Probe, Recorder, Running, Timing, amqp_broker, eventually,
};

fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl").args(args).status().unwrap_or_else(|error| {
        panic!("cannot run rabbitmqctl ({error}); this test restarts the local RabbitMQ and needs its CLI")
    });
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_load_loses_nothing() {
    const JOBS: u32 = 5_000;
    // RUST_LOG=lapin=debug shows the recovery when investigating.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let amqp = amqp_broker().await;
    let h = Harness {
        broker: Arc::new(amqp.clone()),
        timing: Timing {
            visibility: Duration::from_secs(1),
            slack: Duration::from_millis(500),
        },
    };
    let queue = declared_queue(&h, "restart").await;
    enqueue(
        &h,
        &queue,
        (0..JOBS)
            .map(|key| Probe {
                key,
                behaviour: Behaviour::Sleep(2),
            })
            .collect(),
    )
    .await;
    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(probe_worker(&h, &queue, &recorder).concurrency(16));

    eventually(
        Duration::from_secs(60),
        "a quarter of the jobs to run",
        || async {
            let n = recorder.total_runs();
            if n >= JOBS as usize / 4 {
                Ok(())
            } else {
                Err(format!("{n} runs"))
            }
        },
    )
    .await;
    rabbitmqctl(&["stop_app"]);
    let during = recorder.total_runs();
    eventually(
        Duration::from_secs(10),
        "the worker to see the connection drop",
        || async {
            if amqp.is_connected() {
                Err("still connected".to_owned())
            } else {
                Ok(())
            }
        },
    )
    .await;
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
    eventually(
        Duration::from_secs(60),
        "the worker to reconnect by itself",
        || async {
            if amqp.is_connected() {
                Ok(())
            } else {
                Err("not connected".to_owned())
            }
        },
    )
    .await;

    eventually(
        Duration::from_secs(120),
        "every job to have run",
        || async {
            let done: HashSet<u32> = (0..JOBS)
                .filter(|key| !recorder.runs(*key).is_empty())
                .collect();
            if done.len() == JOBS as usize {
                Ok(())
            } else {
                Err(format!("{} of {JOBS} keys ran", done.len()))
            }
        },
    )
    .await;
    // Jobs running when the connection died ran again (at least once); the queue drains.
    await_settled(&h, &queue, 0, 0).await;
    let report = worker.stop().await;
    assert!(
        during < JOBS as usize,
        "the restart happened mid-flow ({during} runs before it)"
    );
    assert!(report.stats.succeeded >= u64::from(JOBS), "{report:?}");
    assert_eq!(report.stats.dead_lettered, 0);
    cleanup(&h, &queue).await;
}
