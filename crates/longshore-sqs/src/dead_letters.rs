//! Dead letters on SQS: read from the queue's redrive target by receiving them with a
//! visibility timeout and handing back (visibility 0) what is kept. A redrive sends each
//! matching dead letter to the work queue as a new message (its receive count starts
//! again) and only then deletes it from the dead-letter queue. (`StartMessageMoveTask`
//! moves everything and cannot filter, so longshore does not use it.)

use std::collections::HashSet;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, MessageSystemAttributeName};
use longshore_core::dead_letters::{DeadLetter, DeadLetters, Redrive, RedriveReport};
use longshore_core::spi::unix_millis;
use longshore_core::{BrokerError, QueueName};

use crate::client::{broker_error, name_of};
use crate::queue::QueueCtx;
use crate::{SqsBroker, publish, topology, wire};

/// How long dead letters being looked at stay invisible to others.
const HOLD: i32 = 120;

/// The dead-letter queue of `ctx`, or why there is none.
fn target(ctx: &QueueCtx) -> Result<(QueueName, String), BrokerError> {
    ctx.info
        .dead_letter
        .clone()
        .ok_or_else(|| BrokerError::Topology {
            queue: ctx.name.clone(),
            problem:
                "it has no redrive policy, so no dead-letter queue to read; declare it with one"
                    .into(),
        })
}

/// One batch of dead letters with their receipt handles; empty when none is left.
async fn receive(
    ctx: &QueueCtx,
    dlq: &QueueName,
    url: &str,
) -> Result<Vec<(DeadLetter, String, String)>, BrokerError> {
    let output = ctx
        .client
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .visibility_timeout(HOLD)
        .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
        .message_attribute_names("All")
        .send()
        .await
        .map_err(|error| broker_error(error, dlq))?;
    Ok(output
        .messages
        .unwrap_or_default()
        .into_iter()
        .map(|sqs| {
            let (mut message, _) =
                wire::decode(sqs.body(), sqs.message_attributes(), sqs.message_id());
            message.group = sqs
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned();
            let receipt = sqs.receipt_handle().unwrap_or_default().to_owned();
            let sqs_id = sqs.message_id().unwrap_or_default().to_owned();
            (DeadLetter::from_message(message), receipt, sqs_id)
        })
        .collect())
}

/// Hands back what was looked at and kept.
async fn release(ctx: &QueueCtx, url: &str, receipts: &[String]) {
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect::<Vec<_>>();
        let released = ctx
            .client
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        if let Err(error) = released {
            tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "could not hand back dead letters; they are visible again after {HOLD} s");
        }
    }
}

#[async_trait]
impl DeadLetters for SqsBroker {
    fn dead_letter_queue(&self, queue: &QueueName) -> Result<QueueName, BrokerError> {
        Ok(self
            .known(queue)
            .and_then(|ctx| ctx.info.dead_letter.as_ref().map(|(dlq, _)| dlq.clone()))
            .unwrap_or_else(|| QueueName::new(topology::dead_letter_name(&name_of(queue)))))
    }

    async fn browse(
        &self,
        queue: &QueueName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let ctx = self.ctx(queue).await?;
        let (dlq, url) = target(&ctx)?;
        let mut letters = Vec::new();
        let mut receipts = Vec::new();
        let mut seen = HashSet::new();
        let read = async {
            'reading: while letters.len() < limit {
                let batch = receive(&ctx, &dlq, &url).await?;
                if batch.is_empty() {
                    break;
                }
                for (letter, receipt, sqs_id) in batch {
                    receipts.push(receipt);
                    if !seen.insert(sqs_id) {
                        break 'reading;
                    }
                    if letters.len() < limit {
                        letters.push(letter);
                    }
                }
            }
            Ok::<_, BrokerError>(())
        }
        .await;
        release(&ctx, &url, &receipts).await;
        letters.sort_by_key(|letter| letter.dead_at.unwrap_or(SystemTime::UNIX_EPOCH));
        read.map(|()| letters)
    }

    async fn redrive(
        &self,
        queue: &QueueName,
        redrive: &Redrive,
        progress: &(dyn for<'r> Fn(&'r RedriveReport) + Send + Sync),
    ) -> Result<RedriveReport, BrokerError> {
        let ctx = self.ctx(queue).await?;
        let (dlq, url) = target(&ctx)?;
        let mut report = RedriveReport::default();
        let mut kept = Vec::new();
        let mut seen = HashSet::new();
        let moved = async {
            'reading: loop {
                let batch = receive(&ctx, &dlq, &url).await?;
                if batch.is_empty() {
                    break;
                }
                for (letter, receipt, sqs_id) in batch {
                    if !seen.insert(sqs_id) {
                        // Seen before in this pass: everything left was looked at.
                        kept.push(receipt);
                        break 'reading;
                    }
                    report.examined += 1;
                    let take =
                        redrive.filter.matches(&letter) && redrive.wants_more(report.matched);
                    if take {
                        report.matched += 1;
                        report.ids.push(letter.message.id.clone());
                    }
                    if !take || redrive.dry_run {
                        kept.push(receipt);
                        progress(&report);
                        continue;
                    }
                    let mut revived = letter.revived();
                    if ctx.info.fifo {
                        revived.deduplication_id = Some(format!(
                            "{}-redrive-{}",
                            revived.id,
                            unix_millis(SystemTime::now())
                        ));
                    }
                    publish::send(&ctx.client, queue, &ctx.info.url, ctx.info.fifo, &revived)
                        .await?;
                    ctx.client
                        .delete_message()
                        .queue_url(&url)
                        .receipt_handle(&receipt)
                        .send()
                        .await
                        .map_err(|error| broker_error(error, &dlq))?;
                    report.moved += 1;
                    progress(&report);
                    if let Some(pause) = redrive.pause() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
            Ok::<_, BrokerError>(())
        }
        .await;
        release(&ctx, &url, &kept).await;
        moved.map(|()| report)
    }

    async fn purge(&self, queue: &QueueName) -> Result<u64, BrokerError> {
        let ctx = self.ctx(queue).await?;
        let (dlq, url) = target(&ctx)?;
        let mut purged = 0;
        // Receive and delete rather than PurgeQueue (which SQS allows once a minute).
        loop {
            let batch = receive(&ctx, &dlq, &url).await?;
            if batch.is_empty() {
                return Ok(purged);
            }
            for (_, receipt, _) in batch {
                ctx.client
                    .delete_message()
                    .queue_url(&url)
                    .receipt_handle(receipt)
                    .send()
                    .await
                    .map_err(|error| broker_error(error, &dlq))?;
                purged += 1;
            }
        }
    }
}
