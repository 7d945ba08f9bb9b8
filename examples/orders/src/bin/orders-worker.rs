//! The example worker: fulfils orders with a per-job unit of work, exports a span per job
//! (continuing the producer's trace) with the job's own child spans, and serves
//! `/healthz`, `/readyz`, `/metrics` and the dashboard (`/`, read-only unless
//! `LONGSHORE_ADMIN_TOKEN` is set) on `LONGSHORE_HEALTH_ADDR`; with a job status store, it
//! reports each order's progress and serves `/jobs/{id}` and `/jobs/{id}/events` on
//! `LONGSHORE_STATUS_ADDR` for frontends.
//! Stops gracefully on SIGTERM (`docker stop`).
//!
//! `orders-worker healthcheck` asks the running worker's `/readyz` and exits 0 when ready:
//! a container health check that needs no curl in the image.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use longshore::{Dep, JobContext, JobError, QueueOptions, Worker};
use longshore_example_orders::{FulfilOrder, broker_url, number, queue, setting, statuses};
use tracing::Instrument;

/// Process-wide: the stock and payment systems (here: counters).
#[derive(Default)]
struct Backends {
    reserved: AtomicU64,
    charged_cents: AtomicU64,
}

/// Per job: a unit of work, committed when the job succeeds, rolled back when it fails.
struct UnitOfWork {
    id: String,
}

async fn fulfil(
    order: FulfilOrder,
    backends: Dep<Backends>,
    unit: Dep<UnitOfWork>,
    ctx: JobContext,
) -> Result<(), JobError> {
    tracing::info!(order = order.order, unit = %unit.id, attempt = ctx.attempt.get(), "fulfilling order");
    async {
        tokio::time::sleep(Duration::from_millis(5 * order.items.len() as u64)).await;
        backends
            .reserved
            .fetch_add(order.items.len() as u64, Ordering::Relaxed);
    }
    .instrument(tracing::info_span!(
        "reserve stock",
        items = order.items.len()
    ))
    .await;
    ctx.progress(0.5, "stock reserved");
    let charged = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if order.order % 10 == 7 && ctx.attempt.get() == 1 {
            return Err(JobError::retryable("payment provider busy (HTTP 503)"));
        }
        backends
            .charged_cents
            .fetch_add(order.cents, Ordering::Relaxed);
        Ok(())
    }
    .instrument(tracing::info_span!("charge card", cents = order.cents))
    .await;
    charged?;
    ctx.progress(1.0, "card charged");
    ctx.set_result(&serde_json::json!({ "charged_cents": order.cents }))?;
    Ok(())
}

fn healthcheck() -> std::process::ExitCode {
    use std::io::{Read, Write};
    let address = setting("LONGSHORE_HEALTH_ADDR", "0.0.0.0:8080").replace("0.0.0.0", "127.0.0.1");
    let answer = std::net::TcpStream::connect(&address).and_then(|mut stream| {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET /readyz HTTP/1.1\r\nconnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    });
    match answer {
        Ok(response) if response.starts_with("HTTP/1.1 200") => std::process::ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("not ready: {}", response.lines().last().unwrap_or(""));
            std::process::ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("cannot reach {address}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        return Ok(healthcheck());
    }
    let telemetry = longshore::otel::init()?;
    let metrics = longshore::http::Metrics::new();
    let broker = longshore::connect(broker_url()).await?;
    let statuses = statuses().await?;
    let mut builder = Worker::builder(broker.clone(), queue())
        .telemetry(telemetry.hooks())
        .telemetry(metrics.hooks());
    let mut dashboard = longshore::http::Dashboard::new(broker);
    if let Ok(token) = std::env::var("LONGSHORE_ADMIN_TOKEN") {
        dashboard = dashboard.admin_token(token);
    }
    let mut _status_api = None;
    if let Some(statuses) = statuses {
        let address = setting("LONGSHORE_STATUS_ADDR", "0.0.0.0:8081");
        let router = longshore::http::router(statuses.clone());
        _status_api = Some(longshore::http::serve(address, router).await?);
        dashboard = dashboard.statuses(statuses.clone());
        builder = builder.status(statuses);
    }
    let worker = builder
        .dependency(Backends::default())
        .scoped_with_disposer(
            |ctx: JobContext| async move {
                Ok::<_, JobError>(UnitOfWork {
                    id: format!("uow-{}", ctx.id),
                })
            },
            |unit: UnitOfWork, succeeded| async move {
                if succeeded {
                    tracing::info!(unit = %unit.id, "committed");
                } else {
                    tracing::info!(unit = %unit.id, "rolled back");
                }
                Ok::<_, JobError>(())
            },
        )
        .handler(fulfil)
        .concurrency(number("LONGSHORE_CONCURRENCY", 16)? as usize)
        .queue_options(QueueOptions::default())
        .build()?;
    // Probes, Prometheus metrics and the dashboard on one listener.
    let operations = longshore::http::probes(vec![worker.health()], Some(metrics))
        .merge(dashboard.workers(vec![worker.health()]).router());
    let _operations =
        longshore::http::serve(setting("LONGSHORE_HEALTH_ADDR", "0.0.0.0:8080"), operations)
            .await?;
    let report = worker.run().await?; // until SIGTERM / SIGINT
    tracing::info!(?report, "bye");
    telemetry.shutdown(); // flush the last spans and metrics
    Ok(std::process::ExitCode::SUCCESS)
}
