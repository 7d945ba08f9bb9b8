//! The dashboard: its API's guard (read-only without a token, actions need it, no request
//! from another site), and the page in a real headless Chromium against a worker on
//! RabbitMQ: queue depths change, a job found by id is watched to the end, a dead letter is
//! redriven with the admin token and refused without it.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::browser::Browser;
use integration_tests::cli::ReportV2;
use integration_tests::conformance::declared_queue;
use integration_tests::harness::{Harness, Running, eventually, memory_harness, rabbitmq_harness};
use longshore::status::{JobStatuses, MemoryStatusStore};
use longshore::{Job, JobContext, JobError, Producer, Worker};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A job that takes a while and says how far it got.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Render {
    pages: u32,
}

impl Job for Render {
    const NAME: &'static str = "render";
}

async fn render(job: Render, ctx: JobContext) -> Result<(), JobError> {
    for page in 1..=job.pages {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ctx.progress(
            f64::from(page) / f64::from(job.pages),
            format!("rendered {page} of {}", job.pages),
        );
    }
    Ok(())
}

/// `METHOD path` with `headers`: the status code and the body.
async fn request(
    at: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(at).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {at}\r\nconnection: close\r\ncontent-length: 0\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn dead_letter_unknown_job(h: &Harness, queue: &longshore::QueueName) {
    Producer::new(Arc::clone(&h.broker), queue.clone())
        .enqueue(&ReportV2 { n: 1 })
        .await
        .expect("enqueue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_need_the_token_and_no_other_site_gets_through() {
    let h = memory_harness();
    let queue = declared_queue(&h, "dashboard-guard").await;
    dead_letter_unknown_job(&h, &queue).await;
    let worker =
        Running::start(Worker::builder(Arc::clone(&h.broker), queue.clone()).handler(render));
    eventually(
        Duration::from_secs(10),
        "the unknown job to be dead-lettered",
        || async {
            match worker.stats.snapshot().dead_lettered {
                1 => Ok(()),
                n => Err(format!("{n}")),
            }
        },
    )
    .await;
    let redrive = format!("/api/queues/{queue}/redrive");

    let read_only = longshore::http::Dashboard::new(Arc::clone(&h.broker)).queues([queue.as_str()]);
    let server = longshore::http::serve("127.0.0.1:0", read_only.router())
        .await
        .expect("serve");
    let at = server.local_addr();
    let (status, page) = request(at, "GET", "/", &[]).await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>longshore</title>"), "the page");
    let (status, overview) = request(at, "GET", "/api/overview", &[]).await;
    assert_eq!(status, 200, "{overview}");
    let overview: serde_json::Value = serde_json::from_str(&overview).expect("JSON");
    assert_eq!(overview["read_only"], true);
    assert_eq!(overview["queues"][0]["dead_lettered"], 1, "{overview}");
    let (status, body) = request(at, "POST", &redrive, &[("x-longshore-token", "anything")]).await;
    assert_eq!(status, 403, "read-only: {body}");
    assert!(body.contains("read-only"), "{body}");

    let guarded = longshore::http::Dashboard::new(Arc::clone(&h.broker))
        .queues([queue.as_str()])
        .admin_token("s3cret");
    let server = longshore::http::serve("127.0.0.1:0", guarded.router())
        .await
        .expect("serve");
    let at = server.local_addr();
    let (status, body) = request(at, "POST", &redrive, &[]).await;
    assert_eq!(status, 401, "no token: {body}");
    let (status, body) = request(at, "POST", &redrive, &[("x-longshore-token", "guess")]).await;
    assert_eq!(status, 401, "a wrong token: {body}");
    let origin = "http://evil.example";
    let (status, body) = request(
        at,
        "POST",
        &redrive,
        &[("x-longshore-token", "s3cret"), ("origin", origin)],
    )
    .await;
    assert_eq!(status, 403, "another site, even with the token: {body}");
    let (status, body) = request(at, "GET", "/api/overview", &[("origin", origin)]).await;
    assert_eq!(status, 403, "another site cannot read either: {body}");
    let (status, body) = request(at, "POST", &redrive, &[("x-longshore-token", "s3cret")]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"moved\":1"), "{body}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser() {
    let h = rabbitmq_harness().await;
    let queue = declared_queue(&h, "dashboard-page").await;
    let statuses = JobStatuses::new(MemoryStatusStore::new());
    let producer =
        Producer::new(Arc::clone(&h.broker), queue.clone()).with_status(statuses.clone());
    let dashboard = longshore::http::Dashboard::new(Arc::clone(&h.broker))
        .statuses(statuses.clone())
        .admin_token("s3cret");
    let worker = Worker::builder(Arc::clone(&h.broker), queue.clone())
        .handler(render)
        .status(statuses.clone())
        .telemetry(dashboard.failure_hooks())
        .concurrency(2)
        .build()
        .expect("builds");
    let dashboard = dashboard.workers(vec![worker.health()]);
    let server = longshore::http::serve("127.0.0.1:0", dashboard.router())
        .await
        .expect("serve");
    let url = format!("http://{}/", server.local_addr());

    // Six jobs wait before any worker runs.
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            producer
                .enqueue(&Render { pages: 4 })
                .await
                .expect("enqueue"),
        );
    }
    dead_letter_unknown_job(&h, &queue).await;

    let browser = Browser::start().await;
    browser.goto(&url).await;
    let row = format!("#queues tr[data-queue='{queue}']");
    // Cells: queue, ready, in flight, delayed, dead letters, done/s, actions.
    browser
        .await_cells(&row, "seven jobs ready", Duration::from_secs(20), |cells| {
            cells.first() == Some(&queue.to_string())
                && cells.get(1).map(String::as_str) == Some("7")
        })
        .await;

    // The worker starts: the depth falls, and a job followed by id runs to the end.
    let shutdown = worker.shutdown_handle();
    let running = tokio::spawn(worker.run_until_stopped());
    let id = ids[5].to_string();
    browser.type_into("#job-id", &id).await;
    browser.click("#lookup button[type=submit]").await;
    browser
        .await_text(
            "#job-state",
            "the job to run",
            Duration::from_secs(30),
            |s| s.contains("running") || s.contains("succeeded"),
        )
        .await;
    let done = browser
        .await_text(
            "#job-state",
            "the job to succeed",
            Duration::from_secs(30),
            |s| s.contains("succeeded"),
        )
        .await;
    assert!(done.contains("render on"), "{done}");
    browser
        .await_cells(
            &row,
            "the queue to drain",
            Duration::from_secs(30),
            |cells| {
                cells.get(1).map(String::as_str) == Some("0")
                    && cells.get(4).map(String::as_str) == Some("1")
            },
        )
        .await;
    browser
        .await_text(
            "#failures tbody",
            "the failure listed",
            Duration::from_secs(10),
            |t| t.contains("report_v2") && t.contains("no handler is registered"),
        )
        .await;

    // The dead letter: refused without the token, moved back with it.
    browser.click(&format!("{row} button")).await;
    browser
        .await_text(
            "#letters tbody",
            "the dead letter listed",
            Duration::from_secs(10),
            |t| t.contains("report_v2"),
        )
        .await;
    browser
        .eval(
            "window.confirm = () => true; return true;",
            serde_json::json!([]),
        )
        .await;
    browser
        .click("#letters tbody tr button:nth-of-type(2)")
        .await;
    browser
        .await_text(
            "#message",
            "the redrive refused",
            Duration::from_secs(10),
            |m| m.contains("needs the admin token"),
        )
        .await;
    browser.type_into("#token", "s3cret").await;
    browser
        .click("#letters tbody tr button:nth-of-type(2)")
        .await;
    browser
        .await_text(
            "#message",
            "the redrive done",
            Duration::from_secs(10),
            |m| m.contains("moved 1 of 1"),
        )
        .await;
    // No worker has its handler yet: it runs again, and fails again.
    browser
        .await_text(
            "#failures tbody",
            "the redriven job to fail again",
            Duration::from_secs(15),
            |t| t.matches("report_v2").count() == 2,
        )
        .await;

    if let Ok(path) = std::env::var("LONGSHORE_DASHBOARD_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot().await).expect("write the screenshot");
    }
    shutdown.shutdown();
    running.await.expect("no panic").expect("stops");
}
