//! Job status end to end on real brokers, watched the way a frontend watches it: over
//! server-sent events from `longshore-http`, through running, progress, a retry and
//! success; a stream resumed with `Last-Event-ID` loses nothing; a worker killed mid-job
//! shows the job running again under its next attempt. RabbitMQ with the Redis store, SQS
//! (LocalStack) with the PostgreSQL store.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::conformance::{cleanup, declared_queue};
use integration_tests::harness::{
    Harness, Running, eventually, postgres_url, rabbitmq_harness, redis_url, sqs_env, sqs_harness,
};
use integration_tests::process::WorkerProcess;
use integration_tests::report::{Report, report};
use integration_tests::sse::{SseEvent, SseStream};
use longshore::status::{JobState, JobStatus, JobStatuses};
use longshore::{MessageId, Producer, RetryPolicy, Worker};

fn status_of(event: &SseEvent) -> JobStatus {
    serde_json::from_str(&event.data).unwrap_or_else(|error| panic!("{error}: {}", event.data))
}

/// States and sequence numbers of a stream's events.
fn trail(events: &[SseEvent]) -> Vec<(u64, JobState, u32)> {
    events
        .iter()
        .map(|event| {
            let status = status_of(event);
            assert_eq!(event.id.as_deref(), Some(status.seq.to_string().as_str()));
            assert_eq!(event.event.as_deref(), Some("status"));
            (status.seq, status.state, status.attempt)
        })
        .collect()
}

async fn watched_through_a_retry_to_success(h: Harness, statuses: JobStatuses) {
    let queue = declared_queue(&h, "status-sse").await;
    let server = longshore::http::serve("127.0.0.1:0", longshore::http::router(statuses.clone()))
        .await
        .expect("the HTTP listener starts");
    let producer =
        Producer::new(Arc::clone(&h.broker), queue.clone()).with_status(statuses.clone());
    let id = producer
        .enqueue(&Report {
            steps: 3,
            pause_ms: 150,
            fail_first: true,
            hang_first: false,
        })
        .await
        .expect("enqueue");
    let path = format!("/jobs/{id}/events");
    let mut stream = SseStream::open(server.local_addr(), &path, None).await;
    let worker = Running::start(
        Worker::builder(Arc::clone(&h.broker), queue.clone())
            .handler(report)
            .status(statuses.clone())
            .queue_options(
                longshore::QueueOptions::default().visibility_timeout(h.timing.visibility),
            )
            .retry_policy(RetryPolicy::exponential(
                Duration::from_millis(200),
                Duration::from_millis(300),
                3,
            )),
    );
    let events = stream.to_end(Duration::from_secs(30)).await;
    worker.stop().await;
    let seen = trail(&events);
    assert_eq!(
        seen[0],
        (1, JobState::Queued, 0),
        "from the state when it was opened: {seen:?}"
    );
    let seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no change missed: {seen:?}"
    );
    let states: Vec<JobState> = seen.iter().map(|s| s.1).collect();
    assert!(states.contains(&JobState::Retrying), "{seen:?}");
    assert_eq!(states.last(), Some(&JobState::Succeeded), "{seen:?}");
    let progress: Vec<String> = events
        .iter()
        .filter_map(|e| status_of(e).progress.map(|p| p.message))
        .collect();
    assert!(
        progress.iter().any(|m| m.ends_with("(attempt 1)")),
        "{progress:?}"
    );
    assert!(
        progress.iter().any(|m| m == "step 3 of 3 (attempt 2)"),
        "{progress:?}"
    );
    let last = status_of(events.last().expect("events"));
    assert_eq!(last.result, Some(serde_json::json!({ "pages": 3 })));
    assert_eq!(last.attempt, 2);

    // A stream resumed after any event gives exactly the rest.
    let resume_at = seen[2].0;
    let mut resumed = SseStream::open(server.local_addr(), &path, Some(resume_at)).await;
    let rest = trail(&resumed.to_end(Duration::from_secs(10)).await);
    assert_eq!(rest, seen[3..].to_vec(), "resumed after seq {resume_at}");

    // GET answers with the same status, and its ETag makes polls cheap.
    let (status, body) =
        integration_tests::harness::http_get(server.local_addr(), &format!("/jobs/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<JobStatus>(&body).expect("JSON"),
        last
    );
    let unknown = integration_tests::harness::http_get(
        server.local_addr(),
        &format!("/jobs/{}", MessageId::generate()),
    )
    .await;
    assert_eq!(unknown.0, 404, "an unknown id is not found, never pending");
    cleanup(&h, &queue).await;
}

async fn a_killed_worker_shows_the_job_running_again(
    h: Harness,
    statuses: JobStatuses,
    store_url: &str,
    broker_url: &str,
    env: Vec<(&'static str, String)>,
) {
    let queue = declared_queue(&h, "status-kill").await;
    let producer =
        Producer::new(Arc::clone(&h.broker), queue.clone()).with_status(statuses.clone());
    let id = producer
        .enqueue(&Report {
            steps: 1,
            pause_ms: 50,
            fail_first: false,
            hang_first: true,
        })
        .await
        .expect("enqueue");
    let args = [
        broker_url.to_owned(),
        queue.to_string(),
        store_url.to_owned(),
    ];
    let process = WorkerProcess::start_with_env(env!("CARGO_BIN_EXE_status_worker"), &args, &env);
    process.expect_line("job hanging", Duration::from_secs(30));
    // `running` is written within the writer's linger (50 ms), not at once.
    let running = eventually(Duration::from_secs(5), "the running status", || async {
        let status = statuses.get(&id).await.expect("get").expect("known");
        match status.state {
            JobState::Running => Ok(status),
            state => Err(format!("{state:?}")),
        }
    })
    .await;
    assert_eq!((running.state, running.attempt), (JobState::Running, 1));
    process.signal("KILL");
    let _ = process.wait(Duration::from_secs(10));
    let worker = Running::start(
        Worker::builder(Arc::clone(&h.broker), queue.clone())
            .handler(report)
            .status(statuses.clone())
            .queue_options(
                longshore::QueueOptions::default().visibility_timeout(h.timing.visibility),
            ),
    );
    let done = eventually(
        Duration::from_secs(60),
        "the job to succeed after the kill",
        || async {
            match statuses.get(&id).await {
                Ok(Some(status)) if status.state == JobState::Succeeded => Ok(status),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    worker.stop().await;
    let all: Vec<(u64, JobState, u32, Option<String>)> = statuses
        .events(&id, 0)
        .await
        .expect("events")
        .iter()
        .map(|s| (s.seq, s.state, s.attempt, s.worker.clone()))
        .collect();
    // Its next attempt as the broker counts: on SQS, long polls of the killed worker that
    // were still pending may have received (and counted) it too.
    assert!(done.attempt >= 2, "a later attempt: {all:?}");
    // Each attempt shows as running (its first running event may carry its first progress
    // report: changes that wait for the store together are written as one).
    let mut runs: Vec<(JobState, u32)> = statuses
        .events(&id, 0)
        .await
        .expect("events")
        .iter()
        .filter(|s| s.state == JobState::Running)
        .map(|s| (s.state, s.attempt))
        .collect();
    runs.dedup();
    assert_eq!(
        runs,
        [(JobState::Running, 1), (JobState::Running, done.attempt)],
        "{all:?}"
    );
    cleanup(&h, &queue).await;
}

async fn redis_statuses() -> JobStatuses {
    JobStatuses::new(integration_tests::harness::redis_status_store().await)
}

async fn postgres_statuses() -> JobStatuses {
    JobStatuses::new(integration_tests::harness::postgres_status_store().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_with_redis_watched_over_sse_through_a_retry_to_success() {
    watched_through_a_retry_to_success(rabbitmq_harness().await, redis_statuses().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_with_postgres_watched_over_sse_through_a_retry_to_success() {
    watched_through_a_retry_to_success(sqs_harness().await, postgres_statuses().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_a_killed_worker_shows_the_job_running_again() {
    // The worker process connects by URL: the store's default key prefix (ids are unique).
    let statuses = longshore::status_store::connect(&redis_url())
        .await
        .expect("Redis is reachable (run scripts/test, which starts it)");
    a_killed_worker_shows_the_job_running_again(
        rabbitmq_harness().await,
        statuses,
        &redis_url(),
        &integration_tests::harness::amqp_url(),
        Vec::new(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_a_killed_worker_shows_the_job_running_again() {
    a_killed_worker_shows_the_job_running_again(
        sqs_harness().await,
        postgres_statuses().await,
        &postgres_url(),
        "sqs://",
        sqs_env(),
    )
    .await;
}
