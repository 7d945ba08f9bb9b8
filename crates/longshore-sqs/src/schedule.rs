//! Schedule leases on SQS (see `longshore_core::schedule`).
//!
//! The lease is a *token*: a message in the FIFO queue `<queue>-schedule-<name>.fifo`, all in
//! one message group. SQS hands a group's messages to one receiver at a time and holds the
//! rest of the group back while any of them is in flight, so whoever received the token
//! holds the lease for as long as it keeps it invisible (30 s, renewed every 10 s). The
//! token's body is the watermark; recording sends a new token (deduplication id = the
//! watermark) and deletes the held one, after which the holder receives it again at once
//! (or another replica does: the lease passes on, which is harmless).

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use longshore_core::spi::{
    Message, ScheduleInfo, ScheduleKey, ScheduleLease, decode_holder, decode_watermark,
    encode_watermark, lease_lost, unix_millis,
};
use longshore_core::{Broker, BrokerError, QueueName};
use tokio::time::Instant;

use crate::SqsBroker;
use crate::client::{broker_error, name_of};

/// How long a received token stays invisible: the lease's length without renewal.
const LEASE_FOR: Duration = Duration::from_secs(30);
/// A holder stops trusting its lease this long before it runs out.
const MARGIN: Duration = Duration::from_secs(5);
/// The token's message group.
const GROUP: &str = "lease";
/// SQS's longest queue name.
const MAX_NAME: usize = 80;

/// The token queue's name: `<queue>-schedule-<name>.fifo` (a FIFO work queue's `.fifo` and
/// any dots dropped from the base, as SQS names allow only letters, digits, `-` and `_`).
pub(crate) fn lease_queue_name(key: &ScheduleKey) -> Result<String, BrokerError> {
    let work = name_of(&key.queue);
    let base = work
        .strip_suffix(".fifo")
        .unwrap_or(&work)
        .replace('.', "-");
    let name = format!("{base}-schedule-{}.fifo", key.name);
    if name.len() > MAX_NAME {
        return Err(BrokerError::Topology {
            queue: key.queue.clone(),
            problem: format!(
                "the lease queue of schedule `{}` would be named `{name}`, longer than SQS's \
                 {MAX_NAME} characters; use a shorter schedule name",
                key.name
            ),
        });
    }
    Ok(name)
}

/// Takes the lease of `key` if nobody holds it: receives the token, or seeds the queue's
/// first one.
pub(crate) async fn take(
    broker: &SqsBroker,
    key: &ScheduleKey,
) -> Result<Option<Box<dyn ScheduleLease>>, BrokerError> {
    let name = QueueName::new(lease_queue_name(key)?);
    let url = broker.lease_url(&name).await?;
    let mut lease = SqsLease {
        broker: broker.clone(),
        key: key.clone(),
        queue: name,
        url,
        receipts: Vec::new(),
        received_at: Instant::now(),
        watermark: None,
    };
    lease.receive(Duration::ZERO).await?;
    if lease.receipts.is_empty() && lease.token_count().await? == 0 {
        // A new schedule: seed its token (one seed however many replicas try, thanks to the
        // deduplication id), then receive it.
        lease.send_token(None).await?;
        lease.receive(Duration::from_secs(1)).await?;
    }
    tracing::debug!(%key, tokens = lease.receipts.len(), watermark = ?lease.watermark, "lease attempt");
    if lease.receipts.is_empty() {
        return Ok(None);
    }
    Ok(Some(Box::new(lease)))
}

/// Deletes a schedule's token queue.
pub(crate) async fn delete(broker: &SqsBroker, key: &ScheduleKey) -> Result<(), BrokerError> {
    let name = QueueName::new(lease_queue_name(key)?);
    let client = &broker.inner.client;
    let url = match crate::topology::url_of(client, &name).await {
        Ok(url) => url,
        Err(BrokerError::QueueNotFound { .. }) => return Ok(()),
        Err(other) => return Err(other),
    };
    broker
        .inner
        .lease_urls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&name);
    crate::topology::delete(client, &name, &url).await
}

/// The schedules of `queue`: its token queues. Whether one is held is whether its token is
/// in flight; the watermark and the holder who recorded it are read from a token that is
/// not (a held token cannot be read without taking the lease).
pub(crate) async fn list(
    broker: &SqsBroker,
    queue: &QueueName,
) -> Result<Vec<ScheduleInfo>, BrokerError> {
    let probe = ScheduleKey {
        queue: queue.clone(),
        name: String::new(),
    };
    let prefix = lease_queue_name(&probe)?;
    let prefix = prefix.trim_end_matches(".fifo");
    let client = &broker.inner.client;
    let mut out = Vec::new();
    for url in crate::topology::urls_with_prefix(client, prefix).await? {
        let queue_name = url.rsplit('/').next().unwrap_or_default();
        let name = queue_name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".fifo"))
            .unwrap_or_default()
            .to_owned();
        let name_q = QueueName::new(queue_name);
        let counts = client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|error| broker_error(error, &name_q))?;
        let in_flight = counts
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        let (mut watermark, mut holder) = (None, None);
        if in_flight == 0 {
            let peeked = client
                .receive_message()
                .queue_url(&url)
                .visibility_timeout(0)
                .max_number_of_messages(1)
                .send()
                .await
                .map_err(|error| broker_error(error, &name_q))?;
            if let Some(body) = peeked.messages().first().and_then(|m| m.body()) {
                watermark = decode_watermark(body.as_bytes());
                holder = decode_holder(body.as_bytes());
            }
        }
        out.push(ScheduleInfo {
            name,
            held: Some(in_flight > 0),
            holder,
            watermark,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A held lease: the receipt handles of the token(s) received.
struct SqsLease {
    broker: SqsBroker,
    key: ScheduleKey,
    queue: QueueName,
    url: String,
    /// Usually one; more when a holder died between sending a new token and deleting the
    /// old one.
    receipts: Vec<String>,
    received_at: Instant,
    watermark: Option<SystemTime>,
}

impl SqsLease {
    /// Receives every token there is (SQS lets one receiver have the group at a time); waits
    /// up to `wait` for the first.
    async fn receive(&mut self, wait: Duration) -> Result<(), BrokerError> {
        let mut wait = wait;
        loop {
            let received = self
                .broker
                .inner
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .wait_time_seconds(i32::try_from(wait.as_secs()).unwrap_or(20).min(20))
                .visibility_timeout(LEASE_FOR.as_secs() as i32)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .send()
                .await
                .map_err(|error| broker_error(error, &self.queue))?;
            let messages = received.messages.unwrap_or_default();
            if messages.is_empty() {
                return Ok(());
            }
            if self.receipts.is_empty() {
                self.received_at = Instant::now();
            }
            for message in messages {
                let watermark = message
                    .body()
                    .and_then(|body| decode_watermark(body.as_bytes()));
                self.watermark = self.watermark.max(watermark);
                if let Some(receipt) = message.receipt_handle {
                    self.receipts.push(receipt);
                }
            }
            wait = Duration::ZERO;
        }
    }

    /// Tokens in the queue, visible or not.
    async fn token_count(&self) -> Result<u64, BrokerError> {
        let attributes = self
            .broker
            .inner
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|error| broker_error(error, &self.queue))?;
        Ok(attributes
            .attributes()
            .map(|map| {
                map.values()
                    .filter_map(|value| value.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or_default())
    }

    async fn send_token(&self, watermark: Option<SystemTime>) -> Result<(), BrokerError> {
        let (body, dedup) = match watermark {
            Some(watermark) => (
                encode_watermark(&self.key, watermark),
                format!("w-{}", unix_millis(watermark)),
            ),
            None => (b"{\"seed\":true}".to_vec(), "seed".to_owned()),
        };
        self.broker
            .inner
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(String::from_utf8_lossy(&body))
            .message_group_id(GROUP)
            .message_deduplication_id(dedup)
            .send()
            .await
            .map_err(|error| broker_error(error, &self.queue))?;
        Ok(())
    }

    /// Sets the visibility of every held token.
    async fn set_visibility(&self, seconds: i32) -> Result<(), BrokerError> {
        set_visibility(
            &self.broker.inner.client,
            &self.queue,
            &self.url,
            &self.receipts,
            seconds,
        )
        .await
    }
}

/// Sets the visibility of the tokens of `queue` (at `url`) received with `receipts`.
async fn set_visibility(
    client: &Client,
    queue: &QueueName,
    url: &str,
    receipts: &[String],
    seconds: i32,
) -> Result<(), BrokerError> {
    for receipt in receipts {
        client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(receipt)
            .visibility_timeout(seconds)
            .send()
            .await
            .map_err(|error| broker_error(error, queue))?;
    }
    Ok(())
}

#[async_trait]
impl ScheduleLease for SqsLease {
    fn watermark(&self) -> Option<SystemTime> {
        self.watermark
    }

    fn is_held(&self) -> bool {
        !self.receipts.is_empty() && self.received_at.elapsed() < LEASE_FOR - MARGIN
    }

    async fn renew(&mut self) -> Result<(), BrokerError> {
        if !self.is_held() {
            return Err(lease_lost(&self.key));
        }
        let renewed_at = Instant::now();
        self.set_visibility(LEASE_FOR.as_secs() as i32)
            .await
            .map_err(|_| lease_lost(&self.key))?;
        self.received_at = renewed_at;
        Ok(())
    }

    async fn publish(&mut self, queue: &QueueName, message: Message) -> Result<(), BrokerError> {
        if !self.is_held() {
            return Err(lease_lost(&self.key));
        }
        self.broker.publish(queue, message).await
    }

    async fn record(&mut self, watermark: SystemTime) -> Result<(), BrokerError> {
        if !self.is_held() {
            return Err(lease_lost(&self.key));
        }
        // The new token first: if this holder dies now, the next one reads both and takes
        // the newest.
        self.send_token(Some(watermark)).await?;
        for receipt in std::mem::take(&mut self.receipts) {
            self.broker
                .inner
                .client
                .delete_message()
                .queue_url(&self.url)
                .receipt_handle(receipt)
                .send()
                .await
                .map_err(|error| broker_error(error, &self.queue))?;
        }
        self.watermark = Some(watermark);
        // Take the new token back; if another replica was quicker, it holds the lease now.
        self.receive(Duration::from_secs(1)).await
    }

    async fn release(mut self: Box<Self>) {
        let _ = self.set_visibility(0).await;
        self.receipts.clear();
    }
}

impl Drop for SqsLease {
    fn drop(&mut self) {
        if self.receipts.is_empty() {
            return;
        }
        // Dropped without release (the scheduler task was cancelled): make the token visible
        // now rather than when its visibility runs out.
        let (client, queue, url) = (
            self.broker.inner.client.clone(),
            self.queue.clone(),
            self.url.clone(),
        );
        let receipts = std::mem::take(&mut self.receipts);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = set_visibility(&client, &queue, &url, &receipts, 0).await;
            });
        }
    }
}

impl SqsBroker {
    /// The token queue's URL, creating the queue the first time.
    async fn lease_url(&self, name: &QueueName) -> Result<String, BrokerError> {
        if let Some(url) = self.known_lease_url(name) {
            return Ok(url);
        }
        let url = crate::topology::create(
            &self.inner.client,
            name,
            vec![
                (QueueAttributeName::FifoQueue, "true".into()),
                (
                    QueueAttributeName::VisibilityTimeout,
                    LEASE_FOR.as_secs().to_string(),
                ),
            ],
        )
        .await?;
        self.inner
            .lease_urls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.clone(), url.clone());
        Ok(url)
    }

    fn known_lease_url(&self, name: &QueueName) -> Option<String> {
        self.inner
            .lease_urls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(queue: &str, name: &str) -> ScheduleKey {
        ScheduleKey {
            queue: QueueName::new(queue),
            name: name.into(),
        }
    }

    #[test]
    fn lease_queues_are_fifo_and_named_after_queue_and_schedule() {
        assert_eq!(
            lease_queue_name(&key("emails", "nightly")).unwrap(),
            "emails-schedule-nightly.fifo"
        );
        assert_eq!(
            lease_queue_name(&key("orders.fifo", "hourly")).unwrap(),
            "orders-schedule-hourly.fifo"
        );
    }

    #[test]
    fn a_lease_queue_name_past_sqs_limit_is_a_clear_error() {
        let error = lease_queue_name(&key(&"q".repeat(60), "nightly-report"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("longer than SQS's 80 characters"), "{error}");
    }
}
