//! The example pair (`examples/orders`) as docker-compose runs it, against RabbitMQ and a
//! real OTLP receiver standing in for Jaeger: the producer's `checkout` → `send` → the
//! worker's `process` → the job's own `reserve stock` and `charge card` spans form one
//! trace per order; each order's status (Redis) ends succeeded with the job's progress and
//! result, served by the worker's status API; the worker reports ready, and SIGTERM stops
//! it gracefully with its telemetry flushed.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use integration_tests::harness::{amqp_url, eventually, http_get, redis_url, unique_queue};
use integration_tests::otlp::{OtlpReceiver, Span, kind};
use integration_tests::process::WorkerProcess;

/// A binary of the `longshore-example-orders` package, built next to this test.
fn example_binary(name: &str) -> String {
    let dir: PathBuf = std::env::current_exe()
        .expect("the test's path")
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .to_path_buf();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p longshore-example-orders` (scripts/test does)",
        path.display()
    );
    path.display().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_producer_queue_job_and_the_jobs_own_spans() {
    const ORDERS: usize = 7; // order 7 fails once (payment provider busy) and is retried
    let receiver = OtlpReceiver::start();
    let queue = unique_queue("orders");
    let health = format!("127.0.0.1:{}", free_port());
    let status_api = format!("127.0.0.1:{}", free_port());
    let env = |service: &str| {
        vec![
            ("LONGSHORE_URL", amqp_url()),
            ("LONGSHORE_QUEUE", queue.to_string()),
            ("LONGSHORE_HEALTH_ADDR", health.clone()),
            ("LONGSHORE_STATUS_URL", redis_url()),
            ("LONGSHORE_STATUS_ADDR", status_api.clone()),
            ("LONGSHORE_STATUS_PUBLIC", format!("http://{status_api}")),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("ORDERS", ORDERS.to_string()),
            ("RUST_LOG", "info".to_owned()),
        ]
    };
    let worker =
        WorkerProcess::start_with_env(&example_binary("orders-worker"), &[], &env("orders-worker"));
    let address = health.parse().expect("an address");
    eventually(
        Duration::from_secs(30),
        "the worker's /readyz to answer 200",
        || async {
            match tokio::net::TcpStream::connect(address).await {
                Ok(_) => match http_get(address, "/readyz").await {
                    (200, _) => Ok(()),
                    other => Err(format!("{other:?}")),
                },
                Err(error) => Err(error.to_string()),
            }
        },
    )
    .await;
    let probe = Command::new(example_binary("orders-worker"))
        .arg("healthcheck")
        .envs(env("orders-worker"))
        .status()
        .expect("run the health check");
    assert!(
        probe.success(),
        "`orders-worker healthcheck` passes while ready"
    );

    let produced = Command::new(example_binary("orders-producer"))
        .envs(env("orders-producer"))
        .output()
        .expect("run the producer");
    assert!(
        produced.status.success(),
        "the producer enqueues and exits 0"
    );
    // It prints each order's job id and how to watch it.
    let printed = String::from_utf8_lossy(&produced.stdout);
    let ids: Vec<String> = printed
        .lines()
        .filter_map(|line| {
            line.split_once(": job ")?
                .1
                .split(';')
                .next()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(ids.len(), ORDERS, "{printed}");
    assert!(printed.contains(&format!(
        "curl -N http://{status_api}/jobs/{}/events",
        ids[6]
    )));
    let status_address = status_api.parse().expect("an address");
    for id in &ids {
        let status: serde_json::Value =
            eventually(Duration::from_secs(30), "the order's status", || async {
                let (code, body) = http_get(status_address, &format!("/jobs/{id}")).await;
                let status: serde_json::Value =
                    serde_json::from_str(&body).map_err(|e| format!("{code} {e}: {body}"))?;
                if status["state"] == "succeeded" {
                    Ok(status)
                } else {
                    Err(body)
                }
            })
            .await;
        assert_eq!(status["progress"]["message"], "card charged", "{status}");
        assert!(
            status["result"]["charged_cents"].as_u64().is_some(),
            "{status}"
        );
    }

    // Per order: checkout + send (producer), 1 process (2 for order 7), reserve + charge
    // (twice for order 7).
    let expected = ORDERS * 5 + 3;
    let spans = eventually(Duration::from_secs(30), "every order's spans", || async {
        let spans: Vec<Span> = receiver.spans();
        if spans.len() >= expected {
            Ok(spans)
        } else {
            Err(format!("{} of {expected} spans", spans.len()))
        }
    })
    .await;

    let checkouts: Vec<&Span> = spans.iter().filter(|s| s.name == "checkout").collect();
    assert_eq!(checkouts.len(), ORDERS);
    for checkout in checkouts {
        assert_eq!(checkout.service, "orders-producer");
        let trace: Vec<&Span> = spans
            .iter()
            .filter(|s| s.trace_id == checkout.trace_id)
            .collect();
        let child_of = |parent: &Span, name: &str| -> Vec<&Span> {
            trace
                .iter()
                .copied()
                .filter(|s| s.parent_span_id == parent.span_id && s.name == name)
                .collect()
        };
        let send = child_of(checkout, &format!("send {queue}"));
        assert_eq!(send.len(), 1, "checkout → send: {trace:#?}");
        assert_eq!(send[0].kind, kind::PRODUCER);
        let mut processes = child_of(send[0], &format!("process {queue}"));
        processes.sort_by_key(|p| p.attribute("longshore.job.attempt").map(str::to_owned));
        assert!(!processes.is_empty(), "send → process: {trace:#?}");
        for process in &processes {
            assert_eq!(process.kind, kind::CONSUMER);
            assert_eq!(process.service, "orders-worker");
            assert_eq!(process.attribute("messaging.system"), Some("rabbitmq"));
            assert_eq!(
                child_of(process, "reserve stock").len(),
                1,
                "process → reserve stock"
            );
            assert_eq!(
                child_of(process, "charge card").len(),
                1,
                "process → charge card"
            );
        }
        assert_eq!(
            processes.last().map(|p| p.status_code),
            Some(0),
            "the last attempt succeeded"
        );
    }

    worker.signal("TERM");
    worker.expect_line("bye", Duration::from_secs(20));
    let status = worker.wait(Duration::from_secs(20));
    assert!(
        status.success(),
        "SIGTERM stops the worker gracefully: {status:?}"
    );
    let broker = integration_tests::harness::amqp_broker().await;
    longshore::Broker::delete(&broker, &queue)
        .await
        .expect("delete the queue");
}
