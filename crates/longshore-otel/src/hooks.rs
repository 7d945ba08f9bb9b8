//! [`OtelHooks`]: longshore's telemetry hooks on OpenTelemetry: W3C trace-context
//! propagation through message headers, and the job metrics.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use longshore_core::spi::{Headers, JobEvent, Telemetry};
use longshore_core::{Broker, JobName, Outcome, QueueName, QueueStats};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::task::JoinHandle;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// How often a running worker's queue depth is read from the broker.
pub const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(10);

/// The hooks [`init`](crate::init) makes ([`TelemetryGuard::hooks`](crate::TelemetryGuard::hooks));
/// public so a program with its own OpenTelemetry set-up can make them from its meter and
/// give them to its workers and producers.
///
/// Counters and the in-flight gauge are atomics per (queue, job) read by observable
/// instruments at export time, so a job pays a few atomic increments for them; only the
/// duration histogram is recorded per job.
pub struct OtelHooks {
    propagator: TraceContextPropagator,
    duration: Histogram<f64>,
    /// Counters per (queue, job), created on first sight.
    series: SeriesMap,
    depth: Arc<Mutex<HashMap<QueueName, DepthSample>>>,
    samplers: Mutex<HashMap<QueueName, JoinHandle<()>>>,
}

impl std::fmt::Debug for OtelHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtelHooks").finish_non_exhaustive()
    }
}

/// The live counts of one (queue, job) pair and their metric attributes.
struct Series {
    labels: Vec<KeyValue>,
    started: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    released: AtomicU64,
    in_flight: AtomicI64,
}

/// By queue, then job: looked up by reference, so a job's hooks copy no names.
type SeriesMap = Arc<RwLock<HashMap<QueueName, HashMap<JobName, Arc<Series>>>>>;

/// The last depth read of one queue.
struct DepthSample {
    system: &'static str,
    stats: QueueStats,
}

impl OtelHooks {
    /// Hooks recording into `meter` (instruments named `longshore.*` and
    /// `messaging.process.duration`).
    pub fn new(meter: &Meter) -> Self {
        let series: SeriesMap = Arc::default();
        let counter = |name: &'static str, description: &'static str, read: fn(&Series) -> u64| {
            let series = Arc::clone(&series);
            meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_unit("{job}")
                .with_callback(move |observer| {
                    for one in series
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .values()
                        .flat_map(HashMap::values)
                    {
                        observer.observe(read(one), &one.labels);
                    }
                })
                .build();
        };
        counter("longshore.jobs.started", "Job attempts started", |s| {
            s.started.load(Ordering::Relaxed)
        });
        counter(
            "longshore.jobs.succeeded",
            "Job attempts that succeeded",
            |s| s.succeeded.load(Ordering::Relaxed),
        );
        counter(
            "longshore.jobs.retried",
            "Job attempts that failed and were scheduled for a retry",
            |s| s.retried.load(Ordering::Relaxed),
        );
        counter(
            "longshore.jobs.dead_lettered",
            "Jobs moved to the dead-letter queue",
            |s| s.dead_lettered.load(Ordering::Relaxed),
        );
        counter(
            "longshore.jobs.released",
            "Jobs handed back to the broker unfinished (shutdown)",
            |s| s.released.load(Ordering::Relaxed),
        );
        let in_flight = Arc::clone(&series);
        meter
            .i64_observable_up_down_counter("longshore.jobs.in_flight")
            .with_description("Job attempts running now")
            .with_unit("{job}")
            .with_callback(move |observer| {
                for one in in_flight
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .flat_map(HashMap::values)
                {
                    observer.observe(one.in_flight.load(Ordering::Relaxed), &one.labels);
                }
            })
            .build();

        let depth: Arc<Mutex<HashMap<QueueName, DepthSample>>> = Arc::default();
        let read = Arc::clone(&depth);
        meter
            .u64_observable_gauge("longshore.queue.depth")
            .with_description("Messages in a worker's queue by state, sampled from the broker")
            .with_unit("{message}")
            .with_callback(move |gauge| {
                let samples = read.lock().unwrap_or_else(PoisonError::into_inner);
                for (queue, sample) in samples.iter() {
                    for (state, value) in sample.stats.by_state() {
                        gauge.observe(
                            value,
                            &[
                                KeyValue::new("messaging.system", sample.system),
                                KeyValue::new(
                                    "messaging.destination.name",
                                    queue.as_str().to_owned(),
                                ),
                                KeyValue::new("longshore.queue.state", state),
                            ],
                        );
                    }
                }
            })
            .build();
        Self {
            propagator: TraceContextPropagator::new(),
            duration: meter
                .f64_histogram("messaging.process.duration")
                .with_description("Duration of one job attempt, settlement included")
                .with_unit("s")
                .with_boundaries(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0,
                ])
                .build(),
            series,
            depth,
            samplers: Mutex::default(),
        }
    }

    fn series(&self, event: &JobEvent<'_>) -> Arc<Series> {
        if let Some(series) = self
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(event.queue)
            .and_then(|jobs| jobs.get(event.job))
        {
            return Arc::clone(series);
        }
        let series = Arc::new(Series {
            labels: vec![
                KeyValue::new("messaging.system", event.system),
                KeyValue::new(
                    "messaging.destination.name",
                    event.queue.as_str().to_owned(),
                ),
                KeyValue::new("longshore.job.name", event.job.as_str().to_owned()),
            ],
            started: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            released: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
        });
        self.series
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(event.queue.clone())
            .or_default()
            .entry(event.job.clone())
            .or_insert(series)
            .clone()
    }
}

struct HeaderExtractor<'a>(&'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Telemetry for OtelHooks {
    fn continue_trace(&self, span: &tracing::Span, headers: &Headers) {
        let parent = self.propagator.extract(&HeaderExtractor(headers));
        // Fails only when the span is disabled or no OpenTelemetry layer is installed:
        // then there is no trace to continue.
        let _ = span.set_parent(parent);
    }

    fn inject(&self, span: &tracing::Span, headers: &mut Headers) {
        self.propagator
            .inject_context(&span.context(), &mut HeaderInjector(headers));
    }

    fn job_started(&self, event: &JobEvent<'_>) {
        let series = self.series(event);
        series.started.fetch_add(1, Ordering::Relaxed);
        series.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn job_finished(&self, event: &JobEvent<'_>, outcome: &Outcome, elapsed: Duration) {
        let series = self.series(event);
        series.in_flight.fetch_sub(1, Ordering::Relaxed);
        let counter = match outcome {
            Outcome::Succeeded => Some(&series.succeeded),
            Outcome::Retried { .. } => Some(&series.retried),
            Outcome::DeadLettered { .. } => Some(&series.dead_lettered),
            Outcome::Released => Some(&series.released),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.record(elapsed.as_secs_f64(), &series.labels);
    }

    fn worker_started(&self, broker: &Arc<dyn Broker>, queue: &QueueName) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let sampler = runtime.spawn(sample_depth(
            Arc::clone(broker),
            queue.clone(),
            Arc::clone(&self.depth),
        ));
        if let Some(old) = self
            .samplers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.clone(), sampler)
        {
            old.abort();
        }
    }

    fn worker_stopped(&self, queue: &QueueName) {
        if let Some(sampler) = self
            .samplers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(queue)
        {
            sampler.abort();
        }
    }
}

/// Reads `queue`'s depth from the broker every [`QUEUE_DEPTH_INTERVAL`] for the gauge.
async fn sample_depth(
    broker: Arc<dyn Broker>,
    queue: QueueName,
    depth: Arc<Mutex<HashMap<QueueName, DepthSample>>>,
) {
    let mut ticks = tokio::time::interval(QUEUE_DEPTH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match tokio::time::timeout(QUEUE_DEPTH_INTERVAL, broker.stats(&queue)).await {
            Ok(Ok(stats)) => {
                let sample = DepthSample {
                    system: broker.system(),
                    stats,
                };
                depth
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(queue.clone(), sample);
            }
            Ok(Err(error)) => {
                tracing::debug!(%queue, %error, "could not read the queue depth");
            }
            Err(_) => tracing::debug!(%queue, "the broker did not tell the queue depth in time"),
        }
    }
}
