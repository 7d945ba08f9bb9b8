//! Worker behaviour on a broker: outcomes to settlements, concurrency, shutdown.

use std::sync::Arc;
use std::time::Duration;

use longshore::spi::{Message, headers};
use longshore::{Producer, Trigger};

use super::{
    await_settled, await_worker, cleanup, declared_queue, enqueue, probe_worker, take_dead_letters,
};
use crate::harness::{Behaviour, Harness, Probe, Recorder, Running, eventually, unique_queue};

fn probes(behaviour: Behaviour, count: u32) -> Vec<Probe> {
    (0..count).map(|key| Probe { key, behaviour }).collect()
}

fn reason(message: &Message) -> &str {
    message
        .headers
        .get(headers::DEAD_REASON)
        .map_or("", String::as_str)
}

/// `Ok` acks: every job runs once and the queue ends empty.
pub async fn succeeded_jobs_are_acked(h: &Harness) {
    let queue = declared_queue(h, "ack").await;
    let recorder = Arc::new(Recorder::default());
    enqueue(h, &queue, probes(Behaviour::Succeed, 20)).await;
    let worker = Running::start(probe_worker(h, &queue, &recorder));
    await_worker(h, &worker, "20 jobs succeeded", |s| s.succeeded == 20).await;
    await_settled(h, &queue, 0, 0).await;
    let report = worker.stop().await;
    assert_eq!(report.stats.succeeded, 20);
    for key in 0..20 {
        let runs = recorder.runs(key);
        assert_eq!(runs.len(), 1, "probe {key} ran {runs:?}");
        assert_eq!((runs[0].attempt, &runs[0].trigger), (1, &Trigger::Queue));
    }
    cleanup(h, &queue).await;
}

/// A retryable error retries with the broker's attempt number until the job succeeds.
pub async fn retryable_failures_retry_until_success(h: &Harness) {
    let queue = declared_queue(h, "retry").await;
    let recorder = Arc::new(Recorder::default());
    enqueue(h, &queue, probes(Behaviour::FailUntil(3), 3)).await;
    let worker = Running::start(probe_worker(h, &queue, &recorder));
    await_worker(h, &worker, "3 jobs succeeded after retries", |s| {
        s.succeeded == 3
    })
    .await;
    await_settled(h, &queue, 0, 0).await;
    let report = worker.stop().await;
    assert_eq!((report.stats.succeeded, report.stats.retried), (3, 6));
    for key in 0..3 {
        let runs = recorder.runs(key);
        let seen: Vec<(u32, Trigger)> = runs
            .iter()
            .map(|r| (r.attempt, r.trigger.clone()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, Trigger::Queue),
                (2, Trigger::Retry),
                (3, Trigger::Retry)
            ],
            "probe {key}"
        );
    }
    cleanup(h, &queue).await;
}

/// When attempts run out, the job goes to the dead-letter queue with the last error.
pub async fn exhausted_attempts_dead_letter_with_reason(h: &Harness) {
    let queue = declared_queue(h, "exhausted").await;
    let recorder = Arc::new(Recorder::default());
    enqueue(h, &queue, probes(Behaviour::FailUntil(u32::MAX), 1)).await;
    let worker = Running::start(probe_worker(h, &queue, &recorder));
    await_worker(h, &worker, "1 job dead-lettered", |s| s.dead_lettered == 1).await;
    await_settled(h, &queue, 0, 1).await;
    let report = worker.stop().await;
    assert_eq!((report.stats.retried, report.stats.dead_lettered), (2, 1));
    assert_eq!(recorder.runs(0).len(), 3);
    let dead = take_dead_letters(h, &queue, 1).await;
    assert_eq!(
        reason(&dead[0]),
        "attempts exhausted (3 of 3): flaky on attempt 3"
    );
    assert_eq!(
        dead[0]
            .headers
            .get(headers::DEAD_ATTEMPT)
            .map(String::as_str),
        Some("3")
    );
    assert_eq!(
        dead[0].job.as_str(),
        "probe",
        "the dead letter keeps its job name"
    );
    cleanup(h, &queue).await;
}

/// A permanent error dead-letters at once, without retries.
pub async fn permanent_failures_dead_letter_at_once(h: &Harness) {
    let queue = declared_queue(h, "permanent").await;
    let recorder = Arc::new(Recorder::default());
    enqueue(h, &queue, probes(Behaviour::FailPermanently, 2)).await;
    let worker = Running::start(probe_worker(h, &queue, &recorder));
    await_worker(h, &worker, "2 jobs dead-lettered", |s| s.dead_lettered == 2).await;
    await_settled(h, &queue, 0, 2).await;
    let report = worker.stop().await;
    assert_eq!((report.stats.retried, report.stats.dead_lettered), (0, 2));
    assert_eq!(recorder.total_runs(), 2);
    for message in take_dead_letters(h, &queue, 2).await {
        assert_eq!(
            reason(&message),
            "permanent failure: this input can never work"
        );
    }
    cleanup(h, &queue).await;
}

/// A panicking handler is a failed attempt: retried, and the worker keeps going.
pub async fn panics_are_retried_and_the_worker_survives(h: &Harness) {
    let queue = declared_queue(h, "panic").await;
    let recorder = Arc::new(Recorder::default());
    let mut jobs = probes(Behaviour::PanicUntil(2), 2);
    jobs.push(Probe {
        key: 2,
        behaviour: Behaviour::Succeed,
    });
    enqueue(h, &queue, jobs).await;
    let worker = Running::start(probe_worker(h, &queue, &recorder).concurrency(1));
    await_worker(h, &worker, "3 jobs succeeded", |s| s.succeeded == 3).await;
    await_settled(h, &queue, 0, 0).await;
    let report = worker.stop().await;
    assert_eq!((report.stats.succeeded, report.stats.retried), (3, 2));
    assert_eq!(
        recorder
            .runs(0)
            .iter()
            .map(|r| r.attempt)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    cleanup(h, &queue).await;
}

async fn publish_raw(h: &Harness, queue: &longshore::QueueName, job: &str, body: &[u8]) {
    h.broker
        .publish(queue, Message::new(job, body.to_vec()))
        .await
        .expect("publish a raw message");
}

/// A job name no handler knows is dead-lettered with the reason; others still run.
pub async fn unknown_jobs_dead_letter_with_reason(h: &Harness) {
    let queue = declared_queue(h, "unknown").await;
    let recorder = Arc::new(Recorder::default());
    publish_raw(h, &queue, "no_such_job", b"{}").await;
    enqueue(h, &queue, probes(Behaviour::Succeed, 1)).await;
    let worker = Running::start(probe_worker(h, &queue, &recorder));
    await_worker(h, &worker, "1 success and 1 dead letter", |s| {
        s.succeeded == 1 && s.dead_lettered == 1
    })
    .await;
    await_settled(h, &queue, 0, 1).await;
    let report = worker.stop().await;
    assert_eq!((report.stats.succeeded, report.stats.dead_lettered), (1, 1));
    let dead = take_dead_letters(h, &queue, 1).await;
    assert_eq!(
        reason(&dead[0]),
        "unknown job `no_such_job`: no handler is registered for it on this worker (registered: probe)"
    );
    assert_eq!(dead[0].body, b"{}", "the body is kept for redrive");
    cleanup(h, &queue).await;
}

/// A message without the job header is dead-lettered with the reason.
pub async fn messages_without_job_header_dead_letter(h: &Harness) {
    let queue = declared_queue(h, "nojob").await;
    let recorder = Arc::new(Recorder::default());
    publish_raw(h, &queue, "", b"{}").await;
    let worker = Running::start(probe_worker(h, &queue, &recorder));
    await_worker(h, &worker, "1 dead letter", |s| s.dead_lettered == 1).await;
    await_settled(h, &queue, 0, 1).await;
    worker.stop().await;
    let dead = take_dead_letters(h, &queue, 1).await;
    assert_eq!(
        reason(&dead[0]),
        "message has no `longshore-job` header, so no handler can be chosen"
    );
    cleanup(h, &queue).await;
}

/// A body above the worker's limit is dead-lettered undecoded, its size in the reason; the
/// jobs beside it run.
pub async fn oversized_bodies_dead_letter_with_their_size(h: &Harness) {
    let queue = declared_queue(h, "bigbody").await;
    let recorder = Arc::new(Recorder::default());
    let big = format!(
        r#"{{"key": 1, "behaviour": "Succeed", "pad": "{}"}}"#,
        "x".repeat(2000)
    );
    publish_raw(h, &queue, "probe", big.as_bytes()).await;
    enqueue(h, &queue, probes(Behaviour::Succeed, 1)).await;
    let worker = Running::start(probe_worker(h, &queue, &recorder).max_body_bytes(1024));
    await_worker(h, &worker, "1 success and 1 dead letter", |s| {
        s.succeeded == 1 && s.dead_lettered == 1
    })
    .await;
    await_settled(h, &queue, 0, 1).await;
    worker.stop().await;
    let dead = take_dead_letters(h, &queue, 1).await;
    assert_eq!(
        reason(&dead[0]),
        format!(
            "the body is {} bytes; this worker takes at most 1024 (WorkerBuilder::max_body_bytes)",
            big.len()
        )
    );
    assert_eq!(dead[0].body, big.as_bytes(), "the body is kept for redrive");
    cleanup(h, &queue).await;
}

/// A body that does not decode as the job type is dead-lettered at once with the reason.
pub async fn undecodable_bodies_dead_letter_with_reason(h: &Harness) {
    let queue = declared_queue(h, "badbody").await;
    let recorder = Arc::new(Recorder::default());
    publish_raw(h, &queue, "probe", b"not json").await;
    publish_raw(h, &queue, "probe", br#"{"key": 1}"#).await;
    let worker = Running::start(probe_worker(h, &queue, &recorder));
    await_worker(h, &worker, "2 dead letters", |s| s.dead_lettered == 2).await;
    await_settled(h, &queue, 0, 2).await;
    let report = worker.stop().await;
    assert_eq!((report.stats.retried, report.stats.dead_lettered), (0, 2));
    assert_eq!(recorder.total_runs(), 0);
    let mut reasons: Vec<String> = take_dead_letters(h, &queue, 2)
        .await
        .iter()
        .map(|m| reason(m).to_owned())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            "permanent failure: undecodable body for job `probe`: expected ident at line 1 column 2",
            "permanent failure: undecodable body for job `probe`: missing field `behaviour` at line 1 column 10",
        ]
    );
    cleanup(h, &queue).await;
}

/// Never more jobs run at once than the limit, and the limit is reached under load.
pub async fn concurrency_limit_is_never_exceeded(h: &Harness) {
    let queue = declared_queue(h, "concurrency").await;
    let recorder = Arc::new(Recorder::default());
    enqueue(h, &queue, probes(Behaviour::Sleep(30), 40)).await;
    let worker = Running::start(probe_worker(h, &queue, &recorder).concurrency(4));
    await_worker(h, &worker, "40 jobs succeeded", |s| s.succeeded == 40).await;
    await_settled(h, &queue, 0, 0).await;
    let report = worker.stop().await;
    assert_eq!(report.stats.succeeded, 40);
    assert_eq!(
        recorder.peak(),
        4,
        "the peak is the limit: never above, and reached"
    );
    cleanup(h, &queue).await;
}

/// Shutdown stops fetching, lets running jobs finish, and leaves the rest in the queue:
/// count in = count out, nothing run twice.
pub async fn graceful_shutdown_finishes_in_flight_and_leaves_the_rest(h: &Harness) {
    let queue = declared_queue(h, "shutdown").await;
    let recorder = Arc::new(Recorder::default());
    enqueue(h, &queue, probes(Behaviour::Sleep(300), 20)).await;
    let worker = Running::start(probe_worker(h, &queue, &recorder).concurrency(2));
    eventually(Duration::from_secs(10), "two jobs running", || async {
        if recorder.running() == 2 {
            Ok(())
        } else {
            Err(format!("{} running", recorder.running()))
        }
    })
    .await;
    let report = worker.stop().await;
    assert_eq!(
        report.stats.released, 0,
        "in-flight jobs finished within the deadline"
    );
    assert_eq!(
        report.stats.succeeded, report.stats.started,
        "every started job finished"
    );
    assert!(report.stats.succeeded >= 2);
    let left = 20 - report.stats.succeeded;
    await_settled(h, &queue, left, 0).await;
    assert_eq!(
        recorder.total_runs() as u64,
        report.stats.succeeded,
        "nothing ran twice"
    );

    // The rest is still there, and a new worker finishes it.
    let worker = Running::start(probe_worker(h, &queue, &recorder).concurrency(10));
    await_worker(h, &worker, "the rest succeeded", |s| s.succeeded == left).await;
    await_settled(h, &queue, 0, 0).await;
    worker.stop().await;
    for key in 0..20 {
        assert_eq!(recorder.runs(key).len(), 1, "probe {key} ran exactly once");
    }
    cleanup(h, &queue).await;
}

/// Jobs still running at the shutdown deadline are cancelled and released, not lost.
pub async fn shutdown_deadline_releases_running_jobs(h: &Harness) {
    let queue = declared_queue(h, "deadline").await;
    let recorder = Arc::new(Recorder::default());
    enqueue(h, &queue, probes(Behaviour::HangUntilCancelled, 3)).await;
    let worker = Running::start(
        probe_worker(h, &queue, &recorder)
            .concurrency(3)
            .shutdown_timeout(Duration::from_millis(200)),
    );
    eventually(Duration::from_secs(10), "three jobs running", || async {
        if recorder.running() == 3 {
            Ok(())
        } else {
            Err(format!("{} running", recorder.running()))
        }
    })
    .await;
    let report = worker.stop().await;
    assert_eq!((report.stats.released, report.stats.succeeded), (3, 0));
    assert!(!report.immediate);
    await_settled(h, &queue, 3, 0).await;
    cleanup(h, &queue).await;
}

/// `enqueue_many` enqueues every job, pipelined, and answers for each in the order given;
/// to a queue that does not exist, each answer is the error.
pub async fn enqueue_many_answers_for_every_job_in_order(h: &Harness) {
    let queue = declared_queue(h, "many").await;
    let jobs = probes(Behaviour::Succeed, 300);
    let producer = Producer::new(Arc::clone(&h.broker), queue.clone());
    // On a task of its own, as a web handler would: the future is `Send`.
    let sending = jobs.clone();
    let ids: Vec<_> = tokio::spawn(async move { producer.enqueue_many(&sending).await })
        .await
        .expect("the enqueue task")
        .into_iter()
        .map(|id| id.expect("enqueued"))
        .collect();
    assert_eq!(ids.len(), 300);
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 300, "one id per job");
    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(probe_worker(h, &queue, &recorder));
    await_worker(h, &worker, "300 jobs succeeded", |s| s.succeeded == 300).await;
    worker.stop().await;
    for key in 0..300 {
        assert_eq!(recorder.runs(key).len(), 1, "probe {key}");
    }
    let missing = Producer::new(Arc::clone(&h.broker), unique_queue("nowhere"));
    let answers = missing.enqueue_many(&jobs[..3]).await;
    assert_eq!(answers.len(), 3);
    assert!(answers.iter().all(Result::is_err), "{answers:?}");
    cleanup(h, &queue).await;
}
