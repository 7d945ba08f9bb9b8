//! A small HTTP listener for container probes:
//!
//! - `GET /healthz`: 200 while every worker's loop is running, 503 otherwise;
//! - `GET /readyz`: 200 while every worker is consuming and its broker answers (the
//!   connection is up), 503 with the reason otherwise;
//! - `GET /metrics`: the workers' counters and queue depths in Prometheus text format.
//!
//! It speaks just enough HTTP/1.1 for probes and scrapers: one request per connection.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use longshore_core::Health;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::task::JoinHandle;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// How long `/metrics` waits for a broker's queue depth.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The running listener; stops when dropped.
#[derive(Debug)]
pub struct HealthServer {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl HealthServer {
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Listens on `address` and answers for `workers` (take each with
/// [`Worker::health`](longshore_core::Worker::health) before running it).
pub async fn serve(
    address: impl ToSocketAddrs,
    workers: Vec<Health>,
) -> std::io::Result<HealthServer> {
    let listener = TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "health endpoints listening: /healthz /readyz /metrics");
    let workers: std::sync::Arc<[Health]> = workers.into();
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "health listener could not accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let workers = std::sync::Arc::clone(&workers);
            tokio::spawn(async move {
                if let Err(error) = answer(stream, &workers).await {
                    tracing::debug!(%error, "health request failed");
                }
            });
        }
    });
    Ok(HealthServer { address, task })
}

async fn answer(mut stream: TcpStream, workers: &[Health]) -> std::io::Result<()> {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Some(head))) => head,
        Ok(Ok(None)) => {
            respond(&mut stream, 400, "text/plain", "bad request\n").await?;
            // Read what the client still sends before closing: closing with unread data
            // resets the connection, and the client could lose the answer.
            let mut sink = [0_u8; 1024];
            let drain = async { while stream.read(&mut sink).await.is_ok_and(|n| n > 0) {} };
            let _ = tokio::time::timeout(READ_TIMEOUT, drain).await;
            return Ok(());
        }
        Ok(Err(error)) => return Err(error),
        Err(_) => return respond(&mut stream, 408, "text/plain", "request timeout\n").await,
    };
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET\n").await;
    }
    match path {
        "/healthz" => {
            let dead: Vec<&str> = workers
                .iter()
                .filter(|worker| !worker.is_alive())
                .map(|worker| worker.queue().as_str())
                .collect();
            if dead.is_empty() {
                respond(&mut stream, 200, "text/plain", "ok\n").await
            } else {
                let body = format!("worker not running: {}\n", dead.join(", "));
                respond(&mut stream, 503, "text/plain", &body).await
            }
        }
        "/readyz" => {
            let reasons: Vec<String> = workers.iter().filter_map(not_ready).collect();
            if reasons.is_empty() {
                respond(&mut stream, 200, "text/plain", "ready\n").await
            } else {
                let body = format!("not ready: {}\n", reasons.join("; "));
                respond(&mut stream, 503, "text/plain", &body).await
            }
        }
        "/metrics" => {
            let body = prometheus(workers).await;
            respond(&mut stream, 200, "text/plain; version=0.0.4", &body).await
        }
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

fn not_ready(worker: &Health) -> Option<String> {
    let queue = worker.queue();
    if !worker.is_alive() {
        Some(format!("worker for `{queue}` is not running"))
    } else if !worker.broker().is_connected() {
        Some(format!(
            "worker for `{queue}` lost its {} connection",
            worker.broker().system()
        ))
    } else if !worker.is_ready() {
        Some(format!("worker for `{queue}` is not consuming"))
    } else {
        None
    }
}

/// Reads up to the end of the request head; `None` if it is malformed or too large.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0_u8; 512];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(String::from_utf8(buffer[..end].to_vec()).ok());
        }
        if buffer.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Service Unavailable",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The workers' counters and queue depths in Prometheus text exposition format.
async fn prometheus(workers: &[Health]) -> String {
    type Field = fn(&longshore_core::StatsSnapshot) -> u64;
    const COUNTERS: [(&str, &str, Field); 6] = [
        (
            "longshore_jobs_started_total",
            "Job attempts started",
            |s| s.started,
        ),
        (
            "longshore_jobs_succeeded_total",
            "Job attempts that succeeded",
            |s| s.succeeded,
        ),
        (
            "longshore_jobs_retried_total",
            "Job attempts scheduled for a retry",
            |s| s.retried,
        ),
        (
            "longshore_jobs_dead_lettered_total",
            "Jobs moved to the dead-letter queue",
            |s| s.dead_lettered,
        ),
        (
            "longshore_jobs_released_total",
            "Jobs handed back unfinished",
            |s| s.released,
        ),
        (
            "longshore_jobs_abandoned_total",
            "Attempts not settled by the worker (lease lost, settlement refused); the broker redelivers them",
            |s| s.abandoned,
        ),
    ];
    let snapshots: Vec<_> = workers.iter().map(|w| w.stats().snapshot()).collect();
    let mut out = String::new();
    for (name, help, field) in COUNTERS {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} counter");
        for (worker, snapshot) in workers.iter().zip(&snapshots) {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(worker), field(snapshot));
        }
    }
    let _ = writeln!(
        out,
        "# HELP longshore_jobs_in_flight Job attempts running now.\n# TYPE longshore_jobs_in_flight gauge"
    );
    for (worker, snapshot) in workers.iter().zip(&snapshots) {
        let _ = writeln!(
            out,
            "longshore_jobs_in_flight{{{}}} {}",
            labels(worker),
            snapshot.in_flight
        );
    }
    let _ = writeln!(
        out,
        "# HELP longshore_queue_depth Messages in the queue by state, read from the broker.\n\
         # TYPE longshore_queue_depth gauge"
    );
    for worker in workers {
        let stats =
            tokio::time::timeout(DEPTH_TIMEOUT, worker.broker().stats(worker.queue())).await;
        let Ok(Ok(stats)) = stats else { continue };
        for (state, value) in stats.by_state() {
            let _ = writeln!(
                out,
                "longshore_queue_depth{{{},state=\"{state}\"}} {value}",
                labels(worker)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP longshore_worker_ready Whether the worker is consuming and its broker answers.\n\
         # TYPE longshore_worker_ready gauge"
    );
    for worker in workers {
        let _ = writeln!(
            out,
            "longshore_worker_ready{{{}}} {}",
            labels(worker),
            u8::from(worker.is_ready())
        );
    }
    out
}

fn labels(worker: &Health) -> String {
    format!(
        "system=\"{}\",queue=\"{}\"",
        worker.broker().system(),
        escape(worker.queue().as_str())
    )
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
