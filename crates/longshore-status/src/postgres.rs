//! [`PostgresStatusStore`]: job statuses in PostgreSQL, on `sqlx` (no macros), with the
//! application's own pool.
//!
//! Schema (created by [`PostgresStatusStore::migrate`], or by hand from
//! [`MIGRATION`]): `longshore_jobs` (one row per job: its status as `jsonb`, and the
//! columns queried: state, sequence number, unique key, cancellation, expiry) with a partial
//! unique index that lets one unfinished job hold a unique key; `longshore_job_events`
//! (every version, by sequence number); the function `longshore_apply` that merges a batch
//! of changes to distinct jobs in one statement and notifies `longshore_status` (every
//! change) and `longshore_cancel` (cancellation requests). Expired statuses
//! are deleted by [`purge_expired`](StatusStore::purge_expired), which workers call every
//! minute.

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use longshore_core::status::{
    Change, Created, JobStatus, Notice, StatusError, StatusStore, coalesced,
};
use longshore_core::{MessageId, QueueName};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::types::Json;

/// The schema, as [`PostgresStatusStore::migrate`] runs it (idempotent).
pub const MIGRATION: &str = include_str!("../migrations/postgres.sql");

/// The channel changes are notified on: one line `<id> <seq> <c|->` per change.
pub const CHANNEL: &str = "longshore_status";
/// The channel cancellation requests are notified on (what workers listen to).
pub const CANCEL_CHANNEL: &str = "longshore_cancel";

/// Job statuses in PostgreSQL. Cheap to clone (the pool is).
#[derive(Clone, Debug)]
pub struct PostgresStatusStore {
    pool: PgPool,
}

fn store_error(error: sqlx::Error) -> StatusError {
    StatusError::Store(Box::new(error))
}

fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

impl PostgresStatusStore {
    /// Uses the application's pool. Run [`migrate`](Self::migrate) once (or the
    /// [`MIGRATION`] by hand) before the first job.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Connects a pool of its own to `url` (`postgres://user@host/db`) and creates the
    /// schema if it is missing.
    pub async fn connect(url: &str) -> Result<Self, StatusError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .acquire_timeout(std::time::Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(|error| {
                StatusError::Store(
                    format!("cannot connect to PostgreSQL for job statuses: {error}").into(),
                )
            })?;
        let store = Self::new(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Like [`connect`](Self::connect), but returns at once even when PostgreSQL is down:
    /// connections open when first needed, and the schema is created in the background as
    /// soon as the server answers (a worker starts while its status store is down; status
    /// writes wait and catch up).
    pub fn connect_lazy(url: &str) -> Result<Self, StatusError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .acquire_timeout(std::time::Duration::from_secs(3))
            .connect_lazy(url)
            .map_err(|error| {
                StatusError::Store(
                    format!("invalid PostgreSQL URL for job statuses: {error}").into(),
                )
            })?;
        let store = Self::new(pool);
        let migrating = store.clone();
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_secs(1);
            while let Err(error) = migrating.migrate().await {
                tracing::warn!(%error, "cannot create the job status schema yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
            }
        });
        Ok(store)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the tables, indexes and function if they are missing; safe to run from
    /// several workers at once (they take turns on an advisory lock).
    pub async fn migrate(&self) -> Result<(), StatusError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("SELECT pg_advisory_xact_lock(7466524368721153)")
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::raw_sql(MIGRATION)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)
    }
}

fn decode(data: Json<JobStatus>) -> JobStatus {
    data.0
}

/// The most bytes of patches sent in one statement. sqlx 0.9 leaves Nagle's algorithm on
/// (launchbadge/sqlx#4335): a statement written as two TLS records waits for the server's
/// delayed ACK (40 ms on Linux). One record holds 16 KiB.
const CHUNK_BYTES: usize = 12 * 1024;
/// The most bytes of notice lines one statement makes (`NOTIFY` payloads end at 8000).
const NOTICE_BYTES: usize = 7000;

/// One statement's share of a batch.
#[derive(Default)]
struct Chunk {
    ids: Vec<String>,
    /// A JSON array of the patches, as text.
    patches: String,
    expires: Vec<f64>,
    notice_bytes: usize,
}

/// Splits distinct jobs' changes into statements small enough for one TLS record and one
/// notice each.
fn chunks(changes: &[Change]) -> Result<Vec<Chunk>, serde_json::Error> {
    let mut chunks = Vec::new();
    let mut chunk = Chunk::default();
    for change in changes {
        let patch = serde_json::to_string(&change.patch)?;
        let line = change.id.as_str().len() + 24;
        if !chunk.ids.is_empty()
            && (chunk.patches.len() + patch.len() > CHUNK_BYTES
                || chunk.notice_bytes + line > NOTICE_BYTES)
        {
            chunks.push(std::mem::take(&mut chunk));
        }
        chunk
            .patches
            .push(if chunk.ids.is_empty() { '[' } else { ',' });
        chunk.patches.push_str(&patch);
        chunk.ids.push(change.id.as_str().to_owned());
        chunk.expires.push(seconds(change.expires_at));
        chunk.notice_bytes += line;
    }
    if !chunk.ids.is_empty() {
        chunks.push(chunk);
    }
    for chunk in &mut chunks {
        chunk.patches.push(']');
    }
    Ok(chunks)
}

#[async_trait]
impl StatusStore for PostgresStatusStore {
    async fn create(&self, status: &JobStatus) -> Result<Created, StatusError> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        if let Some(key) = &status.unique_key {
            // A holder that expired without being purged frees its key.
            sqlx::query("DELETE FROM longshore_jobs WHERE unique_key = $1 AND expires_at <= now()")
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
        }
        let inserted = sqlx::query(
            "INSERT INTO longshore_jobs (id, queue, state, seq, unique_key, data, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7)) ON CONFLICT DO NOTHING",
        )
        .bind(status.id.as_str())
        .bind(status.queue.as_str())
        .bind(status.state.as_str())
        .bind(i64::try_from(status.seq).unwrap_or(i64::MAX))
        .bind(&status.unique_key)
        .bind(Json(status))
        .bind(seconds(status.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if inserted.rows_affected() == 1 {
            sqlx::query("INSERT INTO longshore_job_events (id, seq, data) VALUES ($1, $2, $3)")
                .bind(status.id.as_str())
                .bind(i64::try_from(status.seq).unwrap_or(i64::MAX))
                .bind(Json(status))
                .execute(&mut *tx)
                .await
                .map_err(store_error)?;
            tx.commit().await.map_err(store_error)?;
            return Ok(Created::New);
        }
        // The id exists already (enqueued again under the same id), or the key is held.
        let holder: Option<String> = match &status.unique_key {
            Some(key) => sqlx::query_scalar(
                "SELECT id FROM longshore_jobs
                  WHERE unique_key = $1 AND state IN ('queued', 'running', 'retrying')",
            )
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?,
            None => None,
        };
        tx.commit().await.map_err(store_error)?;
        Ok(match holder {
            Some(holder) if holder != status.id.as_str() => {
                Created::Existing(MessageId::from(holder))
            }
            _ => Created::New,
        })
    }

    async fn remove(&self, id: &MessageId) -> Result<(), StatusError> {
        sqlx::query("DELETE FROM longshore_jobs WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn get(&self, id: &MessageId) -> Result<Option<JobStatus>, StatusError> {
        let data: Option<Json<JobStatus>> = sqlx::query_scalar(
            "SELECT data FROM longshore_jobs WHERE id = $1 AND expires_at > now()",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(data.map(decode))
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), StatusError> {
        let changes = coalesced(changes);
        // Distinct jobs now, so the chunks can go in parallel, each on its own connection.
        let chunks = chunks(&changes).map_err(|e| StatusError::Store(Box::new(e)))?;
        futures_util::future::try_join_all(chunks.into_iter().map(|chunk| async move {
            sqlx::query("SELECT longshore_apply($1, $2::jsonb, $3)")
                .bind(chunk.ids)
                .bind(chunk.patches)
                .bind(chunk.expires)
                .execute(&self.pool)
                .await
                .map_err(store_error)
        }))
        .await?;
        Ok(())
    }

    async fn events(&self, id: &MessageId, after: u64) -> Result<Vec<JobStatus>, StatusError> {
        let rows: Vec<Json<JobStatus>> = sqlx::query_scalar(
            "SELECT e.data FROM longshore_job_events e JOIN longshore_jobs j ON j.id = e.id
              WHERE e.id = $1 AND e.seq > $2 AND j.expires_at > now() ORDER BY e.seq",
        )
        .bind(id.as_str())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows.into_iter().map(decode).collect())
    }

    async fn cancel_requested(&self, queue: &QueueName) -> Result<Vec<MessageId>, StatusError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM longshore_jobs WHERE queue = $1 AND cancel_requested
               AND state IN ('queued', 'running', 'retrying') AND expires_at > now()",
        )
        .bind(queue.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(ids.into_iter().map(MessageId::from).collect())
    }

    async fn notices(&self) -> Result<BoxStream<'static, Notice>, StatusError> {
        self.listen(CHANNEL).await
    }

    async fn cancel_notices(&self) -> Result<BoxStream<'static, Notice>, StatusError> {
        self.listen(CANCEL_CHANNEL).await
    }

    async fn purge_expired(&self) -> Result<u64, StatusError> {
        let deleted = sqlx::query("DELETE FROM longshore_jobs WHERE expires_at <= now()")
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(deleted.rows_affected())
    }
}

impl PostgresStatusStore {
    /// The notices on `channel`, one per line of each notification.
    async fn listen(&self, channel: &str) -> Result<BoxStream<'static, Notice>, StatusError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(store_error)?;
        listener.listen(channel).await.map_err(store_error)?;
        // The stream ends at the first error, so its owner subscribes again and re-reads
        // what it may have missed.
        Ok(listener
            .into_stream()
            .take_while(|item| std::future::ready(item.is_ok()))
            .flat_map(|item| {
                let notices: Vec<Notice> = item
                    .map(|n| n.payload().lines().filter_map(parse_notice).collect())
                    .unwrap_or_default();
                futures_util::stream::iter(notices)
            })
            .boxed())
    }
}

/// `<id> <seq> <c|->`, one line of what `longshore_apply` notifies.
fn parse_notice(payload: &str) -> Option<Notice> {
    let mut parts = payload.rsplitn(3, ' ');
    let flag = parts.next()?;
    let seq = parts.next()?.parse().ok()?;
    let id = parts.next()?;
    Some(Notice {
        id: MessageId::new(id),
        seq,
        cancel_requested: flag == "c",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_ids_with_spaces_and_the_flag() {
        assert_eq!(
            parse_notice("schedule:a b@17 4 c"),
            Some(Notice {
                id: MessageId::new("schedule:a b@17"),
                seq: 4,
                cancel_requested: true
            })
        );
        assert_eq!(parse_notice("nonsense"), None);
    }
}
