//! RabbitMQ restarted (`rabbitmqctl stop_app` / `start_app`) while 5,000 jobs flow: the
//! worker reconnects by itself, its readiness says so, and every job completes; none is
//! lost. On a RabbitMQ node of the test's own, so the shared broker is never stopped.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::conformance::{
    await_settled, cleanup, declared_queue, enqueue, probe_worker,
};
use integration_tests::harness::{
    Behaviour, Harness, Probe, RABBITMQ_TIMING, Recorder, Running, eventually, http_get,
};
use integration_tests::rabbit_node::RabbitNode;
use longshore::Broker as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_load_loses_nothing() {
    const JOBS: u32 = 5_000;
    // RUST_LOG=lapin=debug shows the recovery when investigating.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let node = RabbitNode::start("restart");
    let amqp = longshore::amqp::AmqpBroker::connect(node.url())
        .await
        .expect("connect to the test's node");
    let h = Harness {
        broker: Arc::new(amqp.clone()),
        timing: RABBITMQ_TIMING,
    };
    let queue = declared_queue(&h, "restart").await;
    enqueue(
        &h,
        &queue,
        (0..JOBS)
            .map(|key| Probe {
                key,
                // 5,000 × 40 ms over 16 slots is a flow of 12 s or more: stopping the broker
                // (a few seconds of Erlang CLI) lands well inside it.
                behaviour: Behaviour::Sleep(40),
            })
            .collect(),
    )
    .await;
    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(probe_worker(&h, &queue, &recorder).concurrency(16));
    let probes = longshore::http::serve(
        "127.0.0.1:0",
        longshore::http::probes(vec![worker.health.clone()], None),
    )
    .await
    .expect("the health listener starts");
    let readyz = || http_get(probes.local_addr(), "/readyz");

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
    assert_eq!(readyz().await, (200, "ready\n".to_owned()));
    tokio::task::block_in_place(|| node.stop_app());
    // Read once the broker is down: what ran before the restart.
    let during = recorder.total_runs();
    assert!(
        during < JOBS as usize,
        "the restart must happen mid-flow, yet all {JOBS} jobs ran before the broker stopped"
    );
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
    let (status, body) = readyz().await;
    assert_eq!(status, 503, "unready while the broker is down: {body}");
    assert!(body.contains("lost its rabbitmq connection"), "{body}");
    assert_eq!(
        http_get(probes.local_addr(), "/healthz").await.0,
        200,
        "alive all the same: the runtime loop runs"
    );
    tokio::task::block_in_place(|| node.start_app());
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
        Duration::from_secs(30),
        "/readyz to answer 200 again",
        || async {
            match readyz().await {
                (200, _) => Ok(()),
                other => Err(format!("{other:?}")),
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
    assert!(report.stats.succeeded >= u64::from(JOBS), "{report:?}");
    assert_eq!(report.stats.dead_lettered, 0);
    cleanup(&h, &queue).await;
}
