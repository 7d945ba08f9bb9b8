//! The policy check: what a worker's retry policy and timeouts need from its queue, against
//! what the broker says of the queue. `longshore check QUEUE` runs it; a worker runs it when
//! it starts, logging what it finds (errors as warnings, notes at INFO), or refusing to
//! start on an error with [`WorkerBuilder::strict_checks`](crate::WorkerBuilder::strict_checks).

use std::fmt;
use std::time::Duration;

use crate::broker::{Broker, BrokerError};
use crate::names::QueueName;

/// What the broker tells of a queue, for the check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueFacts {
    /// After how many deliveries the broker dead-letters a message by itself (SQS
    /// `maxReceiveCount`, a quorum queue's `x-delivery-limit`), where it does and says.
    pub max_receive_count: Option<u32>,
    /// How long a received message stays invisible (SQS, memory).
    pub visibility_timeout: Option<Duration>,
    /// Where its dead letters land.
    pub dead_letters: DeadLetterTarget,
    /// Whether the delay queues retries and delayed jobs go through are declared (RabbitMQ's
    /// ladder); `None` where the broker needs none.
    pub delay_queues: Option<bool>,
}

/// Where a queue's dead letters land, as far as the broker says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum DeadLetterTarget {
    /// In this queue.
    Queue(QueueName),
    /// Nowhere, for this reason.
    Missing(String),
    /// The broker cannot tell.
    #[default]
    Unknown,
}

/// What the worker (or `longshore check`) expects of the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectations {
    /// The most attempts a job may take (the retry policy's).
    pub max_attempts: u32,
    /// The longest a job may run.
    pub job_timeout: Duration,
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Works as configured, but worth knowing (a worker logs it at INFO; `longshore check`
    /// fails on it only with `--strict`).
    Note,
    /// Jobs will fail to settle or to retry.
    Error,
}

/// One thing the check found, in a sentence that says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What, and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Note => "note",
            Severity::Error => "error",
        };
        write!(f, "{level}: {}", self.message)
    }
}

/// Checks `queue` on `broker` against `expected`; the findings, worst first (empty when
/// all is well). An error reading the queue is an `Err`.
pub async fn check(
    broker: &dyn Broker,
    queue: &QueueName,
    expected: &Expectations,
) -> Result<Vec<Finding>, BrokerError> {
    let facts = broker.inspect(queue).await?;
    Ok(findings(queue, &facts, expected))
}

/// The findings for `facts`.
pub fn findings(queue: &QueueName, facts: &QueueFacts, expected: &Expectations) -> Vec<Finding> {
    let mut out = Vec::new();
    if let DeadLetterTarget::Missing(problem) = &facts.dead_letters {
        out.push(Finding {
            severity: Severity::Error,
            message: format!(
                "queue `{queue}` has no dead-letter queue ({problem}): jobs that fail for good cannot be \
                 dead-lettered and come back forever; declare the queue with one (Topology::Declare) or \
                 give its dead-letter target"
            ),
        });
    }
    if facts.delay_queues == Some(false) {
        out.push(Finding {
            severity: Severity::Error,
            message: "the delay queues (`longshore.delay.*`, `longshore.delivery`) are not declared: retries \
                      and delayed jobs cannot be published; start a worker with Topology::Declare once, or \
                      run `longshore check` after declaring them"
                .into(),
        });
    }
    if let Some(limit) = facts.max_receive_count
        && limit < expected.max_attempts
    {
        out.push(Finding {
            severity: Severity::Error,
            message: format!(
                "queue `{queue}` dead-letters a message after {limit} deliveries, but jobs may take {} \
                 attempts: the last attempts never happen and the broker's dead letter carries no \
                 reason; raise the queue's limit (SQS maxReceiveCount, a quorum queue's \
                 x-delivery-limit) to at least {}, or lower the retry policy's attempts",
                expected.max_attempts, expected.max_attempts
            ),
        });
    }
    if let Some(visibility) = facts.visibility_timeout
        && visibility < expected.job_timeout
    {
        out.push(Finding {
            severity: Severity::Note,
            message: format!(
                "queue `{queue}`'s visibility timeout ({visibility:?}) is below the job timeout ({:?}): \
                 longshore renews the lease while a job runs, but a worker that stalls longer than \
                 the visibility timeout lets another one run the job too; set the visibility timeout \
                 to the job timeout, or lower the job timeout",
                expected.job_timeout
            ),
        });
    }
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_policies_are_found_and_explained() {
        let queue = QueueName::new("billing");
        let facts = QueueFacts {
            max_receive_count: Some(3),
            visibility_timeout: Some(Duration::from_secs(30)),
            dead_letters: DeadLetterTarget::Queue(QueueName::new("billing-dlq")),
            delay_queues: None,
        };
        let expected = Expectations {
            max_attempts: 5,
            job_timeout: Duration::from_secs(300),
        };
        let found = findings(&queue, &facts, &expected);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(
            (found[0].severity, found[1].severity),
            (Severity::Error, Severity::Note)
        );
        assert!(
            found[0]
                .message
                .contains("after 3 deliveries, but jobs may take 5 attempts")
        );
        assert!(
            found[1]
                .message
                .contains("visibility timeout (30s) is below the job timeout (300s)")
        );
        let fine = Expectations {
            max_attempts: 3,
            job_timeout: Duration::from_secs(30),
        };
        assert!(findings(&queue, &facts, &fine).is_empty());
        let broken = QueueFacts {
            dead_letters: DeadLetterTarget::Missing("none configured".into()),
            delay_queues: Some(false),
            ..QueueFacts::default()
        };
        let found = findings(&queue, &broken, &fine);
        assert!(found.iter().all(|f| f.severity == Severity::Error) && found.len() == 2);
    }
}
