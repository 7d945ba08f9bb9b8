//! [`Producer`]: enqueue jobs, with delays and extra headers.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::Instrument;

use crate::broker::IntoBroker;
use crate::broker::{Broker, BrokerError};
use crate::job::Job;
use crate::message::{Headers, Message, headers};
use crate::names::{JobName, MessageId, QueueName};
use crate::status::{Created, JobState, JobStatus, JobStatuses, StatusError};
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
        telemetry.inject(&span, message.headers_mut());
    }
    let published = send(message).instrument(span.clone()).await;
    if let Err(error) = &published {
        span.record("otel.status_description", error.to_string());
    }
    published
}

/// How many enqueues [`Producer::enqueue_many`] keeps on their way at once.
pub const ENQUEUE_WINDOW: usize = 256;

/// Enqueues jobs on one queue of a broker. Cheap to clone.
#[derive(Clone)]
pub struct Producer {
    broker: Arc<dyn Broker>,
    queue: QueueName,
    telemetry: Option<Arc<dyn Telemetry>>,
    statuses: Option<JobStatuses>,
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
    /// A key at most one unfinished job may hold: with a status store, enqueuing again with
    /// the key of a job that has not finished returns that job's id and enqueues nothing.
    pub unique_key: Option<String>,
    /// Enqueued by hand (a tool, an admin): the job's trigger is `Trigger::Manual`.
    pub manual: bool,
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

    /// Marks the job as enqueued by hand (`JobContext::trigger` is `Trigger::Manual`).
    pub fn manual(mut self) -> Self {
        self.manual = true;
        self
    }

    /// Sets the unique key (needs a producer with a status store).
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
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
    /// A unique key needs the status store, and it failed.
    #[error(
        "job `{job}` has a unique key, which the job status store checks, and the store failed: {source}"
    )]
    Status {
        /// The job name.
        job: JobName,
        /// What the store said.
        source: StatusError,
    },
    /// A unique key without a status store to check it in.
    #[error(
        "job `{0}` has a unique key, but the producer has no status store to check it in; \
         add one with `Producer::with_status`"
    )]
    UniqueKeyWithoutStatus(JobName),
}

impl Producer {
    /// A producer for `queue` on `broker` (an adapter, or the `Arc<dyn Broker>` that
    /// `longshore::connect` returns).
    pub fn new(broker: impl IntoBroker, queue: impl Into<QueueName>) -> Self {
        Self {
            broker: broker.into_broker(),
            queue: queue.into(),
            telemetry: None,
            statuses: None,
        }
    }

    /// Writes each job's status to `statuses` before publishing it (see
    /// [`crate::status`]): the id `enqueue` returns can be looked up at once (queued, and
    /// when due), and a worker with the same statuses tracks the job.
    pub fn with_status(mut self, statuses: JobStatuses) -> Self {
        self.statuses = Some(statuses);
        self
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

    /// Enqueues many jobs at once, their publishes pipelined: up to [`ENQUEUE_WINDOW`] are
    /// on their way together (on RabbitMQ their publisher confirms are awaited together),
    /// so a batch is not bound by one round trip per job. Returns once every job has its
    /// answer, in the order given: its id once the broker has it, or why not (a failure of
    /// one does not stop the others).
    pub async fn enqueue_many<'j, J: Job + 'j>(
        &self,
        jobs: impl IntoIterator<Item = &'j J>,
    ) -> Vec<Result<MessageId, EnqueueError>> {
        use futures_util::StreamExt;
        // Encoded first, so the stream owns what it sends (its future stays `Send` for any
        // caller, e.g. inside `tokio::spawn`).
        let bodies: Vec<Result<Vec<u8>, EnqueueError>> = jobs
            .into_iter()
            .map(|job| {
                serde_json::to_vec(job).map_err(|source| EnqueueError::Encode {
                    job: J::NAME,
                    source,
                })
            })
            .collect();
        futures_util::stream::iter(bodies)
            .map(|body| async move {
                self.enqueue_body(JobName::new(J::NAME), body?, EnqueueOptions::default())
                    .await
            })
            .buffered(ENQUEUE_WINDOW)
            .collect()
            .await
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
        let body = serde_json::to_vec(job).map_err(|source| EnqueueError::Encode {
            job: J::NAME,
            source,
        })?;
        self.enqueue_body(JobName::new(J::NAME), body, options)
            .await
    }

    /// Enqueues job `job` by name with a JSON body, as tools do (the `longshore` command, an
    /// admin page): no Rust type is needed here; the worker decodes the body as its
    /// handler's job type (a body that does not fit is dead-lettered saying why).
    pub async fn enqueue_json(
        &self,
        job: impl Into<JobName>,
        body: &serde_json::Value,
        options: EnqueueOptions,
    ) -> Result<MessageId, EnqueueError> {
        let job = job.into();
        let body = serde_json::to_vec(body).map_err(|source| EnqueueError::Encode {
            job: "(json)",
            source,
        })?;
        self.enqueue_body(job, body, options).await
    }

    async fn enqueue_body(
        &self,
        job: JobName,
        body: Vec<u8>,
        options: EnqueueOptions,
    ) -> Result<MessageId, EnqueueError> {
        if let Some(name) = options
            .headers
            .keys()
            .find(|name| headers::is_reserved(name))
        {
            return Err(EnqueueError::ReservedHeader(name.clone()));
        }
        let mut extra = options.headers;
        if options.manual {
            extra.insert(headers::TRIGGER.to_owned(), "manual".to_owned());
        }
        let job_name = job.clone();
        let mut message = Message {
            id: options.id.unwrap_or_else(MessageId::generate),
            job,
            body,
            headers: Arc::new(extra),
            enqueued_at: SystemTime::now(),
            delay: options.delay.filter(|d| !d.is_zero()),
            group: options.group,
            deduplication_id: options.deduplication_id,
        };
        let id = message.id.clone();
        let tracked = match (&self.statuses, options.unique_key) {
            (Some(statuses), unique_key) => {
                match self.register(statuses, &message, unique_key.clone()).await {
                    Ok(Created::New) => {
                        message
                            .headers_mut()
                            .insert(headers::STATUS.to_owned(), "1".to_owned());
                        true
                    }
                    Ok(Created::Existing(existing)) => return Ok(existing),
                    Err(source) if unique_key.is_some() => {
                        return Err(EnqueueError::Status {
                            job: job_name,
                            source,
                        });
                    }
                    Err(error) => {
                        tracing::debug!(%error, message_id = %id, "could not write the job's status; enqueuing it untracked");
                        false
                    }
                }
            }
            (None, Some(_)) => return Err(EnqueueError::UniqueKeyWithoutStatus(job_name)),
            (None, None) => false,
        };
        let telemetry = self.telemetry.as_deref();
        let published = send_traced(
            self.broker.system(),
            telemetry,
            &self.queue,
            message,
            |message| self.broker.publish(&self.queue, message),
        )
        .await;
        if let (Err(_), true, Some(statuses)) = (&published, tracked, &self.statuses)
            && let Err(error) = statuses.store().remove(&id).await
        {
            tracing::warn!(%error, message_id = %id, "the publish failed and its status could not be removed; it stays queued until it expires");
        }
        published?;
        Ok(id)
    }

    /// Writes the status of `message` before it is published.
    async fn register(
        &self,
        statuses: &JobStatuses,
        message: &Message,
        unique_key: Option<String>,
    ) -> Result<Created, StatusError> {
        let due = message.delay.map(|delay| SystemTime::now() + delay);
        let status = JobStatus::queued(
            message.id.clone(),
            message.job.clone(),
            self.queue.clone(),
            due,
            unique_key,
            statuses.expiry(JobState::Queued, due),
        );
        statuses.create(&status).await
    }
}
