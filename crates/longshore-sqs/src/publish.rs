//! Sending: `SendMessage` with longshore's attributes, FIFO group and deduplication ids, and
//! delays — up to SQS's 15 minutes natively, longer ones in hops that carry the due time.

use std::time::{Duration, SystemTime};

use aws_sdk_sqs::Client;
use longshore_core::spi::Message;
use longshore_core::{BrokerError, QueueName};

use crate::client::broker_error;
use crate::topology::seconds_up;
use crate::wire;

/// SQS's longest `DelaySeconds`.
pub(crate) const MAX_NATIVE_DELAY: Duration = Duration::from_secs(900);

/// Sends `message` to the queue at `url`; returns once SQS has it.
pub(crate) async fn send(
    client: &Client,
    queue: &QueueName,
    url: &str,
    fifo: bool,
    message: &Message,
) -> Result<(), BrokerError> {
    let delay = message.delay.unwrap_or_default();
    if fifo && !delay.is_zero() {
        return Err(BrokerError::InvalidMessage {
            message_id: message.id.clone(),
            problem:
                "SQS FIFO queues take no per-message delay; set the queue's DelaySeconds, or use a \
                      standard queue for delayed jobs"
                    .into(),
        });
    }
    // Longer than SQS can wait: wait 15 minutes at a time, carrying when it is due.
    let due_at = (delay > MAX_NATIVE_DELAY).then(|| SystemTime::now() + delay);
    let attributes = wire::encode(message, due_at)?;
    let body = std::str::from_utf8(&message.body).map_err(|_| BrokerError::InvalidMessage {
        message_id: message.id.clone(),
        problem: "SQS message bodies are text; this body is not UTF-8".into(),
    })?;
    let mut request = client
        .send_message()
        .queue_url(url)
        .message_body(body)
        .set_message_attributes(Some(attributes.into_iter().collect()));
    if !delay.is_zero() {
        request = request.delay_seconds(seconds_up(delay.min(MAX_NATIVE_DELAY)));
    }
    if fifo {
        let group = message
            .group
            .clone()
            .unwrap_or_else(|| message.job.to_string());
        let dedup = message
            .deduplication_id
            .clone()
            .unwrap_or_else(|| message.id.to_string());
        request = request
            .message_group_id(group)
            .message_deduplication_id(dedup);
    }
    request
        .send()
        .await
        .map_err(|error| broker_error(error, queue))?;
    Ok(())
}
