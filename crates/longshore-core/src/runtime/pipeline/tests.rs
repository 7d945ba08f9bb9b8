//! The per-job stack on the memory broker: disposers that fail, panic or hang; user layers;
//! telemetry per worker.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::message::headers;
use crate::spi::{Headers, JobEvent, Telemetry};
use crate::{
    BuildError, Dep, Job, JobContext, JobError, JobRequest, Layer, MemoryBroker, Next, Outcome,
    Producer, QueueName, QueueOptions, RetryPolicy, StatsSnapshot, Worker, WorkerBuilder,
    async_trait,
};

#[derive(Serialize, Deserialize)]
struct Bill {
    fail_first: bool,
}

impl Job for Bill {
    const NAME: &'static str = "bill";
}

async fn bill(job: Bill, ctx: JobContext) -> Result<(), JobError> {
    if job.fail_first && ctx.attempt.get() == 1 {
        return Err(JobError::retryable("payment provider busy"));
    }
    Ok(())
}

async fn bill_in_tx(job: Bill, _tx: Dep<Tx>, ctx: JobContext) -> Result<(), JobError> {
    bill(job, ctx).await
}

/// A per-job transaction whose disposer is told what to do.
struct Tx;

async fn queue_with(broker: &MemoryBroker, jobs: Vec<Bill>) -> QueueName {
    let queue = QueueName::new("billing");
    crate::Broker::declare(broker, &queue, &QueueOptions::default())
        .await
        .unwrap();
    let producer = Producer::new(broker.clone(), queue.clone());
    for job in jobs {
        producer.enqueue(&job).await.unwrap();
    }
    queue
}

fn fast_retries(builder: WorkerBuilder) -> WorkerBuilder {
    builder.retry_policy(RetryPolicy::exponential(
        Duration::from_millis(5),
        Duration::from_millis(20),
        2,
    ))
}

/// Runs the worker until `done` holds for its counters (or 10 s pass), then stops it.
async fn run_until(builder: WorkerBuilder, done: impl Fn(&StatsSnapshot) -> bool) -> StatsSnapshot {
    let worker = builder.build().expect("builds");
    let (stats, shutdown) = (worker.stats(), worker.shutdown_handle());
    let running = tokio::spawn(worker.run_until_stopped());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&stats.snapshot()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; counters: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shutdown.shutdown();
    running.await.unwrap().unwrap().stats
}

fn dead_reasons(broker: &MemoryBroker, queue: &QueueName) -> Vec<String> {
    broker
        .messages(&queue.dead_letter_queue())
        .unwrap()
        .iter()
        .map(|m| {
            m.headers
                .get(headers::DEAD_REASON)
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn a_commit_that_fails_is_retried_never_acked() {
    let broker = MemoryBroker::new();
    let queue = queue_with(&broker, vec![Bill { fail_first: false }]).await;
    let commits = Arc::new(AtomicU32::new(0));
    let tries = Arc::clone(&commits);
    let builder = Worker::builder(broker.clone(), queue.clone())
        .scoped_with_disposer(
            || async { Ok::<_, JobError>(Tx) },
            move |_tx: Tx, succeeded| {
                let tries = Arc::clone(&tries);
                async move {
                    if succeeded && tries.fetch_add(1, Ordering::SeqCst) == 0 {
                        return Err(JobError::retryable("commit refused: serialization failure"));
                    }
                    Ok(())
                }
            },
        )
        .handler(bill_in_tx);
    let stats = run_until(fast_retries(builder), |s| s.succeeded == 1).await;
    assert_eq!((stats.retried, stats.succeeded, stats.in_flight), (1, 1, 0));
    assert_eq!(
        commits.load(Ordering::SeqCst),
        2,
        "refused once, then committed"
    );
    assert!(dead_reasons(&broker, &queue).is_empty());
}

async fn explode(_tx: Tx, _succeeded: bool) -> Result<(), JobError> {
    panic!("disposer blew up")
}

#[tokio::test]
async fn a_panicking_disposer_settles_the_delivery_and_in_flight_returns_to_zero() {
    let broker = MemoryBroker::new();
    let queue = queue_with(&broker, vec![Bill { fail_first: false }]).await;
    let builder = Worker::builder(broker.clone(), queue.clone())
        .scoped_with_disposer(|| async { Ok::<_, JobError>(Tx) }, explode)
        .handler(bill_in_tx);
    let stats = run_until(fast_retries(builder), |s| s.dead_lettered == 1).await;
    assert_eq!(
        (stats.retried, stats.dead_lettered, stats.in_flight),
        (1, 1, 0)
    );
    let reasons = dead_reasons(&broker, &queue);
    assert!(
        reasons[0].contains(
            "disposer of `longshore_core::runtime::pipeline::tests::Tx` panicked: disposer blew up"
        ),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn a_hanging_disposer_is_a_failed_attempt_after_the_disposal_timeout() {
    let broker = MemoryBroker::new();
    let queue = queue_with(&broker, vec![Bill { fail_first: false }]).await;
    let builder = Worker::builder(broker.clone(), queue.clone())
        .scoped_with_disposer(
            || async { Ok::<_, JobError>(Tx) },
            |_tx: Tx, _succeeded| std::future::pending::<Result<(), JobError>>(),
        )
        .dispose_timeout(Duration::from_millis(30))
        .concurrency(1)
        .handler(bill_in_tx);
    let stats = run_until(fast_retries(builder), |s| s.dead_lettered == 1).await;
    assert_eq!((stats.dead_lettered, stats.in_flight), (1, 0));
    assert!(
        dead_reasons(&broker, &queue)[0].contains("did not finish within 30ms"),
        "the permit was given back and the delivery settled"
    );
}

#[tokio::test]
async fn disposers_commit_on_success_and_roll_back_on_failure() {
    let broker = MemoryBroker::new();
    let queue = queue_with(&broker, vec![Bill { fail_first: true }]).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let builder = Worker::builder(broker.clone(), queue)
        .scoped_with_disposer(
            || async { Ok::<_, JobError>(Tx) },
            move |_tx: Tx, succeeded| {
                let log = Arc::clone(&log);
                async move {
                    log.lock().unwrap().push(succeeded);
                    Ok::<_, JobError>(())
                }
            },
        )
        .handler(bill_in_tx);
    run_until(fast_retries(builder), |s| s.succeeded == 1).await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![false, true],
        "rolled back, then committed"
    );
}

#[test]
fn factories_are_checked_at_build_and_cycles_rejected() {
    struct Pool;
    struct A;
    struct B;
    let error = Worker::builder(MemoryBroker::new(), "q")
        .scoped(|_pool: Dep<Pool>| async { Ok::<_, JobError>(Tx) })
        .handler(bill_in_tx)
        .build()
        .expect_err("Pool is missing");
    assert!(
        error.to_string().contains("the per-job factory of `longshore_core::runtime::pipeline::tests::Tx` needs a `longshore_core::runtime::pipeline::tests::factories_are_checked_at_build_and_cycles_rejected::Pool`"),
        "{error}"
    );

    let error = Worker::builder(MemoryBroker::new(), "q")
        .scoped(|_b: Dep<B>| async { Ok::<_, JobError>(A) })
        .scoped(|_a: Dep<A>| async { Ok::<_, JobError>(B) })
        .scoped(|_a: Dep<A>| async { Ok::<_, JobError>(Tx) })
        .handler(bill_in_tx)
        .build()
        .expect_err("a cycle");
    assert!(matches!(error, BuildError::DependencyCycle(_)), "{error}");
    assert!(error.to_string().contains("A → "), "{error}");
}

/// Records every attempt a layer sees, and the outcome below it.
#[derive(Default)]
struct Recording(Mutex<Vec<(u32, &'static str)>>);

#[async_trait]
impl Layer for Arc<Recording> {
    async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
        let attempt = job.context().attempt.get();
        let outcome = next.run(job).await;
        self.0.lock().unwrap().push((attempt, outcome.name()));
        outcome
    }
}

#[tokio::test]
async fn a_user_layer_sees_every_attempt_before_it_is_settled() {
    let broker = MemoryBroker::new();
    let queue = queue_with(&broker, vec![Bill { fail_first: true }]).await;
    let recording = Arc::new(Recording::default());
    let builder = Worker::builder(broker, queue)
        .layer(Arc::clone(&recording))
        .handler(bill);
    run_until(fast_retries(builder), |s| s.succeeded == 1).await;
    assert_eq!(
        *recording.0.lock().unwrap(),
        vec![(1, "failed"), (2, "succeeded")]
    );
}

/// Skips jobs whose `skip` header is set, without running them.
struct SkipFlagged(AtomicUsize);

#[async_trait]
impl Layer for SkipFlagged {
    async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
        if job.context().headers.contains_key("skip") {
            self.0.fetch_add(1, Ordering::SeqCst);
            return Outcome::Succeeded;
        }
        next.run(job).await
    }
}

/// Panics on every job.
struct Panicky;

#[async_trait]
impl Layer for Panicky {
    async fn call(&self, _job: &mut JobRequest, _next: Next<'_>) -> Outcome {
        panic!("a layer bug")
    }
}

#[tokio::test]
async fn a_layer_may_skip_the_handler_and_a_panicking_layer_fails_the_attempt() {
    let broker = MemoryBroker::new();
    let queue = queue_with(&broker, vec![]).await;
    Producer::new(broker.clone(), queue.clone())
        .enqueue_with(
            &Bill { fail_first: true },
            crate::EnqueueOptions::default().header("skip", "1"),
        )
        .await
        .unwrap();
    let skipped = Arc::new(SkipFlagged(AtomicUsize::new(0)));
    struct Shared(Arc<SkipFlagged>);
    #[async_trait]
    impl Layer for Shared {
        async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
            self.0.call(job, next).await
        }
    }
    let builder = Worker::builder(broker.clone(), queue.clone())
        .layer(Shared(Arc::clone(&skipped)))
        .handler(bill);
    let stats = run_until(builder, |s| s.succeeded == 1).await;
    assert_eq!(
        (stats.succeeded, stats.retried),
        (1, 0),
        "acked without running"
    );
    assert_eq!(skipped.0.load(Ordering::SeqCst), 1);
    assert_eq!(
        crate::Broker::stats(&broker, &queue).await.unwrap().total(),
        0
    );

    Producer::new(broker.clone(), queue.clone())
        .enqueue(&Bill { fail_first: false })
        .await
        .unwrap();
    let builder = Worker::builder(broker.clone(), queue.clone())
        .layer(Panicky)
        .handler(bill);
    let stats = run_until(fast_retries(builder), |s| s.dead_lettered == 1).await;
    assert_eq!((stats.retried, stats.in_flight), (1, 0));
    assert!(
        dead_reasons(&broker, &queue)[0].contains("a layer panicked: a layer bug"),
        "{:?}",
        dead_reasons(&broker, &queue)
    );
}

/// Counts what one worker's telemetry hooks saw.
#[derive(Default)]
struct Counting {
    started: AtomicUsize,
    finished: Mutex<Vec<(String, &'static str)>>,
}

impl Telemetry for Counting {
    fn continue_trace(&self, _span: &tracing::Span, _headers: &Headers) {}
    fn inject(&self, _span: &tracing::Span, headers: &mut Headers) {
        headers.insert("traced-by".into(), "counting".into());
    }
    fn job_started(&self, _event: &JobEvent<'_>) {
        self.started.fetch_add(1, Ordering::SeqCst);
    }
    fn job_finished(&self, event: &JobEvent<'_>, outcome: &Outcome, _elapsed: Duration) {
        self.finished
            .lock()
            .unwrap()
            .push((event.job.to_string(), outcome.name()));
    }
}

#[tokio::test]
async fn each_worker_and_producer_uses_its_own_telemetry() {
    let broker = MemoryBroker::new();
    let (one, two) = (Arc::new(Counting::default()), Arc::new(Counting::default()));
    let queue = queue_with(&broker, vec![]).await;
    let producer = Producer::new(broker.clone(), queue.clone()).with_telemetry(one.clone());
    producer.enqueue(&Bill { fail_first: false }).await.unwrap();
    let mut junk = crate::spi::Message::new("no-such-job", b"{}".to_vec());
    junk.headers_mut().insert("x".into(), "y".into());
    crate::Broker::publish(&broker, &queue, junk).await.unwrap();
    assert_eq!(
        broker.messages(&queue).unwrap()[0]
            .headers
            .get("traced-by")
            .map(String::as_str),
        Some("counting"),
        "the producer injected with its own hooks"
    );
    let builder = Worker::builder(broker.clone(), queue.clone())
        .telemetry(one.clone())
        .handler(bill);
    run_until(builder, |s| s.succeeded + s.dead_lettered == 2).await;
    assert_eq!(one.started.load(Ordering::SeqCst), 2);
    let mut finished = one.finished.lock().unwrap().clone();
    finished.sort();
    assert_eq!(
        finished,
        vec![
            ("bill".to_owned(), "succeeded"),
            ("unknown".to_owned(), "dead_lettered")
        ],
        "a job without a handler is labelled `unknown`"
    );

    Producer::new(broker.clone(), queue.clone())
        .enqueue(&Bill { fail_first: false })
        .await
        .unwrap();
    let builder = Worker::builder(broker, queue)
        .telemetry(two.clone())
        .handler(bill);
    run_until(builder, |s| s.succeeded == 1).await;
    assert_eq!(two.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        one.started.load(Ordering::SeqCst),
        2,
        "the first worker's hooks saw nothing more"
    );
}
