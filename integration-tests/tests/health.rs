//! The health listener: `/healthz` follows the worker's loop, `/readyz` its consuming,
//! `/metrics` its counters and queue depth; anything else gets a clear HTTP error. (Readiness
//! lost with the broker connection is shown in `amqp_restart.rs`, which restarts RabbitMQ.)

use std::sync::Arc;
use std::time::Duration;

use integration_tests::conformance::{declared_queue, enqueue, probe_worker};
use integration_tests::harness::{
    Behaviour, Probe, Recorder, Running, eventually, http_get, memory_harness,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_the_worker_from_start_to_stop() {
    let h = memory_harness();
    let queue = declared_queue(&h, "health").await;
    let recorder = Arc::new(Recorder::default());
    let worker = probe_worker(&h, &queue, &recorder)
        .build()
        .expect("the worker builds");
    let (health, shutdown, stats) = (worker.health(), worker.shutdown_handle(), worker.stats());
    let server = longshore::http::serve(
        "127.0.0.1:0",
        longshore::http::probes(vec![health.clone()], None),
    )
    .await
    .expect("the health listener starts");
    let at = server.local_addr();

    // Built but not running: neither alive nor ready.
    assert_eq!(http_get(at, "/healthz").await.0, 503);
    let (status, body) = http_get(at, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("is not running"), "{body}");

    let running = tokio::spawn(worker.run_until_stopped());
    eventually(Duration::from_secs(5), "/readyz to answer 200", || async {
        match http_get(at, "/readyz").await {
            (200, body) if body == "ready\n" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(http_get(at, "/healthz").await, (200, "ok\n".to_owned()));

    enqueue(
        &h,
        &queue,
        vec![
            Probe {
                key: 1,
                behaviour: Behaviour::Succeed,
            },
            Probe {
                key: 2,
                behaviour: Behaviour::FailPermanently,
            },
        ],
    )
    .await;
    eventually(Duration::from_secs(5), "both jobs to settle", || async {
        let now = stats.snapshot();
        if now.succeeded == 1 && now.dead_lettered == 1 {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
    let (status, metrics) = http_get(at, "/metrics").await;
    assert_eq!(status, 200);
    let labels = format!("system=\"memory\",queue=\"{queue}\"");
    for line in [
        format!("longshore_jobs_started_total{{{labels}}} 2"),
        format!("longshore_jobs_succeeded_total{{{labels}}} 1"),
        format!("longshore_jobs_dead_lettered_total{{{labels}}} 1"),
        format!("longshore_jobs_in_flight{{{labels}}} 0"),
        format!("longshore_queue_depth{{{labels},state=\"ready\"}} 0"),
        format!("longshore_queue_depth{{{labels},state=\"dead_lettered\"}} 1"),
        format!("longshore_worker_ready{{{labels}}} 1"),
        "# TYPE longshore_jobs_started counter".to_owned(),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "`{line}` missing from:\n{metrics}"
        );
    }

    shutdown.shutdown();
    running.await.expect("no panic").expect("stops cleanly");
    assert_eq!(
        http_get(at, "/healthz").await.0,
        503,
        "not alive once stopped"
    );
    assert_eq!(
        http_get(at, "/readyz").await.0,
        503,
        "not ready once stopped"
    );
}

#[tokio::test]
async fn bad_requests_get_clear_http_errors() {
    let h = memory_harness();
    let queue = declared_queue(&h, "health-bad").await;
    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(probe_worker(&h, &queue, &recorder));
    let server = longshore::http::serve(
        "127.0.0.1:0",
        longshore::http::probes(vec![worker.health.clone()], None),
    )
    .await
    .expect("the health listener starts");
    let at = server.local_addr();
    assert_eq!(http_get(at, "/nothing-here").await.0, 404);
    assert_eq!(
        http_get(at, "/healthz?verbose=1").await.0,
        200,
        "queries are ignored"
    );

    let raw = |request: &'static [u8]| async move {
        let mut stream = tokio::net::TcpStream::connect(at).await.expect("connect");
        stream.write_all(request).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    };
    assert!(
        raw(b"POST /healthz HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405")
    );
    assert!(
        raw(b"\xff\xfe garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    let huge = Box::leak(
        format!("GET /healthz HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(10_000)).into_boxed_str(),
    );
    let refused = raw(huge.as_bytes()).await;
    assert!(
        refused.starts_with("HTTP/1.1 431"),
        "an oversized head is refused: {refused}"
    );
    worker.stop().await;
}
