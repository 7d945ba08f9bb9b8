//! The job's scope on a broker: per-job values disposed by outcome before the delivery
//! settles; a disposer that fails, panics or hangs fails the attempt, and the delivery still
//! settles, its concurrency slot given back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longshore::{EnqueueOptions, JobContext, JobError, Producer, RetryPolicy, Worker};

use super::{
    await_settled, await_worker, cleanup, declared_queue, enqueue, stats, take_dead_letters,
};
use crate::harness::{Behaviour, Harness, Probe, Recorder, Running, probe};

/// Each job gets fresh scoped values; they are disposed after success, failure and panic,
/// with the outcome, before the delivery settles.
pub async fn scoped_values_are_fresh_and_disposed_on_every_outcome(h: &Harness) {
    struct Tx {
        serial: usize,
        key_attempt: (String, u32),
    }
    let queue = declared_queue(h, "scope").await;
    let recorder = Arc::new(Recorder::default());
    let built = Arc::new(AtomicUsize::new(0));
    type Disposed = Vec<(usize, (String, u32), bool)>;
    let disposed: Arc<Mutex<Disposed>> = Arc::default();
    let (built_in, disposed_in) = (Arc::clone(&built), Arc::clone(&disposed));
    enqueue(
        h,
        &queue,
        vec![
            Probe {
                key: 0,
                behaviour: Behaviour::Succeed,
            },
            Probe {
                key: 1,
                behaviour: Behaviour::FailPermanently,
            },
            Probe {
                key: 2,
                behaviour: Behaviour::PanicUntil(2),
            },
        ],
    )
    .await;
    async fn probe_in_tx(
        job: Probe,
        recorder: longshore::Dep<Recorder>,
        tx: longshore::Dep<Tx>,
        ctx: longshore::JobContext,
    ) -> Result<(), longshore::JobError> {
        assert_eq!(tx.key_attempt.1, ctx.attempt.get());
        probe(job, recorder, ctx).await
    }
    let builder = Worker::builder(Arc::clone(&h.broker), queue.clone())
        .dependency_arc(Arc::clone(&recorder))
        .scoped_with_disposer(
            move |ctx: JobContext| {
                let serial = built_in.fetch_add(1, Ordering::SeqCst);
                let key_attempt = (ctx.id.to_string(), ctx.attempt.get());
                async move {
                    Ok::<_, longshore::JobError>(Tx {
                        serial,
                        key_attempt,
                    })
                }
            },
            move |tx: Tx, succeeded| {
                let disposed = Arc::clone(&disposed_in);
                async move {
                    disposed.lock().expect("not poisoned").push((
                        tx.serial,
                        tx.key_attempt,
                        succeeded,
                    ));
                    Ok::<_, longshore::JobError>(())
                }
            },
        )
        .handler(probe_in_tx)
        .queue_options(longshore::QueueOptions::default().visibility_timeout(h.timing.visibility))
        .concurrency(1)
        .retry_policy(longshore::RetryPolicy::exponential(
            Duration::from_millis(10),
            Duration::from_millis(50),
            3,
        ));
    let worker = Running::start(builder);
    await_worker(h, &worker, "2 successes and 1 dead letter", |s| {
        s.succeeded == 2 && s.dead_lettered == 1
    })
    .await;
    await_settled(h, &queue, 0, 1).await;
    worker.stop().await;

    let disposed = disposed.lock().expect("not poisoned").clone();
    assert_eq!(
        built.load(Ordering::SeqCst),
        4,
        "one value per run (3 jobs, one retried)"
    );
    let mut serials: Vec<usize> = disposed.iter().map(|d| d.0).collect();
    serials.sort_unstable();
    assert_eq!(
        serials,
        vec![0, 1, 2, 3],
        "every value disposed exactly once"
    );
    let mut outcomes: Vec<bool> = disposed.iter().map(|d| d.2).collect();
    outcomes.sort_unstable();
    assert_eq!(
        outcomes,
        vec![false, false, true, true],
        "success, permanent failure, panic, and the panic's successful retry"
    );
    assert_eq!(stats(h, &queue).await.dead_lettered.unwrap_or(1), 1);
    cleanup(h, &queue).await;
}

/// What a test disposer does, read from the job's `dispose` header.
struct Instructed(String);

/// A worker whose per-job `Instructed` value's disposer commits, refuses the first commit,
/// panics or hangs as the job's `dispose` header says; one job at a time.
fn instructed_worker(
    h: &Harness,
    queue: &longshore::QueueName,
    recorder: &Arc<Recorder>,
) -> longshore::WorkerBuilder {
    let refused = Arc::new(AtomicUsize::new(0));
    async fn probe_in_scope(
        job: Probe,
        recorder: longshore::Dep<Recorder>,
        _instructed: longshore::Dep<Instructed>,
        ctx: JobContext,
    ) -> Result<(), JobError> {
        probe(job, recorder, ctx).await
    }
    Worker::builder(Arc::clone(&h.broker), queue.clone())
        .dependency_arc(Arc::clone(recorder))
        .scoped_with_disposer(
            |ctx: JobContext| async move {
                let what = ctx.headers.get("dispose").cloned().unwrap_or_default();
                Ok::<_, JobError>(Instructed(what))
            },
            move |instructed: Instructed, succeeded| {
                let refused = Arc::clone(&refused);
                async move {
                    match instructed.0.as_str() {
                        "panic" => panic!("the disposer panicked on purpose"),
                        "hang" => std::future::pending().await,
                        "refuse-once"
                            if succeeded && refused.fetch_add(1, Ordering::SeqCst) == 0 =>
                        {
                            Err(JobError::retryable("commit refused: serialization failure"))
                        }
                        _ => Ok(()),
                    }
                }
            },
        )
        .handler(probe_in_scope)
        .concurrency(1)
        .dispose_timeout(Duration::from_millis(200))
        .queue_options(longshore::QueueOptions::default().visibility_timeout(h.timing.visibility))
        .retry_policy(RetryPolicy::exponential(
            Duration::from_millis(10),
            Duration::from_millis(50),
            2,
        ))
}

async fn enqueue_instructed(h: &Harness, queue: &longshore::QueueName, key: u32, dispose: &str) {
    Producer::new(Arc::clone(&h.broker), queue.clone())
        .enqueue_with(
            &Probe {
                key,
                behaviour: Behaviour::Succeed,
            },
            EnqueueOptions::default().header("dispose", dispose),
        )
        .await
        .expect("enqueue");
}

/// A disposer that panics and one that hangs each fail their attempts (dead-lettered with
/// the reason once attempts run out); the deliveries settle, the one concurrency slot comes
/// back each time (the job after them runs), and nothing stays in flight. A commit refused
/// once is retried, not acked.
pub async fn failing_panicking_and_hanging_disposers_fail_the_attempt_and_settle(h: &Harness) {
    let queue = declared_queue(h, "dispose").await;
    let recorder = Arc::new(Recorder::default());
    enqueue_instructed(h, &queue, 0, "panic").await;
    enqueue_instructed(h, &queue, 1, "hang").await;
    enqueue_instructed(h, &queue, 2, "refuse-once").await;
    enqueue_instructed(h, &queue, 3, "commit").await;
    let worker = Running::start(instructed_worker(h, &queue, &recorder));
    await_worker(h, &worker, "2 dead letters and 2 successes", |s| {
        s.dead_lettered == 2 && s.succeeded == 2
    })
    .await;
    let report = worker.stop().await;
    assert_eq!(report.stats.in_flight, 0, "{:?}", report.stats);
    assert_eq!(recorder.runs(2).len(), 2, "the refused commit was retried");
    assert_eq!(recorder.runs(3).len(), 1);
    await_settled(h, &queue, 0, 2).await;
    let reasons: Vec<String> = take_dead_letters(h, &queue, 2)
        .await
        .iter()
        .map(|m| {
            m.headers
                .get(longshore::spi::headers::DEAD_REASON)
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    for expected in [
        "panicked: the disposer panicked on purpose",
        "did not finish within 200ms",
    ] {
        assert!(
            reasons.iter().any(|reason| reason.contains(expected)),
            "{expected}: {reasons:?}"
        );
    }
    cleanup(h, &queue).await;
}
