//! Dead letters of the memory broker: read from `<queue>.dlq` where they wait, moved back
//! one at a time (so a rate can be kept without holding the broker's lock).

use async_trait::async_trait;
use tokio::time::Instant;

use super::queue::Stored;
use super::{MemoryBroker, queue_mut};
use crate::broker::BrokerError;
use crate::dead_letters::{DeadLetter, DeadLetters, Redrive, RedriveReport};
use crate::names::QueueName;

#[async_trait]
impl DeadLetters for MemoryBroker {
    fn dead_letter_queue(&self, queue: &QueueName) -> Result<QueueName, BrokerError> {
        Ok(queue.dead_letter_queue())
    }

    async fn browse(
        &self,
        queue: &QueueName,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        Ok(self
            .messages(&queue.dead_letter_queue())?
            .into_iter()
            .take(limit)
            .map(DeadLetter::from_message)
            .collect())
    }

    async fn redrive(
        &self,
        queue: &QueueName,
        redrive: &Redrive,
        progress: &(dyn for<'r> Fn(&'r RedriveReport) + Send + Sync),
    ) -> Result<RedriveReport, BrokerError> {
        let dlq = queue.dead_letter_queue();
        let mut report = RedriveReport::default();
        // Walks the dead letters that were there at the start, by position: a moved one is
        // taken out, a kept one is stepped over.
        let total = self.messages(&dlq)?.len();
        let mut position = 0;
        for _ in 0..total {
            let moved_one;
            {
                let mut queues = self.inner.lock();
                let dead = queue_mut(&mut queues, &dlq)?;
                dead.promote(Instant::now());
                let Some(stored) = dead.ready.get(position) else {
                    break;
                };
                let letter = DeadLetter::from_message(stored.message.clone());
                report.examined += 1;
                moved_one = redrive.filter.matches(&letter)
                    && redrive.wants_more(report.matched)
                    && !redrive.dry_run;
                if redrive.filter.matches(&letter) && redrive.wants_more(report.matched) {
                    report.matched += 1;
                    report.ids.push(letter.message.id.clone());
                    if redrive.dry_run {
                        position += 1;
                    } else {
                        // The work queue first; only then out of the dead-letter queue.
                        queue_mut(&mut queues, queue)?.push(
                            Stored {
                                message: letter.revived(),
                                receive_count: 0,
                            },
                            None,
                            Instant::now(),
                        );
                        let dead = queue_mut(&mut queues, &dlq)?;
                        dead.ready.remove(position);
                        report.moved += 1;
                    }
                } else {
                    position += 1;
                }
            }
            progress(&report);
            if let Some(pause) = redrive.pause().filter(|_| moved_one) {
                tokio::time::sleep(pause).await;
            }
        }
        Ok(report)
    }

    async fn purge(&self, queue: &QueueName) -> Result<u64, BrokerError> {
        let mut queues = self.inner.lock();
        let dead = queue_mut(&mut queues, &queue.dead_letter_queue())?;
        let purged = dead.ready.len() as u64;
        dead.ready.clear();
        Ok(purged)
    }
}
