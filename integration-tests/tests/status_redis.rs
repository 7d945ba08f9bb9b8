//! The job status suite on a real Redis (`LONGSHORE_REDIS_URL`, default the local server).

use std::time::{Duration, SystemTime};

use integration_tests::conformance::status::StatusHarness;
use integration_tests::harness::redis_status_store;
use longshore::status::{Change, JobState, JobStatus, JobStatuses, StatusStore, patch};
use longshore::{JobName, MessageId, QueueName};

fn redis() -> StatusHarness {
    StatusHarness::new(|| async { JobStatuses::new(redis_status_store().await) })
}

integration_tests::status_suite!(redis());

/// A queued status of a new job, expiring at `expires`.
fn queued(expires: SystemTime) -> JobStatus {
    JobStatus::queued(
        MessageId::generate(),
        JobName::new("job"),
        QueueName::new("queue"),
        None,
        None,
        expires,
    )
}

/// Sends one command to Redis over RESP and returns its one-line reply.
async fn redis_command(parts: &[&str]) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let url = integration_tests::harness::redis_url();
    let address = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address)
        .await
        .unwrap_or_else(|error| panic!("Redis at {address}: {error}; scripts/test starts it"));
    let mut request = format!("*{}\r\n", parts.len());
    for part in parts {
        request.push_str(&format!("${}\r\n{part}\r\n", part.len()));
    }
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .await
        .expect("read");
    line.trim_end().to_owned()
}

/// A Redis that lost its scripts (restarted, or `SCRIPT FLUSH`) is sent them again: creates
/// and changes still apply.
#[tokio::test]
async fn scripts_are_loaded_again_after_redis_forgets_them() {
    let store = redis_status_store().await;
    let expires = SystemTime::now() + Duration::from_secs(60);
    let (first, second) = (queued(expires), queued(expires));
    store.create(&first).await.expect("create");
    assert_eq!(redis_command(&["SCRIPT", "FLUSH"]).await, "+OK");
    store
        .create(&second)
        .await
        .expect("a create after SCRIPT FLUSH");
    assert_eq!(redis_command(&["SCRIPT", "FLUSH"]).await, "+OK");
    let change = Change::new(first.id.clone(), patch::running(1, "w:1"), expires);
    store
        .apply(&[change])
        .await
        .expect("a change after SCRIPT FLUSH");
    let status = store.get(&first.id).await.expect("get").expect("a status");
    assert_eq!((status.state, status.seq), (JobState::Running, 2));
    let status = store.get(&second.id).await.expect("get").expect("a status");
    assert_eq!((status.state, status.seq), (JobState::Queued, 1));
}

/// A job's sequence numbers only grow, even when its events list was lost apart from its
/// hash (evicted under memory pressure, say): the next change does not start over at 1, and
/// its events, which cannot be replayed, are its current status.
#[tokio::test]
async fn sequence_numbers_grow_when_the_events_list_is_lost() {
    let prefix = format!("longshore-test-seq-{}:", MessageId::generate());
    let store = redis_status_store().await.prefix(prefix.clone());
    let expires = SystemTime::now() + Duration::from_secs(60);
    let status = queued(expires);
    let id = status.id.clone();
    store.create(&status).await.expect("create");
    let change = |patch| Change::new(id.clone(), patch, expires);
    store
        .apply(&[change(patch::running(1, "w:1"))])
        .await
        .expect("apply");
    let events = format!("{prefix}events:{id}");
    assert_eq!(redis_command(&["DEL", &events]).await, ":1");
    store
        .apply(&[change(patch::succeeded(None))])
        .await
        .expect("apply");
    let status = store.get(&id).await.expect("get").expect("a status");
    assert_eq!((status.state, status.seq), (JobState::Succeeded, 3));
    // Its events cannot be replayed: a resumed stream gets the status as it is now.
    let events = store.events(&id, 1).await.expect("events");
    assert_eq!(events, [status]);
    assert!(store.events(&id, 3).await.expect("events").is_empty());
}
