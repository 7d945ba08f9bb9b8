//! Dead letters: browsing a queue's dead-letter queue, grouping what failed, and moving
//! dead letters back to their work queue (redrive) — the same on every broker that offers
//! it ([`Broker::dead_letters`](crate::Broker::dead_letters)).
//!
//! A redrive publishes each matching dead letter to the work queue (confirmed by the broker)
//! with a fresh attempt count *before* removing it from the dead-letter queue: a redrive
//! killed halfway loses nothing, and at worst leaves one message in both. Dead letters that
//! do not match stay, in their order where the broker keeps order (RabbitMQ classic queues).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::broker::BrokerError;
use crate::message::{Message, headers};
use crate::names::{JobName, MessageId, QueueName};

/// One dead letter: the message as it was dead-lettered, and what longshore recorded on it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    /// The message (id, job name, body, headers).
    pub message: Message,
    /// Why it was dead-lettered (`longshore-dead-reason`); `None` for a message the broker
    /// dead-lettered by itself (an SQS `maxReceiveCount`, a quorum delivery limit).
    pub reason: Option<String>,
    /// The attempt on which it was dead-lettered.
    pub attempt: Option<u32>,
    /// When it was dead-lettered.
    pub dead_at: Option<SystemTime>,
    /// The queue it was dead-lettered from.
    pub from_queue: Option<QueueName>,
}

impl DeadLetter {
    /// A dead letter from the message found in a dead-letter queue.
    pub fn from_message(message: Message) -> Self {
        let header = |name: &str| message.headers.get(name).cloned();
        let dead_at = header(headers::DEAD_AT)
            .and_then(|ms| ms.parse::<u64>().ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
        Self {
            reason: header(headers::DEAD_REASON),
            attempt: header(headers::DEAD_ATTEMPT).and_then(|n| n.parse().ok()),
            dead_at,
            from_queue: header(headers::DEAD_QUEUE).map(QueueName::from),
            message,
        }
    }

    /// The message to publish again: the dead-letter headers taken off, marked as enqueued
    /// by hand, with its id, job, body and the user's headers.
    pub fn revived(&self) -> Message {
        let mut message = self.message.clone();
        message
            .headers_mut()
            .retain(|name, _| !name.starts_with("longshore-dead-") && name != headers::DUE_AT);
        message
            .headers_mut()
            .insert(headers::TRIGGER.to_owned(), "manual".to_owned());
        message.delay = None;
        message
    }

    /// What the dead letter is grouped by: `reason` (its first 120 characters, so messages
    /// that differ only in ids still group) or `job`.
    pub fn group_key(&self, by: GroupBy) -> String {
        match by {
            GroupBy::Job => self.message.job.to_string(),
            GroupBy::Reason => {
                let reason = self
                    .reason
                    .as_deref()
                    .unwrap_or("(no reason: dead-lettered by the broker)");
                reason.chars().take(120).collect()
            }
        }
    }
}

/// How dead letters are grouped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GroupBy {
    /// By reason (the default).
    #[default]
    Reason,
    /// By job name.
    Job,
}

/// One group of dead letters.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The reason or job name.
    pub key: String,
    /// How many.
    pub count: usize,
    /// When the oldest was dead-lettered.
    pub oldest: Option<SystemTime>,
    /// When the newest was dead-lettered.
    pub newest: Option<SystemTime>,
    /// One of their ids.
    pub sample: MessageId,
}

/// Groups dead letters, largest group first.
pub fn group(letters: &[DeadLetter], by: GroupBy) -> Vec<Group> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for letter in letters {
        let key = letter.group_key(by);
        let group = groups.entry(key.clone()).or_insert_with(|| Group {
            key,
            count: 0,
            oldest: letter.dead_at,
            newest: letter.dead_at,
            sample: letter.message.id.clone(),
        });
        group.count += 1;
        group.oldest = match (group.oldest, letter.dead_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        group.newest = match (group.newest, letter.dead_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    groups
}

/// Which dead letters a redrive moves: all of these that are set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Filter {
    /// Only these job names.
    pub jobs: Vec<JobName>,
    /// Only reasons containing this text.
    pub reason_contains: Option<String>,
    /// Only these ids.
    pub ids: Vec<MessageId>,
}

impl Filter {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only job `name` (may be given more than once).
    pub fn job(mut self, name: impl Into<JobName>) -> Self {
        self.jobs.push(name.into());
        self
    }

    /// Only reasons containing `text`.
    pub fn reason_contains(mut self, text: impl Into<String>) -> Self {
        self.reason_contains = Some(text.into());
        self
    }

    /// Only id `id` (may be given more than once).
    pub fn id(mut self, id: impl Into<MessageId>) -> Self {
        self.ids.push(id.into());
        self
    }

    /// Whether `letter` is one to move.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        (self.jobs.is_empty() || self.jobs.contains(&letter.message.job))
            && self.reason_contains.as_ref().is_none_or(|text| {
                letter
                    .reason
                    .as_deref()
                    .is_some_and(|reason| reason.contains(text.as_str()))
            })
            && (self.ids.is_empty() || self.ids.contains(&letter.message.id))
    }
}

/// How a redrive runs.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Redrive {
    /// Which dead letters.
    pub filter: Filter,
    /// At most this many.
    pub limit: Option<usize>,
    /// At most this many per second.
    pub rate: Option<f64>,
    /// Move nothing; report what would move.
    pub dry_run: bool,
}

impl Redrive {
    /// Moves what `filter` matches.
    pub fn new(filter: Filter) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }

    /// At most `n`.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// At most `per_second` a second.
    pub fn rate(mut self, per_second: f64) -> Self {
        self.rate = Some(per_second).filter(|rate| *rate > 0.0);
        self
    }

    /// Moves nothing.
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }

    /// The wait between two moves, for the rate.
    pub fn pause(&self) -> Option<Duration> {
        self.rate.map(|rate| Duration::from_secs_f64(1.0 / rate))
    }

    /// Whether `moved` more may still move.
    pub fn wants_more(&self, moved: usize) -> bool {
        self.limit.is_none_or(|limit| moved < limit)
    }
}

/// What a redrive did (or, dry, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedriveReport {
    /// Dead letters looked at.
    pub examined: usize,
    /// Those that matched (within the limit).
    pub matched: usize,
    /// Those moved back to the work queue.
    pub moved: usize,
    /// Their ids, in the order moved (or, dry, matched).
    pub ids: Vec<MessageId>,
}

/// What a broker offers for dead letters: browse, redrive, purge.
#[async_trait]
pub trait DeadLetters: Send + Sync {
    /// The dead-letter queue of `queue`, where its dead letters are read from.
    fn dead_letter_queue(&self, queue: &QueueName) -> Result<QueueName, BrokerError>;

    /// Up to `limit` dead letters of `queue`, oldest first, left where they are.
    async fn browse(&self, queue: &QueueName, limit: usize)
    -> Result<Vec<DeadLetter>, BrokerError>;

    /// Moves the dead letters of `queue` that `redrive` selects back to `queue`: each is
    /// published there (confirmed) with a fresh attempt count before it is removed from the
    /// dead-letter queue; the others stay. `progress` is told after each dead letter looked at.
    async fn redrive(
        &self,
        queue: &QueueName,
        redrive: &Redrive,
        progress: &(dyn for<'r> Fn(&'r RedriveReport) + Send + Sync),
    ) -> Result<RedriveReport, BrokerError>;

    /// Deletes every dead letter of `queue`; how many there were (where the broker says).
    async fn purge(&self, queue: &QueueName) -> Result<u64, BrokerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(job: &str, reason: Option<&str>, at_ms: u64) -> DeadLetter {
        let mut message = Message::new(job, b"{}".to_vec());
        if let Some(reason) = reason {
            message
                .headers_mut()
                .insert(headers::DEAD_REASON.into(), reason.into());
        }
        message
            .headers_mut()
            .insert(headers::DEAD_AT.into(), at_ms.to_string());
        message.headers_mut().insert("tenant".into(), "acme".into());
        DeadLetter::from_message(message)
    }

    #[test]
    fn letters_group_by_reason_or_job_with_counts_and_times() {
        let letters = vec![
            letter("bill", Some("unknown job `bill`"), 3_000),
            letter("bill", Some("unknown job `bill`"), 1_000),
            letter("mail", Some("permanent failure: bad address"), 2_000),
            letter("mail", None, 4_000),
        ];
        let by_reason = group(&letters, GroupBy::Reason);
        assert_eq!(by_reason[0].key, "unknown job `bill`");
        assert_eq!(by_reason[0].count, 2);
        assert_eq!(
            by_reason[0].oldest,
            Some(UNIX_EPOCH + Duration::from_secs(1))
        );
        assert_eq!(
            by_reason[0].newest,
            Some(UNIX_EPOCH + Duration::from_secs(3))
        );
        assert_eq!(by_reason.len(), 3);
        let by_job = group(&letters, GroupBy::Job);
        assert_eq!(
            by_job
                .iter()
                .map(|g| (g.key.as_str(), g.count))
                .collect::<Vec<_>>(),
            [("bill", 2), ("mail", 2)]
        );
    }

    #[test]
    fn filters_match_on_job_reason_and_id() {
        let a = letter("bill", Some("unknown job `bill`"), 1);
        let b = letter("mail", Some("permanent failure: bad address"), 2);
        assert!(Filter::all().matches(&a));
        assert!(Filter::all().job("bill").matches(&a) && !Filter::all().job("bill").matches(&b));
        assert!(Filter::all().reason_contains("address").matches(&b));
        assert!(!Filter::all().reason_contains("address").matches(&a));
        let only_a = Filter::all().id(a.message.id.clone());
        assert!(only_a.matches(&a) && !only_a.matches(&b));
    }

    #[test]
    fn a_revived_message_loses_its_dead_letter_headers_and_keeps_the_rest() {
        let dead = letter("bill", Some("boom"), 1);
        let revived = dead.revived();
        assert_eq!(revived.id, dead.message.id);
        assert!(!revived.headers.contains_key(headers::DEAD_REASON));
        assert!(!revived.headers.contains_key(headers::DEAD_AT));
        assert_eq!(
            revived.headers.get("tenant").map(String::as_str),
            Some("acme")
        );
        assert_eq!(
            revived.headers.get(headers::TRIGGER).map(String::as_str),
            Some("manual")
        );
    }
}
