//! longshore's Amazon SQS adapter, on [aws-sdk-sqs](https://docs.rs/aws-sdk-sqs).
//!
//! | longshore | SQS |
//! | --- | --- |
//! | prefetch | receive loops (`ReceiveMessage`, long polling, up to 10 a call) filling a buffer of at most the prefetch |
//! | `ack` | `DeleteMessageBatch`, flushed within milliseconds; failed entries retried, never dropped |
//! | `retry(delay)` | `ChangeMessageVisibility` to the delay (whole seconds, at least 1, at most 12 h): `ApproximateReceiveCount` and the redrive policy keep working |
//! | `release` | visibility 0 |
//! | `dead_letter(reason)` | `SendMessage` to the redrive target with `longshore-dead-*` metadata, then delete |
//! | `extend` | `ChangeMessageVisibility`: the runtime's heartbeat at half the remaining lease |
//! | attempt | `ApproximateReceiveCount` |
//! | delays | `DelaySeconds` up to 15 minutes; longer delays hop: each copy waits 15 minutes and carries its due time |
//! | FIFO (`*.fifo`) | `MessageGroupId` (the message's group, else the job name) and `MessageDeduplicationId` (else the message id) |
//!
//! Region, credentials and endpoint come from the standard AWS chain: environment,
//! profiles, and `AWS_ENDPOINT_URL` for LocalStack.
//!
//! ```no_run
//! # async fn run() -> Result<(), longshore_core::BrokerError> {
//! let broker = longshore_sqs::SqsBroker::builder("sqs://").max_receive_count(10).connect().await?;
//! # let _ = broker; Ok(()) }
//! ```

mod client;
mod consume;
mod dead_letters;
mod fifo;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod publish;
mod queue;
mod received;
mod schedule;
mod settle;
mod topology;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use longshore_core::check::{DeadLetterTarget, QueueFacts};
use longshore_core::dead_letters::DeadLetters;
use longshore_core::spi::{
    ConsumeOptions, DeliveryStream, Message, ScheduleInfo, ScheduleKey, ScheduleLease,
    ScheduleStore,
};
use longshore_core::{Broker, BrokerError, BrokerUrl, QueueName, QueueOptions, QueueStats};
use queue::QueueCtx;

/// Builds an [`SqsBroker`].
#[derive(Debug)]
pub struct SqsBrokerBuilder {
    url: BrokerUrl,
    max_receive_count: u32,
    overrides: client::Overrides,
}

impl SqsBrokerBuilder {
    /// The redrive policy's `maxReceiveCount` for queues longshore declares. Default: 10.
    /// Keep it at least the retry policy's max attempts: SQS dead-letters a message on its
    /// own after that many receives, without longshore's reason.
    pub fn max_receive_count(mut self, count: u32) -> Self {
        self.max_receive_count = count.max(1);
        self
    }

    /// The endpoint, instead of `AWS_ENDPOINT_URL` (LocalStack: `http://127.0.0.1:4566`).
    pub fn endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.overrides.endpoint_url = Some(url.into());
        self
    }

    /// The region, instead of `AWS_REGION` or the profile's.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.overrides.region = Some(region.into());
        self
    }

    /// Static credentials, instead of the AWS chain (for LocalStack; the secret is never
    /// shown in `Debug` output or logs).
    pub fn static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.overrides.credentials = Some((
            access_key_id.into(),
            longshore_core::spi::Secret::new(secret_access_key),
        ));
        self
    }

    /// Loads the AWS configuration and makes the client.
    pub async fn connect(self) -> Result<SqsBroker, BrokerError> {
        let client = client::client(&self.url, &self.overrides).await?;
        Ok(SqsBroker {
            inner: Arc::new(Inner {
                client,
                max_receive_count: self.max_receive_count,
                queues: Mutex::default(),
                lease_urls: Mutex::default(),
            }),
        })
    }
}

/// An Amazon SQS broker (or LocalStack). Cheap to clone.
#[derive(Clone)]
pub struct SqsBroker {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    max_receive_count: u32,
    /// What is known of each queue used so far.
    queues: Mutex<HashMap<QueueName, Arc<QueueCtx>>>,
    /// The URLs of schedule lease queues, once created.
    lease_urls: Mutex<HashMap<QueueName, String>>,
}

impl std::fmt::Debug for SqsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBroker").finish_non_exhaustive()
    }
}

impl SqsBroker {
    /// A builder: `url` is `sqs://`, or a queue URL whose host names the region.
    pub fn builder(url: impl Into<BrokerUrl>) -> SqsBrokerBuilder {
        SqsBrokerBuilder {
            url: url.into(),
            max_receive_count: 10,
            overrides: client::Overrides::default(),
        }
    }

    /// Connects with default settings.
    pub async fn connect(url: impl Into<BrokerUrl>) -> Result<Self, BrokerError> {
        Self::builder(url).connect().await
    }

    fn known(&self, queue: &QueueName) -> Option<Arc<QueueCtx>> {
        self.inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
            .cloned()
    }

    fn remember(&self, queue: &QueueName, info: topology::QueueInfo) -> Arc<QueueCtx> {
        let ctx = Arc::new(QueueCtx::new(
            queue.clone(),
            self.inner.client.clone(),
            info,
        ));
        self.inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.clone(), Arc::clone(&ctx));
        ctx
    }

    async fn ctx(&self, queue: &QueueName) -> Result<Arc<QueueCtx>, BrokerError> {
        if let Some(ctx) = self.known(queue) {
            return Ok(ctx);
        }
        let info = topology::inspect(&self.inner.client, queue, false).await?;
        Ok(self.remember(queue, info))
    }
}

#[async_trait]
impl Broker for SqsBroker {
    fn system(&self) -> &'static str {
        "aws_sqs"
    }

    async fn declare(&self, queue: &QueueName, options: &QueueOptions) -> Result<(), BrokerError> {
        let info = topology::declare(
            &self.inner.client,
            queue,
            options,
            self.inner.max_receive_count,
        )
        .await?;
        self.remember(queue, info);
        Ok(())
    }

    async fn verify(&self, queue: &QueueName) -> Result<(), BrokerError> {
        let info = topology::inspect(&self.inner.client, queue, true).await?;
        self.remember(queue, info);
        Ok(())
    }

    async fn publish(&self, queue: &QueueName, message: Message) -> Result<(), BrokerError> {
        let ctx = self.ctx(queue).await?;
        ctx.publish(&message).await
    }

    async fn consume(
        &self,
        queue: &QueueName,
        options: &ConsumeOptions,
    ) -> Result<DeliveryStream, BrokerError> {
        let ctx = self.ctx(queue).await?;
        Ok(consume::consume(ctx, options))
    }

    async fn delete(&self, queue: &QueueName) -> Result<(), BrokerError> {
        let ctx = match self.ctx(queue).await {
            Ok(ctx) => ctx,
            Err(BrokerError::QueueNotFound { .. }) => return Ok(()),
            Err(other) => return Err(other),
        };
        self.inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(queue);
        topology::delete(&self.inner.client, queue, &ctx.info.url).await?;
        // Only the dead-letter queue longshore would have declared: a user's redrive target
        // may serve other queues.
        if let Some((dlq, url)) = &ctx.info.dead_letter
            && dlq.as_str() == topology::dead_letter_name(&client::name_of(queue))
        {
            topology::delete(&self.inner.client, dlq, url).await?;
        }
        Ok(())
    }

    fn dead_letter_queue(&self, queue: &QueueName) -> QueueName {
        self.known(queue)
            .and_then(|ctx| ctx.info.dead_letter.as_ref().map(|(dlq, _)| dlq.clone()))
            .unwrap_or_else(|| QueueName::new(topology::dead_letter_name(&client::name_of(queue))))
    }

    fn max_receive_count(&self, queue: &QueueName) -> Option<u32> {
        self.known(queue).and_then(|ctx| ctx.info.max_receive_count)
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats, BrokerError> {
        let ctx = self.ctx(queue).await?;
        topology::stats(&self.inner.client, queue, &ctx.info).await
    }

    fn schedules(&self) -> Option<&dyn ScheduleStore> {
        Some(self)
    }

    fn dead_letters(&self) -> Option<&dyn DeadLetters> {
        Some(self)
    }

    async fn list_queues(&self) -> Result<Option<Vec<QueueName>>, BrokerError> {
        topology::list(&self.inner.client).await.map(Some)
    }

    async fn inspect(&self, queue: &QueueName) -> Result<QueueFacts, BrokerError> {
        let info = topology::inspect(&self.inner.client, queue, false).await?;
        let dead_letters = match &info.dead_letter {
            Some((dlq, _)) => DeadLetterTarget::Queue(dlq.clone()),
            None => DeadLetterTarget::Missing("it has no redrive policy".into()),
        };
        let mut facts = QueueFacts::default();
        facts.max_receive_count = info.max_receive_count;
        facts.visibility_timeout = Some(info.visibility);
        facts.dead_letters = dead_letters;
        self.remember(queue, info);
        Ok(facts)
    }

    fn is_connected(&self) -> bool {
        self.inner
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .all(|ctx| ctx.reachable.load(std::sync::atomic::Ordering::Relaxed))
    }
}

#[async_trait]
impl ScheduleStore for SqsBroker {
    async fn lease(
        &self,
        key: &ScheduleKey,
    ) -> Result<Option<Box<dyn ScheduleLease>>, BrokerError> {
        schedule::take(self, key).await
    }

    async fn delete(&self, key: &ScheduleKey) -> Result<(), BrokerError> {
        schedule::delete(self, key).await
    }

    async fn list(&self, queue: &QueueName) -> Result<Vec<ScheduleInfo>, BrokerError> {
        schedule::list(self, queue).await
    }
}
