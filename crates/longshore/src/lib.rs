//! # longshore
//!
//! Background-job consumers on the brokers you already run. Write a handler per job type,
//! point a [`Worker`] at a queue, and get retries with exponential backoff and full jitter,
//! dead-letter queues, delayed jobs, cron schedules that are safe in every replica
//! ([`schedule`]), graceful shutdown and a per-job scoped dependency container, on the
//! in-memory broker (the default), RabbitMQ or Amazon SQS.
//!
//! ```
//! use std::time::Duration;
//! use longshore::{Dep, Job, JobContext, JobError, Producer, QueueOptions, ResultExt, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendInvoice {
//!     customer: String,
//!     cents: u64,
//! }
//!
//! impl Job for SendInvoice {
//!     const NAME: &'static str = "send_invoice";
//! }
//!
//! /// Process-wide: one client shared by every job.
//! struct Mailer;
//!
//! /// Per job: built lazily for each job that asks, dropped when the job ends.
//! struct RequestId(String);
//!
//! async fn send_invoice(
//!     job: SendInvoice,
//!     _mailer: Dep<Mailer>,
//!     request: Dep<RequestId>,
//!     ctx: JobContext,
//! ) -> Result<(), JobError> {
//!     // Bad input can never succeed: `.permanent()` dead-letters it without retries.
//!     let cents = i64::try_from(job.cents).permanent()?;
//!     println!("[{}] invoice {cents} to {} (attempt {})", request.0, job.customer, ctx.attempt);
//!     Ok(())
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let broker = longshore::connect("memory://").await?;
//!     broker.declare(&"billing".into(), &QueueOptions::default()).await?;
//!
//!     let invoices = Producer::new(broker.clone(), "billing");
//!     invoices.enqueue(&SendInvoice { customer: "acme".into(), cents: 4200 }).await?;
//!
//!     let worker = Worker::builder(broker, "billing")
//!         .dependency(Mailer)
//!         .scoped(|ctx: JobContext| async move {
//!             Ok::<_, JobError>(RequestId(format!("req-{}", ctx.id)))
//!         })
//!         .handler(send_invoice)
//!         .concurrency(8)
//!         .build()?; // checks now that every `Dep<T>` a handler or factory takes is registered
//!     let (stats, shutdown) = (worker.stats(), worker.shutdown_handle());
//!     let running = tokio::spawn(worker.run()); // also stops on SIGTERM / Ctrl-C
//!
//!     while stats.snapshot().succeeded < 1 {
//!         tokio::time::sleep(Duration::from_millis(5)).await;
//!     }
//!     shutdown.shutdown();
//!     let report = running.await??;
//!     assert_eq!(report.stats.succeeded, 1);
//!     Ok(())
//! }
//! ```
//!
//! ## Brokers
//!
//! [`connect`] picks the broker from a URL: `memory://` (or an empty string) is the
//! embedded [`MemoryBroker`]; `amqp://` and `amqps://` are RabbitMQ (feature `amqp`);
//! `sqs://` or an SQS queue URL is Amazon SQS (feature `sqs`).
//!
//! ## Telemetry
//!
//! Feature `otel` adds `longshore::otel`: `longshore::otel::init()` sets up logs, a span per job
//! that continues the producer's trace, and job metrics, exported over OTLP as the `OTEL_*`
//! environment variables say. Feature `http` adds `longshore::http`: container probes and
//! Prometheus metrics (`longshore::http::probes`), the job-status API for frontends and the
//! dashboard.

use std::sync::Arc;

pub use longshore_core::*;

/// The RabbitMQ adapter (feature `amqp`).
#[cfg(feature = "amqp")]
pub use longshore_amqp as amqp;

/// The Amazon SQS adapter (feature `sqs`).
#[cfg(feature = "sqs")]
pub use longshore_sqs as sqs;

/// OpenTelemetry set-up (feature `otel`).
#[cfg(feature = "otel")]
pub use longshore_otel as otel;

/// HTTP: job status for frontends, probes and metrics, the dashboard (feature `http`).
#[cfg(feature = "http")]
pub use longshore_http as http;

/// Job status stores on PostgreSQL (feature `postgres`) and Redis (feature `redis`); the
/// in-memory one and what they are for are in [`status`].
#[cfg(any(feature = "postgres", feature = "redis"))]
pub use longshore_status as status_store;

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL's scheme names no broker this build supports.
    #[error("unsupported broker URL `{url}`: this build takes {supported}{hint}")]
    UnsupportedScheme {
        /// The URL, password redacted.
        url: BrokerUrl,
        /// The schemes this build takes.
        supported: &'static str,
        /// Which features would add the others.
        hint: &'static str,
    },
    /// The broker did not accept the connection.
    #[error("could not connect to `{url}`: {source}")]
    Broker {
        /// The URL, password redacted.
        url: BrokerUrl,
        /// What went wrong.
        source: BrokerError,
    },
}

#[cfg(feature = "sqs")]
async fn sqs_broker(url: BrokerUrl) -> Result<Arc<dyn Broker>, ConnectError> {
    match longshore_sqs::SqsBroker::connect(url.clone()).await {
        Ok(broker) => Ok(Arc::new(broker)),
        Err(source) => Err(ConnectError::Broker { url, source }),
    }
}

/// The schemes this build's [`connect`] takes.
const SUPPORTED: &str = match (cfg!(feature = "amqp"), cfg!(feature = "sqs")) {
    (true, true) => "memory://, amqp://, amqps://, sqs:// and SQS queue URLs",
    (true, false) => "memory://, amqp:// and amqps://",
    (false, true) => "memory://, sqs:// and SQS queue URLs",
    (false, false) => "memory://",
};

/// What the features this build lacks would add.
const MISSING: &str = match (cfg!(feature = "amqp"), cfg!(feature = "sqs")) {
    (true, true) => "",
    (true, false) => " (the `sqs` feature adds sqs://)",
    (false, true) => " (the `amqp` feature adds amqp:// and amqps://)",
    (false, false) => " (the `amqp` feature adds amqp:// and amqps://, `sqs` adds sqs://)",
};

/// Connects to the broker a URL names: `memory://` (or an empty string) is the embedded
/// in-memory broker; `amqp://user:pass@host:port/vhost` and `amqps://…` are RabbitMQ
/// (feature `amqp`); `sqs://` or an SQS queue URL is Amazon SQS, configured from the
/// standard AWS chain (feature `sqs`).
pub async fn connect(url: impl Into<BrokerUrl>) -> Result<Arc<dyn Broker>, ConnectError> {
    let url = url.into();
    match url.scheme().as_str() {
        "" if url.expose().trim().is_empty() => Ok(Arc::new(MemoryBroker::new())),
        "memory" => Ok(Arc::new(MemoryBroker::new())),
        #[cfg(feature = "amqp")]
        "amqp" | "amqps" => match longshore_amqp::AmqpBroker::connect(url.clone()).await {
            Ok(broker) => Ok(Arc::new(broker)),
            Err(source) => Err(ConnectError::Broker { url, source }),
        },
        #[cfg(feature = "sqs")]
        "sqs" => sqs_broker(url).await,
        #[cfg(feature = "sqs")]
        "https" | "http"
            if url.expose().contains("/queue/") || url.expose().contains("amazonaws.com") =>
        {
            sqs_broker(url).await
        }
        _ => Err(ConnectError::UnsupportedScheme {
            url,
            supported: SUPPORTED,
            hint: MISSING,
        }),
    }
}
