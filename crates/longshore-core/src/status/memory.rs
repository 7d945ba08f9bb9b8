//! [`MemoryStatusStore`]: job statuses in the process, for the embedded broker and tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::broadcast;

use super::{Change, Created, JobStatus, Notice, StatusError, StatusStore};
use crate::names::{MessageId, QueueName};

/// Job statuses kept in memory: what the quickstart uses. Cloning gives another handle to
/// the same statuses. Expired statuses are dropped when met and by
/// [`purge_expired`](StatusStore::purge_expired).
#[derive(Clone)]
pub struct MemoryStatusStore {
    inner: Arc<Mutex<State>>,
    notices: broadcast::Sender<Notice>,
    cancels: broadcast::Sender<Notice>,
}

impl Default for MemoryStatusStore {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            notices: broadcast::channel(4096).0,
            cancels: broadcast::channel(1024).0,
        }
    }
}

impl std::fmt::Debug for MemoryStatusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStatusStore").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    jobs: HashMap<MessageId, Entry>,
    /// Unique key → the unfinished job that holds it.
    unique: HashMap<String, MessageId>,
}

struct Entry {
    /// Every version, oldest first; the last is the current status.
    events: Vec<JobStatus>,
}

impl Entry {
    fn current(&self) -> &JobStatus {
        self.events.last().expect("an entry has its first event")
    }
}

impl State {
    /// The live entry of `id`, dropping it if it expired.
    fn live(&mut self, id: &MessageId, now: SystemTime) -> Option<&mut Entry> {
        let expired = self.jobs.get(id)?.current().expires_at <= now;
        if expired {
            self.forget(id);
            return None;
        }
        self.jobs.get_mut(id)
    }

    fn forget(&mut self, id: &MessageId) {
        if let Some(entry) = self.jobs.remove(id)
            && let Some(key) = &entry.current().unique_key
            && self.unique.get(key) == Some(id)
        {
            self.unique.remove(key);
        }
    }
}

impl MemoryStatusStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A broadcast receiver as a stream. A receiver that lagged has missed notices: its stream
/// ends, so its owner subscribes again and re-reads what it needs.
fn follow(receiver: broadcast::Receiver<Notice>) -> BoxStream<'static, Notice> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.ok().map(|notice| (notice, receiver))
    })
    .boxed()
}

fn store_error(error: impl std::error::Error + Send + Sync + 'static) -> StatusError {
    StatusError::Store(Box::new(error))
}

#[async_trait]
impl StatusStore for MemoryStatusStore {
    async fn create(&self, status: &JobStatus) -> Result<Created, StatusError> {
        let mut state = self.lock();
        let now = SystemTime::now();
        if let Some(key) = &status.unique_key
            && let Some(holder) = state.unique.get(key).cloned()
        {
            match state.live(&holder, now) {
                Some(entry) if !entry.current().state.is_finished() => {
                    return Ok(Created::Existing(holder));
                }
                _ => {
                    state.unique.remove(key);
                }
            }
        }
        if let Some(key) = &status.unique_key {
            state.unique.insert(key.clone(), status.id.clone());
        }
        state.jobs.insert(
            status.id.clone(),
            Entry {
                events: vec![status.clone()],
            },
        );
        drop(state);
        let _ = self.notices.send(Notice {
            id: status.id.clone(),
            seq: status.seq,
            cancel_requested: false,
        });
        Ok(Created::New)
    }

    async fn remove(&self, id: &MessageId) -> Result<(), StatusError> {
        self.lock().forget(id);
        Ok(())
    }

    async fn get(&self, id: &MessageId) -> Result<Option<JobStatus>, StatusError> {
        Ok(self
            .lock()
            .live(id, SystemTime::now())
            .map(|entry| entry.current().clone()))
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), StatusError> {
        let mut notices = Vec::new();
        {
            let mut state = self.lock();
            let now = SystemTime::now();
            for change in super::coalesced(changes).iter() {
                let Some(entry) = state.live(&change.id, now) else {
                    continue;
                };
                let current = entry.current();
                let next = current
                    .merged(&change.patch, current.seq + 1)
                    .map_err(store_error)?;
                let finished = next.state.is_finished();
                notices.push(Notice {
                    id: next.id.clone(),
                    seq: next.seq,
                    cancel_requested: next.cancel_requested && !finished,
                });
                let key = next.unique_key.clone();
                entry.events.push(next);
                if finished
                    && let Some(key) = key
                    && state.unique.get(&key) == Some(&change.id)
                {
                    state.unique.remove(&key);
                }
            }
        }
        for notice in notices {
            if notice.cancel_requested {
                let _ = self.cancels.send(notice.clone());
            }
            if self.notices.receiver_count() > 0 {
                let _ = self.notices.send(notice);
            }
        }
        Ok(())
    }

    async fn events(&self, id: &MessageId, after: u64) -> Result<Vec<JobStatus>, StatusError> {
        Ok(self
            .lock()
            .live(id, SystemTime::now())
            .map(|entry| {
                entry
                    .events
                    .iter()
                    .filter(|event| event.seq > after)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn cancel_requested(&self, queue: &QueueName) -> Result<Vec<MessageId>, StatusError> {
        let now = SystemTime::now();
        Ok(self
            .lock()
            .jobs
            .values()
            .map(Entry::current)
            .filter(|s| {
                &s.queue == queue
                    && s.cancel_requested
                    && !s.state.is_finished()
                    && s.expires_at > now
            })
            .map(|s| s.id.clone())
            .collect())
    }

    async fn notices(&self) -> Result<BoxStream<'static, Notice>, StatusError> {
        Ok(follow(self.notices.subscribe()))
    }

    async fn cancel_notices(&self) -> Result<BoxStream<'static, Notice>, StatusError> {
        Ok(follow(self.cancels.subscribe()))
    }

    async fn purge_expired(&self) -> Result<u64, StatusError> {
        let mut state = self.lock();
        let now = SystemTime::now();
        let expired: Vec<MessageId> = state
            .jobs
            .iter()
            .filter(|(_, entry)| entry.current().expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            state.forget(id);
        }
        Ok(expired.len() as u64)
    }
}
