//! SQS (on the emulator): longshore against a raw aws-sdk-sqs receive/delete-batch loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
};
use longshore::{Broker, QueueName, QueueOptions};

use super::{Figure, Noop, print};

fn endpoint() -> String {
    std::env::var("LONGSHORE_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

async fn client() -> Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .load()
        .await;
    Client::new(&config)
}

async fn fill(client: &Client, url: &str, jobs: u64) {
    let job = MessageAttributeValue::builder()
        .data_type("String")
        .string_value("noop")
        .build()
        .expect("attribute");
    let mut sends = tokio::task::JoinSet::new();
    for chunk in 0..jobs.div_ceil(10) {
        let (client, url, job) = (client.clone(), url.to_owned(), job.clone());
        sends.spawn(async move {
            let entries = (0..10u64.min(jobs - chunk * 10))
                .map(|i| {
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(format!(r#"{{"n":{}}}"#, chunk * 10 + i))
                        .message_attributes("longshore-job", job.clone())
                        .build()
                        .expect("entry")
                })
                .collect::<Vec<_>>();
            client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .expect("send batch");
        });
        while sends.len() >= 16 {
            sends.join_next().await;
        }
    }
    while sends.join_next().await.is_some() {}
}

/// The raw loop: `loops` tasks each receiving up to 10 with long polling, decoding, and
/// deleting them with one `DeleteMessageBatch`.
async fn raw(client: &Client, url: &str, jobs: u64, loops: usize) -> Duration {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..loops {
        let (client, url, done) = (client.clone(), url.to_owned(), Arc::clone(&done));
        tasks.spawn(async move {
            while done.load(Ordering::Relaxed) < jobs {
                let received = client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .message_attribute_names("All")
                    .send()
                    .await
                    .expect("receive");
                let messages = received.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                let entries = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let _job: Noop =
                            serde_json::from_str(m.body().unwrap_or_default()).expect("decode");
                        DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                            .expect("entry")
                    })
                    .collect::<Vec<_>>();
                let n = entries.len() as u64;
                client
                    .delete_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .expect("delete");
                done.fetch_add(n, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    start.elapsed()
}

pub(super) async fn run(jobs: u64) {
    let broker = longshore::sqs::SqsBroker::builder("sqs://")
        .endpoint_url(endpoint())
        .region("us-east-1")
        .static_credentials("test", "test")
        .connect()
        .await
        .expect("SQS client");
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let client = client().await;
    let queue = QueueName::new("longshore-bench");
    let (mut best_raw, mut best_ours) = (Duration::MAX, Duration::MAX);
    // Concurrency 20 gives longshore a prefetch of 40: four receive loops, as the raw run has.
    for _ in 0..2 {
        for ours in [false, true] {
            broker.delete(&queue).await.expect("delete");
            broker
                .declare(&queue, &QueueOptions::default())
                .await
                .expect("declare — is the SQS emulator running? (scripts/test starts it)");
            let url = client
                .get_queue_url()
                .queue_name(queue.as_str())
                .send()
                .await
                .expect("url")
                .queue_url()
                .unwrap_or_default()
                .to_owned();
            fill(&client, &url, jobs).await;
            if ours {
                best_ours = best_ours.min(
                    super::drain_with_worker(&broker, &queue, jobs, 20, Duration::from_millis(1))
                        .await,
                );
            } else {
                best_raw = best_raw.min(raw(&client, &url, jobs, 4).await);
            }
        }
    }
    let figures = [
        Figure {
            label: "sqs (LocalStack): raw receive/delete-batch, 4 loops".into(),
            jobs,
            elapsed: best_raw,
        },
        Figure {
            label: "sqs (LocalStack): longshore, concurrency 20 (4 receive loops)".into(),
            jobs,
            elapsed: best_ours,
        },
    ];
    print(&figures, &figures[0]);
    broker.delete(&queue).await.expect("delete");
}
