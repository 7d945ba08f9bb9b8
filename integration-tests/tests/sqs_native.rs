//! SQS-specific behaviour: redrive by `maxReceiveCount`, messages from a plain SDK client,
//! delays longer than SQS's 15 minutes (hops), SQS's limits as clear errors, and a worker
//! killed with SIGKILL.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_sqs::types::MessageAttributeValue;
use futures_util::StreamExt;
use integration_tests::conformance::{
    await_settled, await_worker, cleanup, declared_queue, probe_worker,
};
use integration_tests::harness::{
    Behaviour, Harness, Probe, Recorder, Running, SQS_TIMING, eventually, raw_sqs_client,
    sqs_broker, sqs_endpoint, sqs_env, unique_queue,
};
use integration_tests::process::WorkerProcess;
use longshore::spi::{ConsumeOptions, Message};
use longshore::sqs::SqsBroker;
use longshore::{BrokerError, EnqueueError, EnqueueOptions, Producer, QueueOptions, Trigger};

fn harness(broker: SqsBroker) -> Harness {
    Harness {
        broker: Arc::new(broker),
        timing: SQS_TIMING,
    }
}

fn string(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap()
}

/// The redrive policy longshore declares works natively: after `maxReceiveCount` receives
/// SQS itself moves the message to the dead-letter queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_by_max_receive_count_lands_in_the_dead_letter_queue() {
    let broker = SqsBroker::builder("sqs://")
        .endpoint_url(sqs_endpoint())
        .region("us-east-1")
        .static_credentials("test", "test")
        .max_receive_count(2)
        .connect()
        .await
        .unwrap();
    let h = harness(broker);
    let queue = declared_queue(&h, "redrive").await;
    assert_eq!(h.broker.max_receive_count(&queue), Some(2));
    h.broker
        .publish(&queue, Message::new("probe", b"{}".to_vec()))
        .await
        .unwrap();
    let mut stream = h
        .broker
        .consume(&queue, &ConsumeOptions::default().prefetch(1))
        .await
        .unwrap();
    for attempt in 1..=2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(delivery.attempt().get(), attempt);
        delivery.release().await.unwrap();
    }
    drop(stream);
    eventually(
        Duration::from_secs(20),
        "SQS to move the message to the DLQ",
        || async {
            // Receiving is what makes SQS apply the redrive policy.
            let mut stream = h
                .broker
                .consume(&queue, &ConsumeOptions::default().prefetch(1))
                .await
                .unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.next()).await;
            drop(stream);
            let stats = h.broker.stats(&queue).await.unwrap();
            if stats.dead_lettered == Some(1) {
                Ok(())
            } else {
                Err(format!("{stats:?}"))
            }
        },
    )
    .await;
    cleanup(&h, &queue).await;
}

/// What another service sends with the plain SDK: the JSON body and the job attribute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_from_a_plain_sdk_client_is_processed() {
    let h = harness(sqs_broker().await);
    let queue = declared_queue(&h, "foreign").await;
    let client = raw_sqs_client().await;
    let url = client
        .get_queue_url()
        .queue_name(queue.as_str())
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    client
        .send_message()
        .queue_url(&url)
        .message_body(r#"{"key": 5, "behaviour": "Succeed"}"#)
        .message_attributes("longshore-job", string("probe"))
        .message_attributes("tenant", string("acme"))
        .send()
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(probe_worker(&h, &queue, &recorder));
    await_worker(&h, &worker, "the foreign message processed", |s| {
        s.succeeded == 1
    })
    .await;
    worker.stop().await;
    let runs = recorder.runs(5);
    assert_eq!(
        (runs.len(), runs[0].attempt, &runs[0].trigger),
        (1, 1, &Trigger::Queue)
    );
    await_settled(&h, &queue, 0, 0).await;
    cleanup(&h, &queue).await;
}

/// A delay past SQS's 15 minutes hops: each copy carries its due time, and a copy received
/// before it is due is sent on instead of delivered. (Shown with a due time 4 s out, as the
/// copy after the last 15-minute hop would carry.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_not_yet_due_hops_until_its_due_time() {
    let h = harness(sqs_broker().await);
    let queue = declared_queue(&h, "hop").await;
    let client = raw_sqs_client().await;
    let url = client
        .get_queue_url()
        .queue_name(queue.as_str())
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let due = SystemTime::now() + Duration::from_secs(4);
    let due_ms = due.duration_since(UNIX_EPOCH).unwrap().as_millis();
    let sent_at = Instant::now();
    client
        .send_message()
        .queue_url(&url)
        .message_body(r#"{"key": 1, "behaviour": "Succeed"}"#)
        .message_attributes("longshore-job", string("probe"))
        .message_attributes(
            "longshore-meta",
            string(&format!(r#"{{"id":"hop-1","due_at":{due_ms}}}"#)),
        )
        .send()
        .await
        .unwrap();
    let mut stream = h
        .broker
        .consume(&queue, &ConsumeOptions::default().prefetch(1))
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        SystemTime::now() >= due,
        "delivered {:?} before it was due",
        due.duration_since(SystemTime::now())
    );
    assert!(
        sent_at.elapsed() < Duration::from_secs(8),
        "delivered late: {:?}",
        sent_at.elapsed()
    );
    assert_eq!(delivery.message().id.as_str(), "hop-1");
    delivery.ack().await.unwrap();
    drop(stream);
    await_settled(&h, &queue, 0, 0).await;
    cleanup(&h, &queue).await;
}

/// SQS's limits are clear errors at enqueue, and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_and_too_many_headers_are_clear_errors() {
    let h = harness(sqs_broker().await);
    let queue = declared_queue(&h, "limits").await;
    let producer = Producer::new(Arc::clone(&h.broker), queue.clone());
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Big {
        blob: String,
    }
    impl longshore::Job for Big {
        const NAME: &'static str = "big";
    }
    let error = producer
        .enqueue(&Big {
            blob: "x".repeat(1024 * 1024),
        })
        .await
        .unwrap_err();
    let EnqueueError::Broker(BrokerError::InvalidMessage { problem, .. }) = &error else {
        panic!("{error:?}")
    };
    assert!(problem.contains("SQS takes at most 1048576"), "{problem}");

    let mut options = EnqueueOptions::default();
    for n in 0..9 {
        options = options.header(format!("h{n}"), "v");
    }
    let error = producer
        .enqueue_with(
            &Probe {
                key: 0,
                behaviour: Behaviour::Succeed,
            },
            options,
        )
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("at most 8 headers of your own (this one has 9)"),
        "{error}"
    );

    let fifo_delay = Message {
        delay: Some(Duration::from_secs(1)),
        ..Message::new("probe", b"{}".to_vec())
    };
    let fifo = longshore::QueueName::new(format!("{}.fifo", unique_queue("fifo-delay")));
    h.broker
        .declare(&fifo, &QueueOptions::default())
        .await
        .unwrap();
    let error = h.broker.publish(&fifo, fifo_delay).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("FIFO queues take no per-message delay"),
        "{error}"
    );
    assert_eq!(
        h.broker.stats(&queue).await.unwrap().ready,
        0,
        "nothing was sent"
    );
    cleanup(&h, &fifo).await;
    cleanup(&h, &queue).await;
}

/// Publishes on their way together share `SendMessageBatch` calls, and each still gets its
/// own answer: one that SQS refuses (a body with a character SQS does not take) fails with
/// SQS's reason, the others beside it in the same batch arrive, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_sharing_a_batch_each_get_their_own_answer() {
    let h = harness(sqs_broker().await);
    let queue = declared_queue(&h, "batched").await;
    let messages: Vec<Message> = (0..10)
        .map(|n| {
            // U+0000 is UTF-8, but SQS takes no control characters besides tab and newlines.
            let body = if n == 4 {
                "{\"n\":\"\u{0}\"}".to_owned()
            } else {
                format!("{{\"n\":{n}}}")
            };
            Message::new("probe", body.into_bytes())
        })
        .collect();
    let answers = futures_util::future::join_all(
        messages
            .iter()
            .map(|message| h.broker.publish(&queue, message.clone())),
    )
    .await;
    for (n, answer) in answers.iter().enumerate() {
        if n == 4 {
            let Err(BrokerError::InvalidMessage {
                message_id,
                problem,
            }) = answer
            else {
                panic!("the refused message: {answer:?}")
            };
            assert_eq!(message_id, &messages[4].id);
            assert!(
                problem.contains("SQS refused it") || problem.contains("Invalid"),
                "{problem}"
            );
        } else {
            assert!(answer.is_ok(), "message {n}: {answer:?}");
        }
    }
    let mut stream = h
        .broker
        .consume(&queue, &ConsumeOptions::default().prefetch(10))
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 9 && Instant::now() < deadline {
        let Ok(Some(delivery)) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await
        else {
            continue;
        };
        let delivery = delivery.unwrap();
        assert!(
            seen.insert(delivery.message().id.clone()),
            "delivered twice"
        );
        delivery.ack().await.unwrap();
    }
    let expected: std::collections::HashSet<_> = messages
        .iter()
        .enumerate()
        .filter(|(n, _)| *n != 4)
        .map(|(_, message)| message.id.clone())
        .collect();
    assert_eq!(seen, expected);
    drop(stream);
    cleanup(&h, &queue).await;
}

/// A worker killed mid-job: the message becomes visible again after its visibility timeout
/// and the next worker completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_message_returns_after_its_visibility_timeout() {
    let h = harness(sqs_broker().await);
    let queue = declared_queue(&h, "sigkill").await;
    let args = [
        "stall".to_owned(),
        "1".to_owned(),
        "1".to_owned(),
        "sqs://".to_owned(),
        queue.to_string(),
    ];
    let process =
        WorkerProcess::start_with_env(env!("CARGO_BIN_EXE_signal_worker"), &args, &sqs_env());
    process.expect_line("jobs running", Duration::from_secs(30));
    let killed_at = Instant::now();
    process.signal("KILL");
    assert!(!process.wait(Duration::from_secs(5)).success());

    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(probe_worker(&h, &queue, &recorder));
    await_worker(&h, &worker, "the returned message to succeed", |s| {
        s.succeeded == 1
    })
    .await;
    worker.stop().await;
    let runs = recorder.runs(0);
    assert_eq!((runs.len(), &runs[0].trigger), (1, &Trigger::Retry));
    // At least the second receive: a long poll the killed process left open can take one
    // receive nobody sees (SQS counts it; the message returns after the visibility timeout).
    assert!(runs[0].attempt >= 2, "{runs:?}");
    assert!(
        killed_at.elapsed() >= Duration::from_secs(1),
        "it came back only after the visibility timeout"
    );
    await_settled(&h, &queue, 0, 0).await;
    cleanup(&h, &queue).await;
}

/// A Binary `longshore-job` attribute is dead-lettered with a reason that says so, and the
/// dead letter keeps the message's Binary attributes as they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_job_attribute_is_named_and_kept_on_the_dead_letter() {
    let h = harness(sqs_broker().await);
    let queue = declared_queue(&h, "binaryjob").await;
    let client = raw_sqs_client().await;
    let url_of = |name: String| {
        let client = client.clone();
        async move {
            client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .unwrap()
                .queue_url()
                .unwrap()
                .to_owned()
        }
    };
    let binary = |bytes: &[u8]| {
        MessageAttributeValue::builder()
            .data_type("Binary")
            .binary_value(aws_sdk_sqs::primitives::Blob::new(bytes))
            .build()
            .unwrap()
    };
    client
        .send_message()
        .queue_url(url_of(queue.to_string()).await)
        .message_body(r#"{"key": 3, "behaviour": "Succeed"}"#)
        .message_attributes("longshore-job", binary(b"probe"))
        .message_attributes("blob", binary(&[0, 159, 146, 150]))
        .send()
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(probe_worker(&h, &queue, &recorder));
    await_worker(&h, &worker, "the message dead-lettered", |s| {
        s.dead_lettered == 1
    })
    .await;
    worker.stop().await;
    assert!(recorder.runs(3).is_empty());
    let dead_letters = h.broker.dead_letters().expect("SQS reads dead letters");
    let letters = dead_letters.browse(&queue, 10).await.expect("browse");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].reason.as_deref(),
        Some("the `longshore-job` attribute is Binary, not String, so no handler can be chosen")
    );
    let dead_url = url_of(h.broker.dead_letter_queue(&queue).to_string()).await;
    let received = eventually(Duration::from_secs(20), "the dead letter", || {
        let (client, dead_url) = (client.clone(), dead_url.clone());
        async move {
            let out = client
                .receive_message()
                .queue_url(dead_url)
                .message_attribute_names("All")
                .visibility_timeout(0)
                .wait_time_seconds(1)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            out.messages
                .unwrap_or_default()
                .into_iter()
                .next()
                .ok_or_else(|| "none yet".to_owned())
        }
    })
    .await;
    let attributes = received.message_attributes.unwrap_or_default();
    for (name, bytes) in [
        ("longshore-job", &b"probe"[..]),
        ("blob", &[0, 159, 146, 150][..]),
    ] {
        let value = attributes
            .get(name)
            .unwrap_or_else(|| panic!("{name} kept: {attributes:?}"));
        assert_eq!(value.data_type(), "Binary", "{name}");
        assert_eq!(
            value.binary_value().map(|b| b.as_ref()),
            Some(bytes),
            "{name}"
        );
    }
    cleanup(&h, &queue).await;
}
