//! Job status for frontends: what a web page wiring a progress bar asks about a job.
//!
//! A producer with a status store ([`Producer::with_status`](crate::Producer::with_status))
//! writes each job's status **before** publishing it, so an id the store never saw is
//! "not found", never "pending". A worker with the same store
//! ([`WorkerBuilder::status`](crate::WorkerBuilder::status)) moves it: queued → running
//! (attempt, worker, started at) → retrying (attempt, error, next try at) → succeeded (with
//! an optional small JSON result) / dead-lettered (reason) / cancelled. Handlers report
//! progress through their context ([`JobContext::progress`](crate::JobContext::progress)),
//! throttled. Every change has an increasing sequence number and is kept as an event, so a
//! stream of changes can resume where it stopped (`longshore-http` serves it as server-sent
//! events).
//!
//! Only jobs registered by a producer with a store are tracked (their messages carry the
//! `longshore-status` header); a worker pays nothing for the others.
//!
//! The store is never in a job's critical path for correctness: the worker writes status
//! through a background writer that batches changes and retries them while the store is
//! down (logging, and at worst dropping changes when its buffer is full); the job runs and
//! settles either way.
//!
//! | operation | memory | PostgreSQL | Redis |
//! | --- | --- | --- | --- |
//! | a change | in the map | `longshore_apply(..)`: one call per batch | one Lua script per batch |
//! | notices (SSE) | a broadcast | `LISTEN longshore_status` | `SUBSCRIBE <prefix>notices` |
//! | cancellation notices (workers) | a broadcast | `LISTEN longshore_cancel` | `SUBSCRIBE <prefix>cancel-notices` |
//! | expiry | on read and write | periodic `DELETE` | key TTLs |
//!
//! Statuses are kept for a retention period after a job finishes (default a day), and an
//! unfinished job is kept until a week after it is due, so a delayed job never expires
//! before it runs.

mod memory;
mod model;
pub(crate) mod tracking;
pub(crate) mod writer;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::broker::BoxError;
use crate::names::{MessageId, QueueName};

pub use memory::MemoryStatusStore;
pub use model::{Change, JobState, JobStatus, Progress, coalesce, coalesced, patch};
use writer::Writer;

/// What went wrong with a status store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    /// The store did not answer or refused the operation.
    #[error("the job status store failed: {0}")]
    Store(#[source] BoxError),
    /// A result too large to keep.
    #[error(
        "the job's result is {size} bytes of JSON; the status store keeps at most {limit}: \
         keep large results elsewhere and return a reference"
    )]
    ResultTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// What [`StatusStore::create`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    /// The status was created.
    New,
    /// An unfinished job holds the same unique key: nothing was created.
    Existing(MessageId),
}

/// One change as a store reports it: which job, its new sequence number, and whether a
/// cancellation of it was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The job.
    pub id: MessageId,
    /// The sequence number of its change.
    pub seq: u64,
    /// Whether its cancellation was asked for (and it is not finished).
    pub cancel_requested: bool,
}

/// Where job statuses are kept: the storage operations a backend (memory, PostgreSQL,
/// Redis) provides. The state machine lives in [`Change`]s; a store only merges them.
#[async_trait]
pub trait StatusStore: Send + Sync + 'static {
    /// Creates the status of a job about to be enqueued (its first event, `seq` 1). With a
    /// unique key that an unfinished job holds, creates nothing and names that job.
    async fn create(&self, status: &JobStatus) -> Result<Created, StatusError>;

    /// Removes a status (an enqueue whose publish failed after its status was written).
    async fn remove(&self, id: &MessageId) -> Result<(), StatusError>;

    /// The current status of a job; `None` for an id the store does not know (or no
    /// longer keeps).
    async fn get(&self, id: &MessageId) -> Result<Option<JobStatus>, StatusError>;

    /// Applies changes in order, each job's atomically: merges its patch into the job's
    /// status, gives it the next sequence number, keeps it as an event, moves the expiry,
    /// frees the unique key of a job that finished, and notifies. Several changes of one job
    /// are written as one, as [`coalesce`] folds them (the store writers batch, so this is
    /// what a fast job's `running` and `succeeded` cost under load). Changes to unknown jobs
    /// are skipped.
    async fn apply(&self, changes: &[Change]) -> Result<(), StatusError>;

    /// The events of a job after sequence number `after`, oldest first: each is the job's
    /// status right after that change.
    async fn events(&self, id: &MessageId, after: u64) -> Result<Vec<JobStatus>, StatusError>;

    /// Unfinished jobs of `queue` whose cancellation was asked for: a worker reads them when
    /// it starts, and when its notices resume after an outage.
    async fn cancel_requested(&self, queue: &QueueName) -> Result<Vec<MessageId>, StatusError>;

    /// Every change from now on, as it happens.
    async fn notices(&self) -> Result<BoxStream<'static, Notice>, StatusError>;

    /// The notices of cancellation requests from now on (those with `cancel_requested`):
    /// what workers watch, so they do not read every change. By default [`notices`]
    /// filtered; stores give them a channel of their own.
    ///
    /// [`notices`]: StatusStore::notices
    async fn cancel_notices(&self) -> Result<BoxStream<'static, Notice>, StatusError> {
        use futures_util::StreamExt;
        Ok(self
            .notices()
            .await?
            .filter(|notice| std::future::ready(notice.cancel_requested))
            .boxed())
    }

    /// Deletes what has expired; returns how many jobs. A no-op where the store expires
    /// entries itself (Redis). Called every minute by workers.
    async fn purge_expired(&self) -> Result<u64, StatusError>;
}

/// The largest result kept by default: 64 KiB of JSON.
pub const DEFAULT_RESULT_LIMIT: usize = 64 * 1024;

/// Job statuses in a store, with the writer workers send changes through and the retention
/// settings. Cheap to clone; share one per process and store.
#[derive(Clone)]
pub struct JobStatuses {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn StatusStore>,
    writer: Writer,
    /// Until when enqueues skip the store after it failed them (so a store that is down
    /// does not hold every enqueue up).
    down_until: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
    retention: Duration,
    pending_retention: Duration,
    result_limit: usize,
}

impl std::fmt::Debug for JobStatuses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobStatuses")
            .field("retention", &self.inner.retention)
            .finish_non_exhaustive()
    }
}

/// How [`JobStatuses::cancel`] went.
#[derive(Clone, Debug, PartialEq)]
pub enum CancelOutcome {
    /// Asked for: a queued job is skipped when it arrives, a running one's
    /// `JobContext::cancelled()` fires. The status right after the request (which a worker
    /// may have carried out already).
    Requested(JobStatus),
    /// The job had finished before the request: nothing changed.
    Finished(JobStatus),
    /// No such job.
    NotFound,
}

impl JobStatuses {
    /// Statuses in `store`: finished jobs kept a day, unfinished ones a week past due,
    /// results up to 64 KiB.
    pub fn new(store: impl StatusStore) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// Statuses in a shared store.
    pub fn from_arc(store: Arc<dyn StatusStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                writer: Writer::new(Arc::clone(&store)),
                down_until: Arc::default(),
                store,
                retention: Duration::from_secs(86_400),
                pending_retention: Duration::from_secs(7 * 86_400),
                result_limit: DEFAULT_RESULT_LIMIT,
            }),
        }
    }

    fn with(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            store: Arc::clone(&shared.store),
            writer: shared.writer.clone(),
            down_until: Arc::clone(&shared.down_until),
            retention: shared.retention,
            pending_retention: shared.pending_retention,
            result_limit: shared.result_limit,
        });
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// How long a finished job's status is kept. Default: a day.
    pub fn retention(self, retention: Duration) -> Self {
        self.with(|inner| inner.retention = retention)
    }

    /// How long an unfinished job's status is kept past its due time (a job nobody runs).
    /// Default: a week.
    pub fn pending_retention(self, retention: Duration) -> Self {
        self.with(|inner| inner.pending_retention = retention)
    }

    /// The largest JSON result a job may leave. Default: 64 KiB.
    pub fn result_limit(self, bytes: usize) -> Self {
        self.with(|inner| inner.result_limit = bytes)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn StatusStore> {
        &self.inner.store
    }

    /// When a status in `state`, due at `due`, expires if nothing changes it again.
    pub(crate) fn expiry(&self, state: JobState, due: Option<SystemTime>) -> SystemTime {
        let now = SystemTime::now();
        if state.is_finished() {
            now + self.inner.retention
        } else {
            due.unwrap_or(now).max(now) + self.inner.pending_retention.max(self.inner.retention)
        }
    }

    pub(crate) fn result_limit_bytes(&self) -> usize {
        self.inner.result_limit
    }

    /// The current status of job `id`; `None` if the store never saw it (or no longer keeps
    /// it): never "pending" for an unknown id.
    pub async fn get(&self, id: &MessageId) -> Result<Option<JobStatus>, StatusError> {
        self.inner.store.get(id).await
    }

    /// The job's changes after sequence number `after`, oldest first.
    pub async fn events(&self, id: &MessageId, after: u64) -> Result<Vec<JobStatus>, StatusError> {
        self.inner.store.events(id, after).await
    }

    /// Asks for a job's cancellation: a queued or delayed job is skipped (acked, status
    /// cancelled) when it arrives; a running job's `JobContext::cancelled()` fires within a
    /// second, and if it then fails it is not retried.
    pub async fn cancel(&self, id: &MessageId) -> Result<CancelOutcome, StatusError> {
        let Some(status) = self.get(id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        if status.state.is_finished() {
            return Ok(CancelOutcome::Finished(status));
        }
        let change = Change::new(
            id.clone(),
            patch::cancel_requested(),
            self.expiry(status.state, status.due_at),
        );
        self.inner
            .store
            .apply(std::slice::from_ref(&change))
            .await?;
        // A worker may have carried the request out already: it is still this request.
        Ok(match self.get(id).await? {
            Some(now) => CancelOutcome::Requested(now),
            None => CancelOutcome::NotFound,
        })
    }

    /// Waits until job `id` finishes (or `timeout` passes) and returns its status then;
    /// `None` for an unknown id.
    pub async fn wait(
        &self,
        id: &MessageId,
        timeout: Duration,
    ) -> Result<Option<JobStatus>, StatusError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.get(id).await?;
            match &status {
                Some(now) if !now.state.is_finished() => {}
                _ => return Ok(status),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes the status of a job about to be enqueued. After the store failed, enqueues
    /// skip it for a few seconds (an error at once), so a store that is down costs each
    /// enqueue one quick failure, not a wait.
    pub(crate) async fn create(&self, status: &JobStatus) -> Result<Created, StatusError> {
        const SKIP_FOR: Duration = Duration::from_secs(5);
        let now = tokio::time::Instant::now();
        let skipping = *self
            .inner
            .down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if skipping.is_some_and(|until| now < until) {
            return Err(StatusError::Store(
                "the job status store failed moments ago; skipping it for a few seconds".into(),
            ));
        }
        let created = tokio::time::timeout(SKIP_FOR, self.inner.store.create(status))
            .await
            .unwrap_or_else(|_| {
                Err(StatusError::Store(
                    format!("the job status store did not answer within {SKIP_FOR:?}").into(),
                ))
            });
        if created.is_err() {
            let mut down = self
                .inner
                .down_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if down.is_none_or(|until| until <= now) {
                tracing::warn!(
                    "the job status store fails: jobs are enqueued untracked for the next {SKIP_FOR:?}"
                );
            }
            *down = Some(tokio::time::Instant::now() + SKIP_FOR);
        }
        created
    }

    /// Queues a change for the background writer; never waits for the store.
    pub(crate) fn send(&self, change: Change) {
        self.inner.writer.send(change);
    }

    /// Queues a job's `running` change, which waits a little for the job's next one: a job
    /// that ends within 50 ms is written once.
    pub(crate) fn send_running(&self, running: writer::Running) {
        self.inner.writer.send_running(running);
    }

    /// Queues a change and waits until it is written (up to `timeout`; not at all while the
    /// store fails): for the changes a later decision depends on.
    pub(crate) async fn send_confirmed(&self, change: Change, timeout: Duration) -> bool {
        self.inner.writer.send_confirmed(change, timeout).await
    }

    /// Waits until every change queued so far is written (or `timeout` passes); `false` if
    /// some are still pending (the store is down).
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.inner.writer.flush(timeout).await
    }
}
