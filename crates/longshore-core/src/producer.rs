//! [`Producer`]: enqueue jobs, with delays and extra headers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::Instrument;

use crate::broker::IntoBroker;
use crate::broker::{Broker, BrokerError};
use crate::job::Job;
use crate::message::{Headers, Message, headers};
use crate::names::{MessageId, QueueName};
use crate::telemetry::Telemetry;

/// The PRODUCER span of one publish: `send <queue>`, with the messaging attributes.
fn send_span(system: &'static str, queue: &QueueName, message: &Message) -> tracing::Span {
    tracing::info_span!(
        "send",
        otel.name = %format_args!("send {queue}"),
        otel.kind = "producer",
        otel.status_description = tracing::field::Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.destination.name = %queue,
        messaging.message.id = %message.id,
        messaging.message.body.size = message.body.len(),
        longshore.job.name = %message.job,
    )
}

/// Publishes `message` with `send` inside its PRODUCER span, the span's trace context
/// injected into the message headers first; a failure is recorded on the span. Every
/// publish of a new job goes through here: enqueues and schedule ticks.
pub(crate) async fn send_traced<F, Fut>(
    system: &'static str,
    telemetry: Option<&dyn Telemetry>,
    queue: &QueueName,
    mut message: Message,
    send: F,
) -> Result<(), BrokerError>
where
    F: FnOnce(Message) -> Fut,
    Fut: Future<Output = Result<(), BrokerError>>,
{
    let span = send_span(system, queue, &message);
    if let Some(telemetry) = telemetry {
        telemetry.inject(&span, &mut message.headers);
    }
    let published = send(message).instrument(span.clone()).await;
    if let Err(error) = &published {
        span.record("otel.status_description", error.to_string());
    }
    published
}

/// Enqueues jobs on one queue of a broker. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    broker: Arc<dyn Broker>,
    queue: QueueName,
    telemetry: Option<Arc<dyn Telemetry>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("system", &self.broker.system())
            .field("queue", &self.queue)
            .finish()
    }
}

/// Options for one enqueue.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct EnqueueOptions {
    /// Do not run the job before this much time has passed.
    pub delay: Option<Duration>,
    /// Extra headers (AMQP headers, SQS attributes); names starting `longshore-` are reserved.
    pub headers: Headers,
    /// The message id; a fresh UUID v7 when `None`.
    pub id: Option<MessageId>,
    /// Ordering group (SQS FIFO `MessageGroupId`; the job name when `None` on a FIFO queue).
    pub group: Option<String>,
    /// Deduplication id (SQS FIFO); the message id when `None`.
    pub deduplication_id: Option<String>,
}

impl EnqueueOptions {
    /// Sets the delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the ordering group (SQS FIFO `MessageGroupId`).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Sets the deduplication id (SQS FIFO `MessageDeduplicationId`).
    pub fn deduplication_id(mut self, id: impl Into<String>) -> Self {
        self.deduplication_id = Some(id.into());
        self
    }

    /// Sets the message id.
    pub fn id(mut self, id: impl Into<MessageId>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// Why a job could not be enqueued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The job did not serialize.
    #[error("job `{job}` could not be encoded as JSON: {source}")]
    Encode {
        /// The job name.
        job: &'static str,
        /// The serde error.
        source: serde_json::Error,
    },
    /// A header name is longshore's own.
    #[error(
        "header `{0}` is reserved for longshore's wire format; pick a name not starting with `longshore-`"
    )]
    ReservedHeader(String),
    /// The broker did not take the message.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Producer {
    /// A producer for `queue` on `broker` (an adapter, or the `Arc<dyn Broker>` that
    /// `longshore::connect` returns).
    pub fn new(broker: impl IntoBroker, queue: impl Into<QueueName>) -> Self {
        Self {
            broker: broker.into_broker(),
            queue: queue.into(),
            telemetry: None,
        }
    }

    /// Propagates traces with `telemetry` (from `longshore::otel::init`): each enqueue's
    /// `send` span becomes the parent of the job's span in the worker.
    pub fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// The queue it publishes to.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// Enqueues `job` to run as soon as a worker is free; returns once the broker has it.
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<MessageId, EnqueueError> {
        self.enqueue_with(job, EnqueueOptions::default()).await
    }

    /// Enqueues `job` to run no sooner than `delay` from now.
    pub async fn enqueue_in<J: Job>(
        &self,
        job: &J,
        delay: Duration,
    ) -> Result<MessageId, EnqueueError> {
        self.enqueue_with(job, EnqueueOptions::default().delay(delay))
            .await
    }

    /// Enqueues `job` to run no sooner than `at` (at once if `at` has passed). The delay is
    /// taken from the clock now, so `at` is honoured to the broker's delay precision.
    pub async fn enqueue_at<J: Job>(
        &self,
        job: &J,
        at: SystemTime,
    ) -> Result<MessageId, EnqueueError> {
        let delay = at.duration_since(SystemTime::now()).unwrap_or_default();
        self.enqueue_in(job, delay).await
    }

    /// Enqueues `job` with options.
    pub async fn enqueue_with<J: Job>(
        &self,
        job: &J,
        options: EnqueueOptions,
    ) -> Result<MessageId, EnqueueError> {
        if let Some(name) = options
            .headers
            .keys()
            .find(|name| headers::is_reserved(name))
        {
            return Err(EnqueueError::ReservedHeader(name.clone()));
        }
        let body = serde_json::to_vec(job).map_err(|source| EnqueueError::Encode {
            job: J::NAME,
            source,
        })?;
        let message = Message {
            id: options.id.unwrap_or_else(MessageId::generate),
            job: J::NAME.into(),
            body,
            headers: options.headers,
            enqueued_at: SystemTime::now(),
            delay: options.delay.filter(|d| !d.is_zero()),
            group: options.group,
            deduplication_id: options.deduplication_id,
        };
        let id = message.id.clone();
        let telemetry = self.telemetry.as_deref();
        send_traced(
            self.broker.system(),
            telemetry,
            &self.queue,
            message,
            |message| self.broker.publish(&self.queue, message),
        )
        .await?;
        Ok(id)
    }
}
