//! One SQS queue as the adapter holds it: client, URL, redrive target, and the batchers
//! that turn acks into `DeleteMessageBatch` calls and publishes into `SendMessageBatch`.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use longshore_core::{BrokerError, MessageId, QueueName};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use longshore_core::spi::Message;

use crate::client::{broker_error, is_lost_lease};
use crate::publish::{Outgoing, SendRequest, run_sends};
use crate::topology::QueueInfo;

/// How long an ack waits for others to share its `DeleteMessageBatch` call.
const FLUSH_AFTER: Duration = Duration::from_millis(3);
/// Tries of one delete (whole call or failed entry) before the ack fails.
const DELETE_TRIES: usize = 4;

pub(crate) struct QueueCtx {
    pub(crate) name: QueueName,
    pub(crate) client: Client,
    pub(crate) info: QueueInfo,
    /// Whether the last receive call got an answer (readiness).
    pub(crate) reachable: std::sync::atomic::AtomicBool,
    deletes: mpsc::UnboundedSender<DeleteRequest>,
    sends: mpsc::UnboundedSender<SendRequest>,
}

struct DeleteRequest {
    receipt: String,
    message_id: MessageId,
    done: oneshot::Sender<Result<(), BrokerError>>,
}

impl QueueCtx {
    pub(crate) fn new(name: QueueName, client: Client, info: QueueInfo) -> Self {
        let (deletes, requests) = mpsc::unbounded_channel();
        tokio::spawn(run_deletes(
            client.clone(),
            info.url.clone(),
            name.clone(),
            requests,
        ));
        let (sends, requests) = mpsc::unbounded_channel();
        tokio::spawn(run_sends(
            client.clone(),
            info.url.clone(),
            name.clone(),
            requests,
        ));
        Self {
            name,
            client,
            info,
            reachable: std::sync::atomic::AtomicBool::new(true),
            deletes,
            sends,
        }
    }

    /// Sends `message`, in a `SendMessageBatch` with the publishes on their way beside it;
    /// returns once SQS has it.
    pub(crate) async fn publish(&self, message: &Message) -> Result<(), BrokerError> {
        let outgoing = Outgoing::new(message, self.info.fifo)?;
        let (done, result) = oneshot::channel();
        self.sends
            .send(SendRequest { outgoing, done })
            .map_err(|_| BrokerError::Closed)?;
        result.await.map_err(|_| BrokerError::Closed)?
    }

    /// Deletes a message, batched with other acks of the next few milliseconds; returns once
    /// SQS confirmed the delete.
    pub(crate) async fn delete(
        &self,
        receipt: String,
        message_id: &MessageId,
    ) -> Result<(), BrokerError> {
        let (done, result) = oneshot::channel();
        let request = DeleteRequest {
            receipt,
            message_id: message_id.clone(),
            done,
        };
        self.deletes
            .send(request)
            .map_err(|_| BrokerError::Closed)?;
        result.await.map_err(|_| BrokerError::Closed)?
    }
}

/// Collects acks into batches of up to 10, flushed within [`FLUSH_AFTER`]; each batch is
/// sent on its own task so the next can fill meanwhile.
async fn run_deletes(
    client: Client,
    url: String,
    queue: QueueName,
    mut requests: mpsc::UnboundedReceiver<DeleteRequest>,
) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        let deadline = Instant::now() + FLUSH_AFTER;
        while batch.len() < 10 {
            match tokio::time::timeout_at(deadline, requests.recv()).await {
                Ok(Some(request)) => batch.push(request),
                _ => break,
            }
        }
        tokio::spawn(delete_batch(
            client.clone(),
            url.clone(),
            queue.clone(),
            batch,
        ));
    }
}

/// One `DeleteMessageBatch`, retrying the call and its failed entries; every request gets
/// an answer, none is dropped silently.
async fn delete_batch(
    client: Client,
    url: String,
    queue: QueueName,
    mut pending: Vec<DeleteRequest>,
) {
    let mut last_error = String::new();
    for attempt in 1..=DELETE_TRIES {
        let entries = pending
            .iter()
            .enumerate()
            .map(|(i, request)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&request.receipt)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect::<Vec<_>>();
        match client
            .delete_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(output) => {
                let mut failed: Vec<(usize, String)> = output
                    .failed()
                    .iter()
                    .filter_map(|entry| Some((entry.id().parse().ok()?, entry.code().to_owned())))
                    .collect();
                failed.sort_unstable();
                let mut retry = Vec::new();
                for (i, request) in pending.into_iter().enumerate() {
                    match failed.binary_search_by_key(&i, |(index, _)| *index) {
                        Err(_) => {
                            let _ = request.done.send(Ok(()));
                        }
                        Ok(at) if is_lost_lease(Some(&failed[at].1)) => {
                            let _ = request.done.send(Err(BrokerError::LeaseLost {
                                queue: queue.clone(),
                                message_id: request.message_id.clone(),
                            }));
                        }
                        Ok(at) => {
                            last_error = failed[at].1.clone();
                            retry.push(request);
                        }
                    }
                }
                pending = retry;
            }
            Err(error) => last_error = broker_error(error, &queue).to_string(),
        }
        if pending.is_empty() {
            return;
        }
        tracing::warn!(queue = %queue, left = pending.len(), attempt, error = %last_error, "delete batch incomplete; retrying");
        tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
    }
    for request in pending {
        let _ = request.done.send(Err(BrokerError::Other(
            format!(
                "SQS did not delete message `{}` after {DELETE_TRIES} tries: {last_error}",
                request.message_id
            )
            .into(),
        )));
    }
}
