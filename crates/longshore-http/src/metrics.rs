//! Prometheus metrics, on `prometheus-client`, in OpenMetrics text:
//!
//! | metric | labels | what |
//! | --- | --- | --- |
//! | `longshore_jobs_{started,succeeded,retried,dead_lettered,released,skipped,abandoned}_total` | `system`, `queue` | the worker's counters |
//! | `longshore_jobs_in_flight` | `system`, `queue` | attempts running now |
//! | `longshore_worker_busy`, `longshore_worker_capacity` | `system`, `queue` | jobs running against the most it runs at once: what an autoscaler needs besides the queue's depth |
//! | `longshore_worker_ready` | `system`, `queue` | 1 when ready |
//! | `longshore_queue_depth` | `system`, `queue`, `state` | messages `ready`, `delayed`, `in_flight`, `dead_lettered` (what the broker tells), read at each scrape |
//! | `longshore_job_outcomes_total` | `queue`, `job`, `outcome` | per job type (with [`Metrics`]) |
//! | `longshore_job_duration_seconds` | `queue`, `job` | one attempt, settlement included (with [`Metrics`]) |
//! | `longshore_job_wait_seconds` | `queue`, `job` | from enqueue to the start of the first attempt (with [`Metrics`]) |
//!
//! Job names without a handler are labelled `unknown`, so message headers cannot grow the
//! series without bound.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use longshore_core::spi::{Headers, JobEvent, Telemetry};
use longshore_core::{Health, JobName, Outcome, QueueName};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// How long a scrape waits for a broker's queue depth.
const DEPTH_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    system: String,
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DepthLabels {
    system: String,
    queue: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    queue: String,
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    queue: String,
    job: String,
    outcome: String,
}

fn seconds_buckets() -> Histogram {
    // 1 ms to about 9 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

/// Per-job-type metrics: give [`Metrics::hooks`] to each worker
/// (`WorkerBuilder::telemetry`) and the same `Metrics` to [`crate::probes`].
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    outcomes: Family<OutcomeLabels, Counter>,
    duration: Family<JobLabels, Histogram, fn() -> Histogram>,
    wait: Family<JobLabels, Histogram, fn() -> Histogram>,
    /// The series of each (queue, job), made on first sight: a job pays a read lock and a
    /// few atomics, no label allocation.
    series: RwLock<HashMap<(QueueName, JobName), Arc<Series>>>,
}

struct Series {
    duration: Histogram,
    wait: Histogram,
    outcomes: HashMap<&'static str, Counter>,
}

const OUTCOMES: [&str; 7] = [
    "succeeded",
    "retried",
    "dead_lettered",
    "released",
    "skipped",
    "abandoned",
    "failed",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                outcomes: Family::default(),
                duration: Family::new_with_constructor(seconds_buckets),
                wait: Family::new_with_constructor(seconds_buckets),
                series: RwLock::default(),
            }),
        }
    }

    /// The hooks that record into these metrics, for `WorkerBuilder::telemetry`.
    pub fn hooks(&self) -> Arc<dyn Telemetry> {
        Arc::new(self.clone())
    }

    fn series(&self, queue: &QueueName, job: &JobName) -> Arc<Series> {
        let key = (queue.clone(), job.clone());
        if let Some(series) = self
            .inner
            .series
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Arc::clone(series);
        }
        let labels = JobLabels {
            queue: queue.to_string(),
            job: job.to_string(),
        };
        let outcomes = OUTCOMES
            .iter()
            .map(|outcome| {
                let labels = OutcomeLabels {
                    queue: labels.queue.clone(),
                    job: labels.job.clone(),
                    outcome: (*outcome).to_owned(),
                };
                (*outcome, self.inner.outcomes.get_or_create(&labels).clone())
            })
            .collect();
        let series = Arc::new(Series {
            duration: self.inner.duration.get_or_create(&labels).clone(),
            wait: self.inner.wait.get_or_create(&labels).clone(),
            outcomes,
        });
        Arc::clone(
            self.inner
                .series
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key)
                .or_insert(series),
        )
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "longshore_job_outcomes",
            "Job attempts by job type and how they ended",
            self.inner.outcomes.clone(),
        );
        registry.register(
            "longshore_job_duration_seconds",
            "Duration of one job attempt, settlement included",
            self.inner.duration.clone(),
        );
        registry.register(
            "longshore_job_wait_seconds",
            "Time from enqueue to the start of a job's first attempt",
            self.inner.wait.clone(),
        );
    }
}

impl Telemetry for Metrics {
    fn continue_trace(&self, _span: &tracing::Span, _headers: &Headers) {}

    fn inject(&self, _span: &tracing::Span, _headers: &mut Headers) {}

    fn job_started(&self, event: &JobEvent<'_>) {
        if event.attempt.get() == 1 {
            let waited = SystemTime::now()
                .duration_since(event.enqueued_at)
                .unwrap_or_default();
            self.series(event.queue, event.job)
                .wait
                .observe(waited.as_secs_f64());
        }
    }

    fn job_finished(&self, event: &JobEvent<'_>, outcome: &Outcome, elapsed: Duration) {
        let series = self.series(event.queue, event.job);
        series.duration.observe(elapsed.as_secs_f64());
        if let Some(counter) = series.outcomes.get(outcome.name()) {
            counter.inc();
        }
    }
}

/// The metrics of `workers` (and, with `metrics`, per job type), read now.
pub(crate) async fn render(workers: &[Health], metrics: Option<&Metrics>) -> String {
    let mut registry = Registry::default();
    type Field = fn(&longshore_core::StatsSnapshot) -> u64;
    let counters: [(&str, &str, Field); 7] = [
        ("longshore_jobs_started", "Job attempts started", |s| {
            s.started
        }),
        (
            "longshore_jobs_succeeded",
            "Job attempts that succeeded",
            |s| s.succeeded,
        ),
        (
            "longshore_jobs_retried",
            "Job attempts scheduled for a retry",
            |s| s.retried,
        ),
        (
            "longshore_jobs_dead_lettered",
            "Jobs moved to the dead-letter queue",
            |s| s.dead_lettered,
        ),
        (
            "longshore_jobs_released",
            "Jobs handed back unfinished",
            |s| s.released,
        ),
        (
            "longshore_jobs_skipped",
            "Jobs acked without running (cancelled, or succeeded already)",
            |s| s.skipped,
        ),
        (
            "longshore_jobs_abandoned",
            "Attempts not settled by the worker (lease lost, settlement refused); the broker redelivers them",
            |s| s.abandoned,
        ),
    ];
    let labels = |worker: &Health| WorkerLabels {
        system: worker.broker().system().to_owned(),
        queue: worker.queue().to_string(),
    };
    for (name, help, field) in counters {
        let family = Family::<WorkerLabels, Counter>::default();
        for worker in workers {
            family
                .get_or_create(&labels(worker))
                .inc_by(field(&worker.stats().snapshot()));
        }
        registry.register(name, help, family);
    }
    let gauge = |name: &str, help: &str, value: fn(&Health) -> i64, registry: &mut Registry| {
        let family = Family::<WorkerLabels, Gauge>::default();
        for worker in workers {
            family.get_or_create(&labels(worker)).set(value(worker));
        }
        registry.register(name, help, family);
    };
    gauge(
        "longshore_jobs_in_flight",
        "Job attempts running now",
        |w| w.stats().snapshot().in_flight as i64,
        &mut registry,
    );
    gauge(
        "longshore_worker_busy",
        "Jobs the worker runs now",
        |w| w.stats().snapshot().in_flight as i64,
        &mut registry,
    );
    gauge(
        "longshore_worker_capacity",
        "The most jobs the worker runs at once",
        |w| w.capacity() as i64,
        &mut registry,
    );
    gauge(
        "longshore_worker_ready",
        "1 while the worker is ready",
        |w| i64::from(crate::probes::not_ready(w).is_none()),
        &mut registry,
    );
    let depth = Family::<DepthLabels, Gauge>::default();
    for worker in workers {
        if let Ok(Ok(stats)) =
            tokio::time::timeout(DEPTH_TIMEOUT, worker.broker().stats(worker.queue())).await
        {
            for (state, value) in stats.by_state() {
                let labels = DepthLabels {
                    system: worker.broker().system().to_owned(),
                    queue: worker.queue().to_string(),
                    state: state.to_owned(),
                };
                depth
                    .get_or_create(&labels)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
    }
    registry.register(
        "longshore_queue_depth",
        "Messages in a worker's queue by state, as the broker tells",
        depth,
    );
    if let Some(metrics) = metrics {
        metrics.register(&mut registry);
    }
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::warn!(%error, "could not encode the metrics");
    }
    text
}
