//! Topology: creating a queue with its dead-letter queue and redrive policy (declare), or
//! reading an existing queue's redrive policy (verify); statistics; deleting.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;
use longshore_core::{BrokerError, QueueName, QueueOptions, QueueStats};

use crate::client::{Address, address, broker_error, name_of};

/// What longshore knows of a queue on SQS.
#[derive(Clone, Debug)]
pub(crate) struct QueueInfo {
    pub(crate) url: String,
    pub(crate) fifo: bool,
    /// The queue's default visibility timeout.
    pub(crate) visibility: Duration,
    /// The redrive target: its name and URL.
    pub(crate) dead_letter: Option<(QueueName, String)>,
    /// The redrive policy's `maxReceiveCount`.
    pub(crate) max_receive_count: Option<u32>,
}

/// The dead-letter queue longshore declares for `name`: `<name>-dlq`, or `<base>-dlq.fifo`.
pub(crate) fn dead_letter_name(name: &str) -> String {
    match name.strip_suffix(".fifo") {
        Some(base) => format!("{base}-dlq.fifo"),
        None => format!("{name}-dlq"),
    }
}

/// The names of every queue (not dead-letter or schedule queues), by `ListQueues`.
pub(crate) async fn list(client: &Client) -> Result<Vec<QueueName>, BrokerError> {
    let mut names = Vec::new();
    let mut pages = client
        .list_queues()
        .max_results(1000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|error| broker_error(error, &QueueName::new("(all queues)")))?;
        for url in page.queue_urls.unwrap_or_default() {
            let name = url.rsplit('/').next().unwrap_or_default().to_owned();
            let hidden = name.contains("-schedule-")
                || name.ends_with("-dlq")
                || name.ends_with("-dlq.fifo");
            if !hidden {
                names.push(QueueName::new(name));
            }
        }
    }
    names.sort();
    Ok(names)
}

/// The URLs of queues whose names start with `prefix`.
pub(crate) async fn urls_with_prefix(
    client: &Client,
    prefix: &str,
) -> Result<Vec<String>, BrokerError> {
    let output = client
        .list_queues()
        .queue_name_prefix(prefix)
        .max_results(1000)
        .send()
        .await
        .map_err(|error| broker_error(error, &QueueName::new(prefix)))?;
    Ok(output.queue_urls.unwrap_or_default())
}

pub(crate) async fn url_of(client: &Client, queue: &QueueName) -> Result<String, BrokerError> {
    match address(queue) {
        Address::Url(url) => Ok(url),
        Address::Name(name) => client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| broker_error(e, queue))?
            .queue_url()
            .map(str::to_owned)
            .ok_or_else(|| BrokerError::QueueNotFound {
                queue: queue.clone(),
            }),
    }
}

async fn attributes(
    client: &Client,
    queue: &QueueName,
    url: &str,
) -> Result<HashMap<QueueAttributeName, String>, BrokerError> {
    Ok(client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| broker_error(e, queue))?
        .attributes()
        .cloned()
        .unwrap_or_default())
}

pub(crate) async fn create(
    client: &Client,
    queue: &QueueName,
    attributes: Vec<(QueueAttributeName, String)>,
) -> Result<String, BrokerError> {
    let mut request = client.create_queue().queue_name(name_of(queue));
    for (name, value) in attributes {
        request = request.attributes(name, value);
    }
    match request.send().await {
        Ok(created) => {
            created
                .queue_url()
                .map(str::to_owned)
                .ok_or_else(|| BrokerError::QueueNotFound {
                    queue: queue.clone(),
                })
        }
        Err(error) => {
            let code = aws_sdk_sqs::error::ProvideErrorMetadata::code(&error).map(str::to_owned);
            match code.as_deref() {
                Some("QueueAlreadyExists" | "QueueNameExists" | "AWS.SimpleQueueService.QueueNameExists") => {
                    Err(BrokerError::Topology {
                        queue: queue.clone(),
                        problem: "it exists with other attributes than longshore declares; delete it, or plug \
                                  into it as it is with Topology::Verify"
                            .into(),
                    })
                }
                _ => Err(broker_error(error, queue)),
            }
        }
    }
}

/// Creates the queue (and, if asked, its dead-letter queue and a redrive policy with
/// `max_receive_count`); idempotent when the attributes match.
pub(crate) async fn declare(
    client: &Client,
    queue: &QueueName,
    options: &QueueOptions,
    max_receive_count: u32,
) -> Result<QueueInfo, BrokerError> {
    let name = name_of(queue);
    let fifo = name.ends_with(".fifo");
    let mut common = Vec::new();
    if fifo {
        common.push((QueueAttributeName::FifoQueue, "true".to_owned()));
    }
    let mut main = common.clone();
    main.push((
        QueueAttributeName::VisibilityTimeout,
        options
            .visibility_timeout
            .as_secs()
            .clamp(1, 43_200)
            .to_string(),
    ));
    let mut dead_letter = None;
    if options.dead_letter_queue {
        let dlq = QueueName::new(dead_letter_name(&name));
        let mut dlq_attributes = common;
        dlq_attributes.push((
            QueueAttributeName::MessageRetentionPeriod,
            "1209600".to_owned(),
        ));
        let dlq_url = create(client, &dlq, dlq_attributes).await?;
        let arn = attributes(client, &dlq, &dlq_url)
            .await?
            .remove(&QueueAttributeName::QueueArn)
            .ok_or_else(|| BrokerError::Other(format!("SQS gave no ARN for `{dlq}`").into()))?;
        let policy = serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": max_receive_count.to_string() });
        main.push((QueueAttributeName::RedrivePolicy, policy.to_string()));
        dead_letter = Some((dlq, dlq_url));
    }
    let url = create(client, queue, main).await?;
    Ok(QueueInfo {
        url,
        fifo,
        visibility: Duration::from_secs(options.visibility_timeout.as_secs().clamp(1, 43_200)),
        dead_letter,
        max_receive_count: options.dead_letter_queue.then_some(max_receive_count),
    })
}

/// Reads an existing queue: its URL, whether it is FIFO, and its redrive target. With
/// `require_redrive`, a queue without a redrive policy is an error (verify mode).
pub(crate) async fn inspect(
    client: &Client,
    queue: &QueueName,
    require_redrive: bool,
) -> Result<QueueInfo, BrokerError> {
    let url = url_of(client, queue).await?;
    let mut attributes = attributes(client, queue, &url).await?;
    let fifo = attributes
        .get(&QueueAttributeName::FifoQueue)
        .is_some_and(|v| v == "true");
    let visibility =
        Duration::from_secs(count(&attributes, &QueueAttributeName::VisibilityTimeout).max(1));
    let (mut dead_letter, mut max_receive_count) = (None, None);
    if let Some(policy) = attributes.remove(&QueueAttributeName::RedrivePolicy) {
        let policy: serde_json::Value =
            serde_json::from_str(&policy).map_err(|error| BrokerError::Topology {
                queue: queue.clone(),
                problem: format!("its redrive policy is not JSON ({error})"),
            })?;
        let arn = policy["deadLetterTargetArn"].as_str().unwrap_or_default();
        let dlq = QueueName::new(arn.rsplit(':').next().unwrap_or_default());
        let dlq_url = url_of(client, &dlq).await.map_err(|error| match error {
            BrokerError::QueueNotFound { .. } => BrokerError::Topology {
                queue: queue.clone(),
                problem: format!("its redrive target `{arn}` does not exist"),
            },
            other => other,
        })?;
        max_receive_count = match &policy["maxReceiveCount"] {
            serde_json::Value::String(s) => s.parse().ok(),
            other => other.as_u64().and_then(|n| u32::try_from(n).ok()),
        };
        dead_letter = Some((dlq, dlq_url));
    } else if require_redrive {
        return Err(BrokerError::Topology {
            queue: queue.clone(),
            problem: "it has no redrive policy, so longshore has nowhere to dead-letter its messages; add a \
                      redrive policy with a dead-letter queue, or let longshore declare it (Topology::Declare)"
                .into(),
        });
    }
    Ok(QueueInfo {
        url,
        fifo,
        visibility,
        dead_letter,
        max_receive_count,
    })
}

fn count(attributes: &HashMap<QueueAttributeName, String>, name: &QueueAttributeName) -> u64 {
    attributes
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Approximate counts, as SQS reports them.
pub(crate) async fn stats(
    client: &Client,
    queue: &QueueName,
    info: &QueueInfo,
) -> Result<QueueStats, BrokerError> {
    let attributes = attributes(client, queue, &info.url).await?;
    let dead_lettered = match &info.dead_letter {
        Some((dlq, url)) => {
            let dead = self::attributes(client, dlq, url).await?;
            Some(
                count(&dead, &QueueAttributeName::ApproximateNumberOfMessages)
                    + count(
                        &dead,
                        &QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
                    )
                    + count(
                        &dead,
                        &QueueAttributeName::ApproximateNumberOfMessagesDelayed,
                    ),
            )
        }
        None => None,
    };
    Ok(QueueStats {
        ready: count(
            &attributes,
            &QueueAttributeName::ApproximateNumberOfMessages,
        ),
        delayed: Some(count(
            &attributes,
            &QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        )),
        in_flight: Some(count(
            &attributes,
            &QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )),
        dead_lettered,
    })
}

/// Deletes a queue by URL; a missing queue is not an error.
pub(crate) async fn delete(
    client: &Client,
    queue: &QueueName,
    url: &str,
) -> Result<(), BrokerError> {
    match client.delete_queue().queue_url(url).send().await {
        Ok(_) => Ok(()),
        Err(error) => match broker_error(error, queue) {
            BrokerError::QueueNotFound { .. } => Ok(()),
            other => Err(other),
        },
    }
}

/// Whole seconds for SQS, rounded up so nothing happens early.
pub(crate) fn seconds_up(duration: Duration) -> i32 {
    i32::try_from(duration.as_nanos().div_ceil(1_000_000_000)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_names_keep_the_fifo_suffix() {
        assert_eq!(dead_letter_name("emails"), "emails-dlq");
        assert_eq!(dead_letter_name("orders.fifo"), "orders-dlq.fifo");
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(seconds_up(Duration::from_secs(2)), 2);
        assert_eq!(seconds_up(Duration::from_millis(2001)), 3);
        assert_eq!(seconds_up(Duration::ZERO), 0);
    }
}
