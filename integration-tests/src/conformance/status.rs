//! Job status on every store (memory, PostgreSQL, Redis), driven by workers on the memory
//! broker: unknown ids, every transition with its sequence number, progress, results,
//! retention and expiry, cancellation before and during a run, and deduplication on
//! enqueue and on redelivery.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use futures_util::StreamExt;
use longshore::spi::{Acknowledger, ConsumeOptions, Delivery, DeliveryStream, Message, Settlement};
use longshore::status::{CancelOutcome, Change, JobState, JobStatus, JobStatuses, patch};
use longshore::{
    Attempt, Broker, BrokerError, EnqueueOptions, Job, JobContext, JobError, MemoryBroker,
    MessageId, Producer, QueueName, QueueOptions, QueueStats, RetryPolicy, Worker,
};
use serde::{Deserialize, Serialize};

use crate::harness::{Running, eventually, unique_queue};

/// A status store under test: makes fresh statuses for each test.
pub struct StatusHarness {
    make: Box<dyn Fn() -> futures_util::future::BoxFuture<'static, JobStatuses> + Send + Sync>,
    /// How long the store takes to drop an expired status once purged (Redis TTLs are exact).
    pub expiry_slack: Duration,
}

impl StatusHarness {
    /// A harness making statuses with `make`.
    pub fn new<F, Fut>(make: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobStatuses> + Send + 'static,
    {
        Self {
            make: Box::new(move || Box::pin(make())),
            expiry_slack: Duration::from_secs(2),
        }
    }

    /// Fresh statuses on the store.
    pub async fn statuses(&self) -> JobStatuses {
        (self.make)().await
    }
}

/// The job the suite runs: what to do, by attempt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Task {
    /// Fail (retryably) while the attempt is below this.
    pub fail_until: u32,
    /// Progress reports to make, `pause_ms` apart (and from the start and the end).
    pub reports: u32,
    /// The pause between reports and before finishing.
    pub pause_ms: u64,
    /// Wait up to this long for the job's cancellation, then fail if it came.
    pub wait_for_cancel_ms: u64,
    /// The size of a result to leave, in bytes of JSON string.
    pub result_bytes: usize,
}

impl Default for Task {
    fn default() -> Self {
        Self {
            fail_until: 0,
            reports: 0,
            pause_ms: 0,
            wait_for_cancel_ms: 0,
            result_bytes: 16,
        }
    }
}

impl Job for Task {
    const NAME: &'static str = "status_task";
}

/// How many times the task ran.
#[derive(Default)]
pub struct Runs(AtomicU32);

async fn task(job: Task, runs: longshore::Dep<Runs>, ctx: JobContext) -> Result<(), JobError> {
    runs.0.fetch_add(1, Ordering::SeqCst);
    for n in 0..job.reports {
        tokio::time::sleep(Duration::from_millis(job.pause_ms)).await;
        ctx.progress(
            f64::from(n + 1) / f64::from(job.reports),
            format!("step {} of {}", n + 1, job.reports),
        );
    }
    if job.reports > 0 {
        tokio::time::sleep(Duration::from_millis(job.pause_ms)).await;
    }
    if job.wait_for_cancel_ms > 0 {
        let waited = tokio::time::timeout(
            Duration::from_millis(job.wait_for_cancel_ms),
            ctx.cancelled(),
        )
        .await;
        if waited.is_ok() {
            return Err(JobError::retryable("stopped: cancelled"));
        }
    }
    if ctx.attempt.get() < job.fail_until {
        return Err(JobError::retryable(format!(
            "flaky on attempt {}",
            ctx.attempt
        )));
    }
    ctx.set_result(
        &serde_json::json!({ "text": "x".repeat(job.result_bytes), "big": 12345678901234567u64 }),
    )?;
    Ok(())
}

struct Setup {
    broker: MemoryBroker,
    queue: QueueName,
    statuses: JobStatuses,
    producer: Producer,
    runs: Arc<Runs>,
}

async fn setup(statuses: JobStatuses) -> Setup {
    let broker = MemoryBroker::new();
    let queue = unique_queue("status");
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare");
    let producer = Producer::new(broker.clone(), queue.clone()).with_status(statuses.clone());
    Setup {
        broker,
        queue,
        statuses,
        producer,
        runs: Arc::default(),
    }
}

impl Setup {
    fn worker_on(&self, broker: impl longshore::IntoBroker) -> Running {
        Running::start(
            Worker::builder(broker, self.queue.clone())
                .dependency_arc(Arc::clone(&self.runs))
                .handler(task)
                .status(self.statuses.clone())
                .retry_policy(RetryPolicy::exponential(
                    Duration::from_millis(200),
                    Duration::from_millis(400),
                    3,
                )),
        )
    }

    fn worker(&self) -> Running {
        self.worker_on(self.broker.clone())
    }

    async fn enqueue(&self, job: Task) -> MessageId {
        self.producer.enqueue(&job).await.expect("enqueue")
    }

    async fn await_state(&self, id: &MessageId, state: JobState) -> JobStatus {
        eventually(
            Duration::from_secs(15),
            &format!("job {id} to be {}", state.as_str()),
            || async {
                match self.statuses.get(id).await {
                    Ok(Some(status)) if status.state == state => Ok(status),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    }
}

fn states(events: &[JobStatus]) -> Vec<&'static str> {
    events.iter().map(|e| e.state.as_str()).collect()
}

/// An id the store never saw is not found: no status, no events.
pub async fn unknown_ids_are_not_found(h: &StatusHarness) {
    let statuses = h.statuses().await;
    let id = MessageId::generate();
    assert_eq!(statuses.get(&id).await.expect("get"), None);
    assert!(statuses.events(&id, 0).await.expect("events").is_empty());
    assert_eq!(
        statuses.cancel(&id).await.expect("cancel"),
        CancelOutcome::NotFound
    );
}

/// Queued at enqueue (before any worker runs), then running, progress, retrying, running
/// again, progress, succeeded with its result: every change an event with the next
/// sequence number. (The steps are apart: changes of one job that wait for the store
/// together are written as one, which `changes_waiting_together_are_written_as_one` shows.)
pub async fn a_job_moves_through_every_state_with_increasing_sequence_numbers(h: &StatusHarness) {
    let s = setup(h.statuses().await).await;
    let id = s
        .enqueue(Task {
            fail_until: 2,
            reports: 1,
            pause_ms: 150,
            ..Task::default()
        })
        .await;
    let queued = s
        .statuses
        .get(&id)
        .await
        .expect("get")
        .expect("written at enqueue");
    assert_eq!(
        (queued.state, queued.seq, queued.attempt),
        (JobState::Queued, 1, 0)
    );
    assert_eq!(queued.job.as_str(), "status_task");
    let worker = s.worker();
    let done = s.await_state(&id, JobState::Succeeded).await;
    worker.stop().await;
    assert_eq!(done.attempt, 2);
    assert_eq!(
        done.result,
        Some(serde_json::json!({ "text": "x".repeat(16), "big": 12345678901234567u64 })),
        "the result, its numbers exact"
    );
    assert!(done.finished_at.is_some() && done.worker.is_some());
    let events = s.statuses.events(&id, 0).await.expect("events");
    assert_eq!(
        states(&events),
        [
            "queued",
            "running",
            "running",
            "retrying",
            "running",
            "running",
            "succeeded"
        ],
        "{events:#?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(events[2].progress.as_ref().map(|p| p.fraction), Some(1.0));
    assert_eq!(events[3].error.as_deref(), Some("flaky on attempt 1"));
    assert!(
        events[3].due_at.is_some(),
        "retrying says when it runs again"
    );
    assert_eq!(done.seq, 7);
    let after_four = s.statuses.events(&id, 4).await.expect("events");
    assert_eq!(
        after_four.first().map(|e| e.seq),
        Some(5),
        "resumable after any seq"
    );
}

/// A chatty handler does not flood the store: at most one progress write per 250 ms, and
/// the latest report is written when the interval ends.
pub async fn progress_is_throttled(h: &StatusHarness) {
    let s = setup(h.statuses().await).await;
    let id = s
        .enqueue(Task {
            reports: 50,
            pause_ms: 4,
            ..Task::default()
        })
        .await;
    let worker = s.worker();
    s.await_state(&id, JobState::Succeeded).await;
    worker.stop().await;
    let events = s.statuses.events(&id, 0).await.expect("events");
    let reports = events.iter().filter(|e| e.progress.is_some()).count();
    // 50 reports over about 200 ms (plus the succeeded event, which keeps the last).
    assert!(
        (2..=4).contains(&reports),
        "{reports} events with progress: {events:#?}"
    );
}

/// A result over the limit is a permanent error: the job is dead-lettered saying why.
pub async fn results_over_the_limit_are_refused(h: &StatusHarness) {
    let s = setup(h.statuses().await.result_limit(100)).await;
    let id = s
        .enqueue(Task {
            result_bytes: 500,
            ..Task::default()
        })
        .await;
    let worker = s.worker();
    let dead = s.await_state(&id, JobState::DeadLettered).await;
    worker.stop().await;
    let reason = dead.error.unwrap_or_default();
    assert!(
        reason.contains("the status store keeps at most 100"),
        "{reason}"
    );
    assert_eq!(s.runs.0.load(Ordering::SeqCst), 1, "not retried");
}

/// A finished job's status is kept for the retention period, then removed by the store.
pub async fn finished_jobs_expire_after_the_retention(h: &StatusHarness) {
    let s = setup(h.statuses().await.retention(Duration::from_secs(1))).await;
    let id = s.enqueue(Task::default()).await;
    let worker = s.worker();
    let done = s.await_state(&id, JobState::Succeeded).await;
    worker.stop().await;
    eventually(
        Duration::from_secs(1) + h.expiry_slack * 2,
        "the status to expire",
        || async {
            s.statuses.store().purge_expired().await.expect("purge");
            match s.statuses.get(&id).await.expect("get") {
                None => Ok(()),
                Some(status) => Err(format!("{:?} until {:?}", status.state, status.expires_at)),
            }
        },
    )
    .await;
    let early = done
        .expires_at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        early < Duration::from_millis(100),
        "gone {early:?} before its retention ended"
    );
    assert!(s.statuses.events(&id, 0).await.expect("events").is_empty());
}

/// A delayed job shows when it is due and is kept at least until then, however short the
/// retention.
pub async fn a_delayed_job_is_not_expired_before_it_is_due(h: &StatusHarness) {
    let statuses = h
        .statuses()
        .await
        .retention(Duration::from_millis(300))
        .pending_retention(Duration::from_millis(300));
    let s = setup(statuses).await;
    let due_in = Duration::from_secs(3);
    let id = s
        .producer
        .enqueue_in(&Task::default(), due_in)
        .await
        .expect("enqueue");
    let queued = s.statuses.get(&id).await.expect("get").expect("queued");
    let due = queued.due_at.expect("a delayed job shows when it is due");
    let until_due = due
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(until_due > Duration::from_secs(2), "{until_due:?}");
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    s.statuses.store().purge_expired().await.expect("purge");
    let still = s.statuses.get(&id).await.expect("get");
    assert_eq!(
        still.map(|s| s.state),
        Some(JobState::Queued),
        "kept until it is due"
    );
    let worker = s.worker();
    s.await_state(&id, JobState::Succeeded).await;
    worker.stop().await;
}

/// A job whose cancellation was asked for before a worker met it is skipped when it
/// arrives: acked, never run, status cancelled.
pub async fn a_queued_job_cancelled_is_skipped(h: &StatusHarness) {
    let s = setup(h.statuses().await).await;
    let id = s.enqueue(Task::default()).await;
    let CancelOutcome::Requested(asked) = s.statuses.cancel(&id).await.expect("cancel") else {
        panic!("a queued job can be cancelled");
    };
    assert!(asked.cancel_requested && asked.state == JobState::Queued);
    let worker = s.worker();
    s.await_state(&id, JobState::Cancelled).await;
    let report = worker.stop().await;
    assert_eq!(s.runs.0.load(Ordering::SeqCst), 0, "never run");
    assert_eq!((report.stats.skipped, report.stats.succeeded), (1, 0));
    assert_eq!(
        s.broker.stats(&s.queue).await.expect("stats").total(),
        0,
        "acked"
    );
    assert!(matches!(
        s.statuses.cancel(&id).await.expect("cancel"),
        CancelOutcome::Finished(_)
    ));
}

/// A running job's `JobContext::cancelled()` fires within a second of the request; the
/// job, failing because of it, is cancelled rather than retried.
pub async fn a_running_job_is_told_to_stop_and_not_retried(h: &StatusHarness) {
    let s = setup(h.statuses().await).await;
    let id = s
        .enqueue(Task {
            wait_for_cancel_ms: 20_000,
            ..Task::default()
        })
        .await;
    let worker = s.worker();
    s.await_state(&id, JobState::Running).await;
    let asked = Instant::now();
    assert!(matches!(
        s.statuses.cancel(&id).await.expect("cancel"),
        CancelOutcome::Requested(_)
    ));
    s.await_state(&id, JobState::Cancelled).await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    let report = worker.stop().await;
    assert_eq!((report.stats.skipped, report.stats.retried), (1, 0));
    assert_eq!(s.runs.0.load(Ordering::SeqCst), 1);
}

/// Enqueuing with the unique key of an unfinished job returns that job's id and enqueues
/// nothing; once it finished, the key is free again.
pub async fn a_unique_key_deduplicates_enqueues_while_the_job_is_unfinished(h: &StatusHarness) {
    let s = setup(h.statuses().await).await;
    let key = format!("report-{}", MessageId::generate());
    let options = || EnqueueOptions::default().unique_key(key.clone());
    let first = s
        .producer
        .enqueue_with(&Task::default(), options())
        .await
        .expect("enqueue");
    let again = s
        .producer
        .enqueue_with(&Task::default(), options())
        .await
        .expect("enqueue");
    assert_eq!(again, first);
    assert_eq!(
        s.broker.stats(&s.queue).await.expect("stats").ready,
        1,
        "one message"
    );
    let worker = s.worker();
    s.await_state(&first, JobState::Succeeded).await;
    worker.stop().await;
    let later = s
        .producer
        .enqueue_with(&Task::default(), options())
        .await
        .expect("enqueue");
    assert_ne!(later, first, "a finished job frees its key");
}

/// A broker whose first ack of each message is lost: the job ran and succeeded, and its
/// delivery comes back (attempt 2), as after a crash between the handler and the ack.
struct LosesFirstAcks(
    MemoryBroker,
    Arc<Mutex<std::collections::HashSet<MessageId>>>,
);

struct LosingAck {
    inner: Mutex<Option<Delivery>>,
    lost: Arc<Mutex<std::collections::HashSet<MessageId>>>,
}

#[async_trait]
impl Acknowledger for LosingAck {
    async fn settle(
        &self,
        message: &Message,
        _attempt: Attempt,
        settlement: Settlement,
    ) -> Result<(), BrokerError> {
        let delivery = self
            .inner
            .lock()
            .expect("not poisoned")
            .take()
            .expect("settled once");
        if settlement == Settlement::Ack
            && self
                .lost
                .lock()
                .expect("not poisoned")
                .insert(message.id.clone())
        {
            drop(delivery); // handed back at once, redelivered as attempt 2
            return Err(BrokerError::LeaseLost {
                queue: QueueName::new("test"),
                message_id: message.id.clone(),
            });
        }
        delivery
            .settle(settlement)
            .await
            .map_err(|failed| failed.error)
    }

    async fn extend(&self, _by: Duration) -> Result<(), BrokerError> {
        Ok(())
    }
}

#[async_trait]
impl Broker for LosesFirstAcks {
    fn system(&self) -> &'static str {
        "memory"
    }
    async fn declare(&self, queue: &QueueName, options: &QueueOptions) -> Result<(), BrokerError> {
        self.0.declare(queue, options).await
    }
    async fn verify(&self, queue: &QueueName) -> Result<(), BrokerError> {
        self.0.verify(queue).await
    }
    async fn publish(&self, queue: &QueueName, message: Message) -> Result<(), BrokerError> {
        self.0.publish(queue, message).await
    }
    async fn consume(
        &self,
        queue: &QueueName,
        options: &ConsumeOptions,
    ) -> Result<DeliveryStream, BrokerError> {
        let lost = Arc::clone(&self.1);
        let queue = queue.clone();
        let stream = self.0.consume(&queue, options).await?;
        Ok(stream
            .map(move |delivery| {
                delivery.map(|delivery| {
                    let (message, attempt) = (delivery.message().clone(), delivery.attempt());
                    Delivery::new(
                        message,
                        attempt,
                        queue.clone(),
                        LosingAck {
                            inner: Mutex::new(Some(delivery)),
                            lost: Arc::clone(&lost),
                        },
                    )
                })
            })
            .boxed())
    }
    async fn delete(&self, queue: &QueueName) -> Result<(), BrokerError> {
        self.0.delete(queue).await
    }
    async fn stats(&self, queue: &QueueName) -> Result<QueueStats, BrokerError> {
        self.0.stats(queue).await
    }
}

/// A redelivered job whose status says it succeeded is acked without running again.
pub async fn a_redelivered_job_that_succeeded_is_not_run_again(h: &StatusHarness) {
    let s = setup(h.statuses().await).await;
    let id = s.enqueue(Task::default()).await;
    let flaky = LosesFirstAcks(s.broker.clone(), Arc::default());
    let worker = s.worker_on(flaky);
    s.await_state(&id, JobState::Succeeded).await;
    crate::conformance::await_worker(
        &crate::harness::memory_harness(),
        &worker,
        "the redelivery to be skipped",
        |stats| stats.skipped == 1,
    )
    .await;
    let report = worker.stop().await;
    assert_eq!(s.runs.0.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(
        (report.stats.abandoned, report.stats.skipped),
        (1, 1),
        "{:?}",
        report.stats
    );
    assert_eq!(s.broker.stats(&s.queue).await.expect("stats").total(), 0);
}

/// Changes of one job that reach the store together (in one `apply`) are written as one:
/// the later fields win, the sequence number grows by one, one event is kept, and jobs
/// beside it are untouched. How a fast job costs one write under load.
pub async fn changes_waiting_together_are_written_as_one(h: &StatusHarness) {
    let s = setup(h.statuses().await).await;
    let (fast, other) = (
        s.enqueue(Task::default()).await,
        s.enqueue(Task::default()).await,
    );
    let later = SystemTime::now() + Duration::from_secs(600);
    let progress = longshore::status::Progress {
        fraction: 0.5,
        message: "half".into(),
    };
    let store = s.statuses.store();
    store
        .apply(&[
            Change::new(fast.clone(), patch::running(1, "host:1"), later),
            Change::new(other.clone(), patch::running(1, "host:2"), later),
            Change::new(fast.clone(), patch::progress(&progress), later),
            Change::new(fast.clone(), patch::succeeded(None), later),
        ])
        .await
        .expect("apply");
    let done = store.get(&fast).await.expect("get").expect("kept");
    assert_eq!(
        (done.state, done.seq, done.attempt),
        (JobState::Succeeded, 2, 1)
    );
    assert_eq!(done.worker.as_deref(), Some("host:1"));
    assert!(done.started_at.is_some() && done.finished_at.is_some());
    assert_eq!(done.progress.map(|p| p.message), Some("half".to_owned()));
    let events = store.events(&fast, 0).await.expect("events");
    assert_eq!(states(&events), ["queued", "succeeded"], "{events:#?}");
    let running = store.get(&other).await.expect("get").expect("kept");
    assert_eq!((running.state, running.seq), (JobState::Running, 2));
    assert_eq!(running.worker.as_deref(), Some("host:2"));
}

/// Generates one test per status behaviour for a store. `$setup` is an expression giving a
/// [`StatusHarness`].
#[macro_export]
macro_rules! status_suite {
    ($setup:expr) => {
        $crate::status_suite!(@tests $setup;
            unknown_ids_are_not_found,
            a_job_moves_through_every_state_with_increasing_sequence_numbers,
            progress_is_throttled,
            results_over_the_limit_are_refused,
            finished_jobs_expire_after_the_retention,
            a_delayed_job_is_not_expired_before_it_is_due,
            a_queued_job_cancelled_is_skipped,
            a_running_job_is_told_to_stop_and_not_retried,
            a_unique_key_deduplicates_enqueues_while_the_job_is_unfinished,
            a_redelivered_job_that_succeeded_is_not_run_again,
            changes_waiting_together_are_written_as_one,
        );
    };
    (@tests $setup:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let harness = $setup;
                $crate::conformance::status::$test(&harness).await;
            }
        )*
    };
}
