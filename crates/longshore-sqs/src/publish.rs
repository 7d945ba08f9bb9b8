//! Sending: `SendMessage` with longshore's attributes, FIFO group and deduplication ids, and
//! delays — up to SQS's 15 minutes natively, longer ones in hops that carry the due time.
//! Publishes to one queue that are on their way together share `SendMessageBatch` calls
//! ([`run_sends`]): `enqueue_many` and concurrent `enqueue` calls cost one call per ten.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use longshore_core::spi::Message;
use longshore_core::{BrokerError, MessageId, QueueName};
use tokio::sync::{mpsc, oneshot};

use crate::client::broker_error;
use crate::topology::seconds_up;
use crate::wire;

/// SQS's longest `DelaySeconds`.
pub(crate) const MAX_NATIVE_DELAY: Duration = Duration::from_secs(900);
/// Entries of one `SendMessageBatch`, at most (SQS's limit).
const BATCH_ENTRIES: usize = 10;
/// Bytes of one `SendMessageBatch` (bodies and attributes), at most: under SQS's 256 KiB
/// for the whole call, with room for the request's own framing.
const BATCH_BYTES: usize = 200 * 1024;

/// A message made ready to send: checked and encoded once, sent alone or in a batch.
pub(crate) struct Outgoing {
    message_id: MessageId,
    body: String,
    attributes: HashMap<String, MessageAttributeValue>,
    delay_seconds: Option<i32>,
    /// FIFO group and deduplication ids.
    fifo: Option<(String, String)>,
    /// Bytes SQS counts against the batch limit.
    size: usize,
}

impl Outgoing {
    /// Checks and encodes `message` for a queue (`fifo` or standard).
    pub(crate) fn new(message: &Message, fifo: bool) -> Result<Self, BrokerError> {
        let delay = message.delay.unwrap_or_default();
        if fifo && !delay.is_zero() {
            return Err(BrokerError::InvalidMessage {
                message_id: message.id.clone(),
                problem:
                    "SQS FIFO queues take no per-message delay; set the queue's DelaySeconds, \
                          or use a standard queue for delayed jobs"
                        .into(),
            });
        }
        // Longer than SQS can wait: wait 15 minutes at a time, carrying when it is due.
        let due_at = (delay > MAX_NATIVE_DELAY).then(|| SystemTime::now() + delay);
        let attributes: HashMap<String, MessageAttributeValue> =
            wire::encode(message, due_at)?.into_iter().collect();
        let body =
            String::from_utf8(message.body.clone()).map_err(|_| BrokerError::InvalidMessage {
                message_id: message.id.clone(),
                problem: "SQS message bodies are text; this body is not UTF-8".into(),
            })?;
        let size = body.len()
            + attributes
                .iter()
                .map(|(name, value)| {
                    name.len()
                        + value.data_type().len()
                        + value.string_value().map_or(0, str::len)
                        + value.binary_value().map_or(0, |blob| blob.as_ref().len())
                })
                .sum::<usize>();
        let fifo = fifo.then(|| {
            let group = message
                .group
                .clone()
                .unwrap_or_else(|| message.job.to_string());
            let dedup = message
                .deduplication_id
                .clone()
                .unwrap_or_else(|| message.id.to_string());
            (group, dedup)
        });
        Ok(Self {
            message_id: message.id.clone(),
            body,
            attributes,
            delay_seconds: (!delay.is_zero()).then(|| seconds_up(delay.min(MAX_NATIVE_DELAY))),
            fifo,
            size,
        })
    }

    /// Sends it with `SendMessage`; returns once SQS has it.
    async fn send_alone(
        &self,
        client: &Client,
        queue: &QueueName,
        url: &str,
    ) -> Result<(), BrokerError> {
        let mut request = client
            .send_message()
            .queue_url(url)
            .message_body(&self.body)
            .set_message_attributes(Some(self.attributes.clone()))
            .set_delay_seconds(self.delay_seconds);
        if let Some((group, dedup)) = &self.fifo {
            request = request
                .message_group_id(group)
                .message_deduplication_id(dedup);
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(error) if is_refused_message(error.code()) => Err(BrokerError::InvalidMessage {
                message_id: self.message_id.clone(),
                problem: format!(
                    "SQS refused it: {}: {}",
                    error.code().unwrap_or_default(),
                    error.message().unwrap_or_default()
                ),
            }),
            Err(error) => Err(broker_error(error, queue)),
        }
    }

    fn batch_entry(&self, id: usize) -> SendMessageBatchRequestEntry {
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id.to_string())
            .message_body(&self.body)
            .set_message_attributes(Some(self.attributes.clone()))
            .set_delay_seconds(self.delay_seconds);
        if let Some((group, dedup)) = &self.fifo {
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(dedup);
        }
        entry.build().expect("id and body are set")
    }
}

/// Whether an SQS error code says the message itself cannot be taken (sending it again
/// cannot help).
fn is_refused_message(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("InvalidMessageContents" | "MessageTooLong" | "InvalidParameterValue")
    ) || code.is_some_and(|code| code.ends_with(".InvalidMessageContents"))
}

/// Sends `message` to the queue at `url` on its own; returns once SQS has it.
pub(crate) async fn send(
    client: &Client,
    queue: &QueueName,
    url: &str,
    fifo: bool,
    message: &Message,
) -> Result<(), BrokerError> {
    Outgoing::new(message, fifo)?
        .send_alone(client, queue, url)
        .await
}

/// One publish waiting for its batch: what to send, and who waits for SQS's answer.
pub(crate) struct SendRequest {
    pub(crate) outgoing: Outgoing,
    pub(crate) done: oneshot::Sender<Result<(), BrokerError>>,
}

/// Gathers publishes into `SendMessageBatch` calls without waiting for more: a batch is
/// what queued up while the previous one was being gathered (at most ten, and
/// [`BATCH_BYTES`]), so a lone publish is sent at once and a burst shares calls. Each
/// batch is sent on its own task.
pub(crate) async fn run_sends(
    client: Client,
    url: String,
    queue: QueueName,
    mut requests: mpsc::UnboundedReceiver<SendRequest>,
) {
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match requests.recv().await {
                Some(request) => request,
                None => return,
            },
        };
        let mut bytes = first.outgoing.size;
        let mut batch = vec![first];
        while batch.len() < BATCH_ENTRIES {
            let Ok(request) = requests.try_recv() else {
                break;
            };
            if bytes + request.outgoing.size > BATCH_BYTES {
                carried = Some(request);
                break;
            }
            bytes += request.outgoing.size;
            batch.push(request);
        }
        tokio::spawn(send_batch(
            client.clone(),
            url.clone(),
            queue.clone(),
            batch,
        ));
    }
}

/// One `SendMessageBatch` (or a `SendMessage` for a batch of one). Entries SQS refuses as
/// the sender's fault fail with its reason; entries it could not take for another reason,
/// and every entry of a call that failed as a whole, are sent again on their own, so each
/// publish gets the answer a lone `SendMessage` would give.
async fn send_batch(client: Client, url: String, queue: QueueName, batch: Vec<SendRequest>) {
    if batch.len() == 1 {
        let request = batch.into_iter().next().expect("one");
        let result = request.outgoing.send_alone(&client, &queue, &url).await;
        let _ = request.done.send(result);
        return;
    }
    let entries = batch
        .iter()
        .enumerate()
        .map(|(i, request)| request.outgoing.batch_entry(i))
        .collect::<Vec<_>>();
    let mut again = Vec::new();
    match client
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(output) => {
            let failed: HashMap<usize, (bool, String)> = output
                .failed()
                .iter()
                .filter_map(|entry| {
                    let reason = match entry.message() {
                        Some(message) => format!("{}: {message}", entry.code()),
                        None => entry.code().to_owned(),
                    };
                    Some((entry.id().parse().ok()?, (entry.sender_fault(), reason)))
                })
                .collect();
            for (i, request) in batch.into_iter().enumerate() {
                match failed.get(&i) {
                    None => {
                        let _ = request.done.send(Ok(()));
                    }
                    Some((true, reason)) => {
                        let _ = request.done.send(Err(BrokerError::InvalidMessage {
                            message_id: request.outgoing.message_id.clone(),
                            problem: format!("SQS refused it: {reason}"),
                        }));
                    }
                    Some((false, reason)) => {
                        tracing::debug!(queue = %queue, %reason, "a batched send failed; sending it alone");
                        again.push(request);
                    }
                }
            }
        }
        Err(error) => {
            let error = broker_error(error, &queue);
            tracing::debug!(queue = %queue, %error, "a send batch failed; sending its messages alone");
            again = batch;
        }
    }
    for request in again {
        let result = request.outgoing.send_alone(&client, &queue, &url).await;
        let _ = request.done.send(result);
    }
}
