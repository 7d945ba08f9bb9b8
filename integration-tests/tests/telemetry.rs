//! Telemetry against a real OTLP/HTTP receiver: the job span continues the producer's
//! trace (same trace id, the producer span as parent), carries the messaging conventions,
//! one span per attempt, error status on failure, the handler's spans nested inside; on
//! memory, RabbitMQ and SQS. And the job metrics after a known mix of outcomes.
//!
//! One set-up (`longshore_otel::init_with`, which installs the process's `tracing`
//! subscriber) exports to one receiver; each worker and producer gets its hooks; each test
//! finds its own spans and points by its unique queue name.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use integration_tests::conformance::{declared_queue, probe_worker};
use integration_tests::harness::{
    Behaviour, Harness, Probe, Recorder, Running, eventually, memory_harness, rabbitmq_harness,
    sqs_harness,
};
use integration_tests::otlp::{OtlpReceiver, STATUS_ERROR, Span, kind};
use longshore::otel::{Config, TelemetryGuard};
use longshore::{
    Job, JobContext, JobError, Producer, QueueName, QueueOptions, RetryPolicy, Worker,
};
use serde::{Deserialize, Serialize};

struct Telemetry {
    receiver: OtlpReceiver,
    guard: TelemetryGuard,
}

fn telemetry() -> &'static Telemetry {
    static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();
    TELEMETRY.get_or_init(|| {
        let receiver = OtlpReceiver::start();
        let config = Config::default()
            .endpoint(receiver.endpoint())
            .service_name("longshore-telemetry-test");
        let guard = longshore::otel::init_with(&config).expect("telemetry sets up");
        assert!(guard.exporting());
        Telemetry { receiver, guard }
    })
}

/// Exports what is buffered (off the async threads: the exporter blocks).
async fn flush() {
    tokio::task::spawn_blocking(|| telemetry().guard.flush())
        .await
        .expect("flush does not panic");
}

/// A job whose handler opens its own span, and fails while the attempt is below
/// `fail_until` (permanently when `permanent`).
#[derive(Serialize, Deserialize)]
struct Traced {
    fail_until: u32,
    permanent: bool,
}

impl Job for Traced {
    const NAME: &'static str = "traced";
}

async fn traced(job: Traced, ctx: JobContext) -> Result<(), JobError> {
    tracing::info_span!("load customer", attempt = ctx.attempt.get())
        .in_scope(|| tracing::info!("customer loaded"));
    if job.permanent {
        return Err(JobError::permanent("the customer does not exist"));
    }
    if ctx.attempt.get() < job.fail_until {
        return Err(JobError::retryable(format!(
            "database busy on attempt {}",
            ctx.attempt
        )));
    }
    Ok(())
}

fn probe(key: u32, behaviour: Behaviour) -> Probe {
    Probe { key, behaviour }
}

fn of_queue<'a>(spans: &'a [Span], queue: &QueueName) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|span| span.attribute("messaging.destination.name") == Some(queue.as_str()))
        .collect()
}

/// Enqueues a job that fails once then succeeds and one that fails permanently; checks
/// their traces.
async fn job_spans_continue_the_producer_trace(h: Harness, system: &str) {
    let receiver = &telemetry().receiver;
    let queue = declared_queue(&h, "trace").await;
    let producer = Producer::new(Arc::clone(&h.broker), queue.clone())
        .with_telemetry(telemetry().guard.hooks());
    let flaky = producer
        .enqueue(&Traced {
            fail_until: 2,
            permanent: false,
        })
        .await
        .expect("enqueue");
    let doomed = producer
        .enqueue(&Traced {
            fail_until: 0,
            permanent: true,
        })
        .await
        .expect("enqueue");
    let worker = Running::start(
        Worker::builder(Arc::clone(&h.broker), queue.clone())
            .telemetry(telemetry().guard.hooks())
            .handler(traced)
            .queue_options(QueueOptions::default().visibility_timeout(h.timing.visibility))
            .retry_policy(RetryPolicy::exponential(
                Duration::from_millis(20),
                Duration::from_millis(50),
                3,
            )),
    );
    integration_tests::conformance::await_worker(
        &h,
        &worker,
        "one job to succeed on its second attempt and one to be dead-lettered",
        |s| s.succeeded == 1 && s.dead_lettered == 1,
    )
    .await;
    worker.stop().await;

    // 1 send + 2 process spans for the flaky job, 1 send + 1 process for the doomed one,
    // plus the handlers' own spans.
    let spans = eventually(
        Duration::from_secs(20),
        "the spans of both jobs at the receiver",
        || async {
            flush().await;
            let spans = receiver.spans();
            let ours = of_queue(&spans, &queue);
            if ours.len() >= 5 {
                Ok(spans)
            } else {
                Err(format!("{} of 5 job and send spans", ours.len()))
            }
        },
    )
    .await;
    let ours = of_queue(&spans, &queue);
    let by_id = |id: &str, kind: i32| -> Vec<&Span> {
        let mut found: Vec<&Span> = ours
            .iter()
            .copied()
            .filter(|s| s.kind == kind && s.attribute("messaging.message.id") == Some(id))
            .collect();
        found.sort_by_key(|s| s.attribute("longshore.job.attempt").map(str::to_owned));
        found
    };

    // The flaky job: one producer span, two consumer spans (one per attempt).
    let send = by_id(flaky.as_str(), kind::PRODUCER);
    assert_eq!(send.len(), 1, "one send span: {send:#?}");
    let send = send[0];
    assert_eq!(send.name, format!("send {queue}"));
    assert_eq!(send.attribute("messaging.system"), Some(system));
    assert_eq!(send.attribute("messaging.operation.type"), Some("send"));
    assert_eq!(send.service, "longshore-telemetry-test");
    let attempts = by_id(flaky.as_str(), kind::CONSUMER);
    assert_eq!(
        attempts.len(),
        2,
        "one process span per attempt: {attempts:#?}"
    );
    for (n, span) in attempts.iter().enumerate() {
        assert_eq!(span.name, format!("process {queue}"));
        assert_eq!(
            span.trace_id, send.trace_id,
            "the job continues the producer's trace"
        );
        assert_eq!(
            span.parent_span_id, send.span_id,
            "the producer span is the parent"
        );
        assert_eq!(span.attribute("messaging.system"), Some(system));
        assert_eq!(span.attribute("messaging.operation.type"), Some("process"));
        assert_eq!(span.attribute("messaging.message.id"), Some(flaky.as_str()));
        assert_eq!(span.attribute("longshore.job.name"), Some("traced"));
        let attempt = (n + 1).to_string();
        assert_eq!(
            span.attribute("longshore.job.attempt"),
            Some(attempt.as_str())
        );
    }
    let (first, second) = (attempts[0], attempts[1]);
    assert_eq!(
        first.status_code, STATUS_ERROR,
        "a failed attempt is an error"
    );
    assert!(
        first.status_message.contains("database busy on attempt 1"),
        "{first:#?}"
    );
    assert!(
        first.events.iter().any(|e| e == "job failed; retrying"),
        "the retry is a span event: {:?}",
        first.events
    );
    assert_ne!(
        second.status_code, STATUS_ERROR,
        "the second attempt succeeded"
    );

    // The handler's own span nests inside its attempt's span.
    for attempt in [first, second] {
        let children: Vec<&Span> = spans
            .iter()
            .filter(|s| s.name == "load customer" && s.parent_span_id == attempt.span_id)
            .collect();
        assert_eq!(
            children.len(),
            1,
            "the handler's span is a child of its attempt"
        );
        assert_eq!(children[0].trace_id, send.trace_id);
        assert_eq!(children[0].kind, kind::INTERNAL);
        assert!(children[0].events.iter().any(|e| e == "customer loaded"));
    }

    // The permanent failure: error status with the reason, a dead-letter event.
    let send = by_id(doomed.as_str(), kind::PRODUCER);
    let dead = by_id(doomed.as_str(), kind::CONSUMER);
    assert_eq!((send.len(), dead.len()), (1, 1), "{send:#?} {dead:#?}");
    assert_eq!(dead[0].trace_id, send[0].trace_id);
    assert_eq!(dead[0].parent_span_id, send[0].span_id);
    assert_eq!(dead[0].status_code, STATUS_ERROR);
    assert!(
        dead[0]
            .status_message
            .contains("the customer does not exist"),
        "{:#?}",
        dead[0]
    );
    assert!(
        dead[0]
            .events
            .iter()
            .any(|e| e == "job failed; dead-lettering"),
        "dead-lettering is a span event: {:?}",
        dead[0].events
    );
    h.broker.delete(&queue).await.expect("delete the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_job_spans_continue_the_producer_trace() {
    job_spans_continue_the_producer_trace(memory_harness(), "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_job_spans_continue_the_producer_trace() {
    let h = rabbitmq_harness().await;
    job_spans_continue_the_producer_trace(h, "rabbitmq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_job_spans_continue_the_producer_trace() {
    let h = sqs_harness().await;
    job_spans_continue_the_producer_trace(h, "aws_sqs").await;
}

/// The latest value of a metric point for `queue` (summed over other attributes).
fn latest(points: &[integration_tests::otlp::Point], metric: &str, queue: &QueueName) -> f64 {
    let ours: Vec<_> = points
        .iter()
        .filter(|p| {
            p.metric == metric
                && p.attributes
                    .get("messaging.destination.name")
                    .map(String::as_str)
                    == Some(queue.as_str())
        })
        .collect();
    let Some(newest) = ours.iter().map(|p| p.time).max() else {
        return 0.0;
    };
    ours.iter()
        .filter(|p| p.time == newest)
        .map(|p| p.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_mix_of_outcomes() {
    let receiver = &telemetry().receiver;
    let h = memory_harness();
    let queue = declared_queue(&h, "metrics").await;
    let recorder = Arc::new(Recorder::default());
    // 4 succeed at once, 2 fail once and then succeed, 1 fails permanently, 1 panics on
    // every attempt (3 attempts, then dead-lettered): 12 attempts.
    let mut probes: Vec<Probe> = (0..4).map(|k| probe(k, Behaviour::Succeed)).collect();
    probes.extend((4..6).map(|k| probe(k, Behaviour::FailUntil(2))));
    probes.push(probe(6, Behaviour::FailPermanently));
    probes.push(probe(7, Behaviour::PanicUntil(99)));
    integration_tests::conformance::enqueue(&h, &queue, probes).await;
    let worker =
        Running::start(probe_worker(&h, &queue, &recorder).telemetry(telemetry().guard.hooks()));
    integration_tests::conformance::await_worker(&h, &worker, "the mix to settle", |s| {
        s.succeeded == 6 && s.dead_lettered == 2
    })
    .await;
    worker.stop().await;

    let expected = [
        ("longshore.jobs.started", 12.0),
        ("longshore.jobs.succeeded", 6.0),
        ("longshore.jobs.retried", 4.0),
        ("longshore.jobs.dead_lettered", 2.0),
        ("longshore.jobs.in_flight", 0.0),
        ("messaging.process.duration", 12.0),
    ];
    eventually(
        Duration::from_secs(20),
        "the job metrics at the receiver",
        || async {
            flush().await;
            let points = receiver.points();
            let seen: Vec<(&str, f64)> = expected
                .iter()
                .map(|(metric, _)| (*metric, latest(&points, metric, &queue)))
                .collect();
            if seen.iter().zip(&expected).all(|(a, b)| a.1 == b.1) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    let points = receiver.points();
    let depth: Vec<_> = points
        .iter()
        .filter(|p| {
            p.metric == "longshore.queue.depth"
                && p.attributes
                    .get("messaging.destination.name")
                    .map(String::as_str)
                    == Some(queue.as_str())
        })
        .collect();
    assert!(
        depth.iter().any(|p| p
            .attributes
            .get("longshore.queue.state")
            .map(String::as_str)
            == Some("ready")),
        "the queue depth is sampled from the broker: {depth:?}"
    );
    let by_job = points.iter().any(|p| {
        p.metric == "longshore.jobs.succeeded"
            && p.attributes.get("longshore.job.name").map(String::as_str) == Some("probe")
            && p.attributes.get("messaging.system").map(String::as_str) == Some("memory")
    });
    assert!(by_job, "counters carry the job name and system");
}
