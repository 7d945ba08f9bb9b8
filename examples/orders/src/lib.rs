//! The jobs and settings shared by the `orders-worker` and `orders-producer` binaries.
//!
//! Both read their settings from the environment, so docker-compose (or Kubernetes)
//! configures them without flags:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `LONGSHORE_URL` | `amqp://guest:guest@127.0.0.1:5672/%2f` | the broker (`amqp://`, `sqs://<queue>`, an SQS queue URL) |
//! | `LONGSHORE_QUEUE` | `orders` | the queue |
//! | `LONGSHORE_HEALTH_ADDR` | `0.0.0.0:8080` | the worker's `/healthz`, `/readyz`, `/metrics` |
//! | `LONGSHORE_CONCURRENCY` | `16` | jobs one worker runs at once |
//! | `ORDERS` | `10` | how many orders the producer enqueues |
//! | `LONGSHORE_STATUS_URL` | unset | a job status store (`redis://…`, `postgres://…`): the producer writes each order's status, the worker moves it and serves it |
//! | `LONGSHORE_STATUS_ADDR` | `0.0.0.0:8081` | the worker's job-status API (`/jobs/{id}`, `/jobs/{id}/events`) |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | unset | OTLP/HTTP collector (Jaeger: `http://jaeger:4318`) |
//! | `OTEL_SERVICE_NAME` | unset | the service name in traces |

pub mod readme;

use longshore::Job;
use serde::{Deserialize, Serialize};

/// Fulfil an order: reserve its stock, charge the card. Orders whose id ends in 7 hit a
/// busy payment provider on their first attempt and succeed on a retry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FulfilOrder {
    /// The order id.
    pub order: u32,
    /// Items to reserve.
    pub items: Vec<String>,
    /// The amount to charge, in cents.
    pub cents: u64,
}

impl Job for FulfilOrder {
    const NAME: &'static str = "fulfil_order";
}

/// A setting from the environment, or its default.
pub fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|value| !value.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The broker URL (`LONGSHORE_URL`).
pub fn broker_url() -> String {
    setting("LONGSHORE_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// The queue (`LONGSHORE_QUEUE`).
pub fn queue() -> String {
    setting("LONGSHORE_QUEUE", "orders")
}

/// The job status store, if `LONGSHORE_STATUS_URL` names one.
pub async fn statuses() -> Result<Option<longshore::status::JobStatuses>, Box<dyn std::error::Error>>
{
    let url = setting("LONGSHORE_STATUS_URL", "");
    if url.is_empty() {
        return Ok(None);
    }
    Ok(Some(longshore::status_store::connect(&url).await?))
}

/// A numeric setting, or a clear error naming it.
pub fn number(name: &str, default: u32) -> Result<u32, String> {
    let text = setting(name, &default.to_string());
    text.parse()
        .map_err(|_| format!("{name} must be a whole number, not `{text}`"))
}
