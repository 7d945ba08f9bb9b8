//! OpenTelemetry for [longshore](https://docs.rs/longshore) workers and producers.
//!
//! One call, [`init`], sets up everything from the standard `OTEL_*` environment:
//!
//! - logs: `tracing-subscriber`'s formatter on stdout, filtered by `RUST_LOG` (default
//!   `info`);
//! - traces: every job attempt is a `CONSUMER` span named `process <queue>` with the
//!   OpenTelemetry messaging conventions (`messaging.system`, `messaging.destination.name`,
//!   `messaging.message.id`, `messaging.operation.type` = `process`) plus
//!   `longshore.job.name` and `longshore.job.attempt`, whose parent is the producer's
//!   `send <queue>` (`PRODUCER`) span carried in the W3C `traceparent` / `tracestate`
//!   headers; failures set the span's error status, retries and dead letters are span
//!   events, and the handler's own `tracing` spans nest inside;
//! - metrics: `longshore.jobs.{started,succeeded,retried,dead_lettered,released}` counters
//!   and the `longshore.jobs.in_flight` gauge by job name and queue, the
//!   `messaging.process.duration` histogram, and `longshore.queue.depth` sampled from the
//!   broker every [`QUEUE_DEPTH_INTERVAL`];
//! - export: OTLP over HTTP/protobuf to `OTEL_EXPORTER_OTLP_ENDPOINT` (or the per-signal
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`), with
//!   `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` and `_TIMEOUT`, resource from
//!   `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, batching from `OTEL_BSP_*` and
//!   `OTEL_METRIC_EXPORT_INTERVAL`; spans are written as protobuf on the thread that ends
//!   them and posted in batches by a thread of their own (plain `http://`, uncompressed:
//!   [`init`] refuses `https://` and `OTEL_EXPORTER_OTLP_COMPRESSION` with a clear error);
//!   `OTEL_METRICS_EXPORTER=none` exports traces only (for a
//!   collector such as Jaeger that takes no metrics; Prometheus can scrape
//!   `longshore_http::probes`' `/metrics`). Without an endpoint (or with `OTEL_SDK_DISABLED=true`)
//!   only the stdout logs are set up, and nothing else costs anything.
//!
//! Keep the returned [`TelemetryGuard`] until the worker has stopped: dropping it (or
//! [`TelemetryGuard::shutdown`]) flushes what is still buffered.
//!
//! Container probes and Prometheus metrics (`/healthz`, `/readyz`, `/metrics`) are in
//! `longshore-http` (`longshore_http::probes`).
//!
//! ```no_run
//! use longshore_core::{Job, JobError, MemoryBroker, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Ping;
//! impl Job for Ping { const NAME: &'static str = "ping"; }
//!
//! async fn ping(_: Ping) -> Result<(), JobError> {
//!     tracing::info!("pong"); // an event inside the job's span
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let telemetry = longshore_otel::init()?;
//!     let worker = Worker::builder(MemoryBroker::new(), "pings")
//!         .telemetry(telemetry.hooks()) // continue producers' traces, count jobs
//!         .handler(ping)
//!         .build()?;
//!     worker.run().await?; // until SIGTERM
//!     telemetry.shutdown(); // flush spans and metrics
//!     Ok(())
//! }
//! ```

mod hooks;
mod log_fields;
mod otlp;

use std::sync::Arc;
use std::time::Duration;

use longshore_core::Outcome;
use longshore_core::spi::{Headers, JobEvent, Telemetry};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use hooks::{OtelHooks, QUEUE_DEPTH_INTERVAL};
pub use log_fields::LogFields;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// An OTLP exporter could not be built (a malformed endpoint URL, say).
    #[error("cannot build the OTLP {signal} exporter: {message}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// What the exporter builder said.
        message: String,
    },
    /// `RUST_LOG` or the trace filter does not parse.
    #[error("invalid log filter `{filter}`: {message}")]
    Filter {
        /// The filter text.
        filter: String,
        /// What the parser said.
        message: String,
    },
    /// A global `tracing` subscriber was installed already.
    #[error("telemetry is already set up in this process: {0}")]
    AlreadyInstalled(String),
}

/// What [`init`] sets up; built from the environment by [`Config::from_env`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Config {
    /// Export over OTLP/HTTP (an endpoint is configured and the SDK is not disabled).
    pub otlp: bool,
    /// The OTLP/HTTP base URL (`http://collector:4318`); `None` leaves it to the
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables. Setting it turns export on.
    pub endpoint: Option<String>,
    /// The `service.name` resource attribute; `None` leaves it to `OTEL_SERVICE_NAME`.
    pub service_name: Option<String>,
    /// The stdout log filter (`RUST_LOG`; `info` when unset). `lapin` and `amq_protocol`
    /// log at INFO at most unless the filter names them (their TRACE output carries broker
    /// frames, the password among them).
    pub log_filter: Option<String>,
    /// Which spans are exported (`LONGSHORE_TRACE_FILTER`; `info` when unset, which keeps
    /// every job and send span and drops debug-level spans).
    pub trace_filter: Option<String>,
    /// Metrics are not exported over OTLP (`OTEL_METRICS_EXPORTER=none`: a collector that
    /// takes only traces, such as Jaeger, or Prometheus scraping `/metrics` instead).
    pub no_otlp_metrics: bool,
}

impl Config {
    /// Exports to the OTLP/HTTP collector at `base` (`http://127.0.0.1:4318`).
    pub fn endpoint(mut self, base: impl Into<String>) -> Self {
        self.endpoint = Some(base.into());
        self.otlp = true;
        self
    }

    /// Names the service (`service.name`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// Reads the standard OpenTelemetry variables: OTLP export is on when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and
    /// `OTEL_SDK_DISABLED` is not `true`.
    pub fn from_env() -> Self {
        let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
        let disabled = std::env::var("OTEL_SDK_DISABLED")
            .is_ok_and(|value| value.trim().eq_ignore_ascii_case("true"));
        Self {
            otlp: !disabled
                && (set("OTEL_EXPORTER_OTLP_ENDPOINT")
                    || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
            endpoint: None,
            service_name: None,
            log_filter: std::env::var("RUST_LOG").ok(),
            trace_filter: std::env::var("LONGSHORE_TRACE_FILTER").ok(),
            no_otlp_metrics: std::env::var("OTEL_METRICS_EXPORTER")
                .is_ok_and(|value| value.trim().eq_ignore_ascii_case("none")),
        }
    }
}

/// Flushes and stops the exporters when dropped (or at [`TelemetryGuard::shutdown`]).
#[must_use = "dropping the guard stops telemetry export"]
pub struct TelemetryGuard {
    providers: Option<Providers>,
    hooks: Arc<dyn Telemetry>,
}

#[derive(Debug)]
struct Providers {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("exporting", &self.exporting())
            .finish_non_exhaustive()
    }
}

impl TelemetryGuard {
    /// The hooks to give each worker (`WorkerBuilder::telemetry`) and producer
    /// (`Producer::with_telemetry`): they continue producers' traces in jobs and count jobs
    /// in the metrics. Without OTLP export they do nothing.
    pub fn hooks(&self) -> Arc<dyn Telemetry> {
        Arc::clone(&self.hooks)
    }

    /// Whether spans and metrics are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.providers.is_some()
    }

    /// Exports everything buffered now, without stopping. Blocks the calling thread until
    /// the exporters answered (call it from `spawn_blocking` in async code under load).
    pub fn flush(&self) {
        if let Some(providers) = &self.providers {
            if let Err(error) = providers.tracer.force_flush() {
                tracing::warn!(%error, "could not flush spans");
            }
            if let Err(error) = providers.meter.force_flush() {
                tracing::warn!(%error, "could not flush metrics");
            }
        }
    }

    /// Flushes and stops the exporters (also done on drop).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(providers) = self.providers.take() {
            if let Err(error) = providers.tracer.shutdown() {
                eprintln!("longshore-otel: could not flush spans at shutdown: {error}");
            }
            if let Err(error) = providers.meter.shutdown() {
                eprintln!("longshore-otel: could not flush metrics at shutdown: {error}");
            }
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sets up logs, traces and metrics from the environment ([`Config::from_env`]).
pub fn init() -> Result<TelemetryGuard, InitError> {
    init_with(&Config::from_env())
}

/// Sets up logs, traces and metrics as `config` says.
pub fn init_with(config: &Config) -> Result<TelemetryGuard, InitError> {
    // Broker frames (lapin's TRACE output holds the SASL password) only when named.
    let log_filter = parse_filter(&longshore_core::log_filter(
        config.log_filter.as_deref().unwrap_or("info"),
    ))?;
    // Colours on a terminal only: container logs stay plain text.
    let stdout = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .fmt_fields(LogFields)
        .with_filter(log_filter);
    if !config.otlp {
        tracing_subscriber::registry()
            .with(stdout)
            .try_init()
            .map_err(|error| InitError::AlreadyInstalled(error.to_string()))?;
        return Ok(TelemetryGuard {
            providers: None,
            hooks: Arc::new(Disabled),
        });
    }

    let mut resource = Resource::builder();
    if let Some(name) = &config.service_name {
        resource = resource.with_service_name(name.clone());
    }
    let resource = resource.build();
    let signal_url = |signal: &str| {
        config
            .endpoint
            .as_ref()
            .map(|base| format!("{}/v1/{signal}", base.trim_end_matches('/')))
    };
    let spans = otlp::Settings::from_env(config.endpoint.as_deref())
        .and_then(|settings| {
            otlp::OtlpSpans::start(settings)
                .map_err(|error| format!("cannot start the export thread: {error}"))
        })
        .map_err(|message| InitError::Exporter {
            signal: "traces",
            message,
        })?;
    let tracer_provider = SdkTracerProvider::builder()
        .with_span_processor(spans)
        .with_resource(resource.clone())
        .build();
    let mut meter_provider = SdkMeterProvider::builder().with_resource(resource);
    if !config.no_otlp_metrics {
        let mut metrics = MetricExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
        if let Some(url) = signal_url("metrics") {
            metrics = metrics.with_endpoint(url);
        }
        let metrics = metrics.build().map_err(|error| InitError::Exporter {
            signal: "metrics",
            message: error.to_string(),
        })?;
        meter_provider = meter_provider.with_periodic_exporter(metrics);
    }
    let meter_provider = meter_provider.build();

    // The exporters' own HTTP client must not trace itself into the export.
    let trace_filter = parse_filter(&format!(
        "{},opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off,opentelemetry_http=off,\
         reqwest=off,hyper=off,hyper_util=off,h2=off",
        config.trace_filter.as_deref().unwrap_or("info")
    ))?;
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer_provider.tracer("longshore"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_filter(trace_filter);
    tracing_subscriber::registry()
        .with(stdout)
        .with(traces)
        .try_init()
        .map_err(|error| InitError::AlreadyInstalled(error.to_string()))?;

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    let meter = opentelemetry::global::meter("longshore");
    Ok(TelemetryGuard {
        providers: Some(Providers {
            tracer: tracer_provider,
            meter: meter_provider,
        }),
        hooks: Arc::new(OtelHooks::new(&meter)),
    })
}

/// The hooks without OTLP export: nothing to propagate or count.
struct Disabled;

impl Telemetry for Disabled {
    fn continue_trace(&self, _span: &tracing::Span, _headers: &Headers) {}
    fn inject(&self, _span: &tracing::Span, _headers: &mut Headers) {}
    fn job_started(&self, _event: &JobEvent<'_>) {}
    fn job_finished(&self, _event: &JobEvent<'_>, _outcome: &Outcome, _elapsed: Duration) {}
}

fn parse_filter(filter: &str) -> Result<EnvFilter, InitError> {
    EnvFilter::builder()
        .parse(filter)
        .map_err(|error| InitError::Filter {
            filter: filter.to_owned(),
            message: error.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the span exporter cannot honour fails `init` (before anything is installed),
    /// not every export later.
    #[test]
    fn an_https_endpoint_is_refused_with_the_reason() {
        let error = init_with(&Config::default().endpoint("https://collector:4318"))
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("cannot build the OTLP traces exporter: the endpoint")
                && error.contains("is not http://"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_filter_is_a_clear_error() {
        let error = parse_filter("info,=[").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid log filter `info,=[`"),
            "{error}"
        );
    }
}
