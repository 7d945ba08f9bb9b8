//! Container probes and metrics for workers:
//!
//! - `GET /healthz`: `200 ok` while every worker's loop runs, `503` naming those that do not;
//! - `GET /readyz`: `200 ready` while every worker consumes, is not stopping and its broker
//!   answers; `503` with the reasons otherwise (false as soon as a shutdown begins);
//! - `GET /metrics`: Prometheus (OpenMetrics text), see [`crate::metrics`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use longshore_core::Health;

use crate::metrics::Metrics;

#[derive(Clone)]
struct Probes {
    workers: Arc<[Health]>,
    metrics: Option<Metrics>,
}

/// The probe routes (`/healthz`, `/readyz`, `/metrics`) for `workers` (take each with
/// `Worker::health` before running it), with per-job metrics when `metrics` is given (give
/// the same to each worker with `WorkerBuilder::telemetry(metrics.hooks())`).
pub fn probes(workers: Vec<Health>, metrics: Option<Metrics>) -> Router {
    let state = Probes {
        workers: workers.into(),
        metrics,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn healthz(State(probes): State<Probes>) -> Response {
    let dead: Vec<&str> = probes
        .workers
        .iter()
        .filter(|worker| !worker.is_alive())
        .map(|worker| worker.queue().as_str())
        .collect();
    if dead.is_empty() {
        text(StatusCode::OK, "ok\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("worker not running: {}\n", dead.join(", ")),
        )
    }
}

/// Why a worker is not ready, if it is not.
pub(crate) fn not_ready(worker: &Health) -> Option<String> {
    let queue = worker.queue();
    if !worker.is_alive() {
        Some(format!("worker for `{queue}` is not running"))
    } else if worker.is_stopping() {
        Some(format!("worker for `{queue}` is shutting down"))
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

async fn readyz(State(probes): State<Probes>) -> Response {
    let reasons: Vec<String> = probes.workers.iter().filter_map(not_ready).collect();
    if reasons.is_empty() {
        text(StatusCode::OK, "ready\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
    }
}

async fn metrics_text(State(probes): State<Probes>) -> Response {
    let body = crate::metrics::render(&probes.workers, probes.metrics.as_ref()).await;
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
