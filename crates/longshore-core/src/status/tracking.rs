//! What a worker keeps for tracked jobs: each running job's handle (progress, result, its
//! own cancellation), and the jobs whose cancellation was asked for, fed by the store's
//! notices.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Change, JobState, JobStatuses, Notice, Progress, StatusError, patch};
use crate::names::{MessageId, QueueName};

/// A tracked job writes progress at most this often; later reports in between are held and
/// the latest is written when the interval ends.
pub(crate) const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The status side of one tracked job's attempt; in its [`JobContext`](crate::JobContext).
pub(crate) struct Tracked {
    pub(crate) statuses: JobStatuses,
    pub(crate) id: MessageId,
    /// Cancelled when the job's cancellation is asked for while it runs.
    pub(crate) cancel: CancellationToken,
    state: Mutex<TrackState>,
}

#[derive(Default)]
struct TrackState {
    last_written: Option<Instant>,
    /// A report held back by the throttle, and whether a write of it is scheduled.
    held: Option<Progress>,
    scheduled: bool,
    result: Option<Value>,
}

impl Tracked {
    pub(crate) fn new(statuses: JobStatuses, id: MessageId) -> Self {
        Self {
            statuses,
            id,
            cancel: CancellationToken::new(),
            state: Mutex::default(),
        }
    }

    fn write_progress(&self, progress: &Progress) {
        let expires = self.statuses.expiry(JobState::Running, None);
        self.statuses.send(Change::new(
            self.id.clone(),
            patch::progress(progress),
            expires,
        ));
    }

    /// Reports progress, throttled to one write per [`PROGRESS_EVERY`].
    pub(crate) fn progress(self: &Arc<Self>, progress: Progress) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let due = state.last_written.map(|at| at + PROGRESS_EVERY);
        if due.is_none_or(|due| now >= due) {
            state.last_written = Some(now);
            state.held = None;
            drop(state);
            self.write_progress(&progress);
            return;
        }
        state.held = Some(progress);
        if state.scheduled {
            return;
        }
        state.scheduled = true;
        let tracked = Arc::clone(self);
        let due = due.unwrap_or(now);
        tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let held = {
                let mut state = tracked.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.scheduled = false;
                state.last_written = Some(Instant::now());
                state.held.take()
            };
            if let Some(progress) = held {
                tracked.write_progress(&progress);
            }
        });
    }

    /// Keeps the job's result, refusing one larger than the statuses' limit.
    pub(crate) fn set_result(&self, result: Value) -> Result<(), StatusError> {
        let size = serde_json::to_vec(&result).map_or(usize::MAX, |bytes| bytes.len());
        let limit = self.statuses.result_limit_bytes();
        if size > limit {
            return Err(StatusError::ResultTooLarge { size, limit });
        }
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .result = Some(result);
        Ok(())
    }

    /// What the attempt's last change carries: its result, and a progress report the
    /// throttle still held (so the final status shows the last report).
    pub(crate) fn finish(&self) -> (Option<Value>, Option<Progress>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.result.take(), state.held.take())
    }
}

/// Cancellation requests a worker knows of, at most this many beyond running jobs.
const REMEMBERED: usize = 100_000;

/// One worker's view of cancellation requests: the tokens of its running tracked jobs,
/// and ids whose cancellation was asked for (so a job is skipped when it arrives).
#[derive(Default)]
pub(crate) struct Cancels {
    running: Mutex<HashMap<MessageId, CancellationToken>>,
    requested: Mutex<Requested>,
}

#[derive(Default)]
struct Requested {
    ids: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

impl Cancels {
    /// Registers a running job's token; cancels it at once if its cancellation was asked
    /// for already.
    pub(crate) fn register(&self, id: &MessageId, token: &CancellationToken) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), token.clone());
        if self.is_requested(id) {
            token.cancel();
        }
    }

    /// The ids of the tracked jobs running now.
    pub(crate) fn running_ids(&self) -> Vec<MessageId> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    pub(crate) fn unregister(&self, id: &MessageId) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Whether `id`'s cancellation was asked for.
    pub(crate) fn is_requested(&self, id: &MessageId) -> bool {
        self.requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .contains(id)
    }

    /// Forgets a request that was carried out.
    pub(crate) fn forget(&self, id: &MessageId) {
        self.requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .ids
            .remove(id);
    }

    /// Notes a request: a running job is cancelled now, a later one skipped on arrival.
    pub(crate) fn request(&self, id: MessageId) {
        if let Some(token) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
        {
            token.cancel();
        }
        let mut requested = self
            .requested
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if requested.ids.insert(id.clone()) {
            requested.order.push_back(id);
            while requested.order.len() > REMEMBERED {
                if let Some(old) = requested.order.pop_front() {
                    requested.ids.remove(&old);
                }
            }
        }
    }
}

/// Subscribes to the store's notices, then reads the requests open now into `cancels`
/// (in that order, so no request falls between the two).
pub(crate) async fn subscribe(
    statuses: &JobStatuses,
    queue: &QueueName,
    cancels: &Cancels,
) -> Result<BoxStream<'static, Notice>, StatusError> {
    let store = statuses.store();
    let notices = store.cancel_notices().await?;
    for id in store.cancel_requested(queue).await? {
        cancels.request(id);
    }
    Ok(notices)
}

/// Keeps `cancels` up to date for `queue` until `stop`, from `first` (a subscription made
/// before the worker consumed, if it could be): every notice of a new request; after the
/// notices break off (the store was down), subscribes and reads the open requests again.
pub(crate) async fn watch(
    statuses: JobStatuses,
    queue: QueueName,
    cancels: Arc<Cancels>,
    stop: CancellationToken,
    first: Option<BoxStream<'static, Notice>>,
) {
    let mut wait = Duration::from_millis(200);
    let mut next = first;
    while !stop.is_cancelled() {
        let notices = match next.take() {
            Some(notices) => Ok(notices),
            None => tokio::select! {
                () = stop.cancelled() => return,
                subscribed = subscribe(&statuses, &queue, &cancels) => subscribed,
            },
        };
        match notices {
            Ok(mut notices) => {
                wait = Duration::from_millis(200);
                loop {
                    let notice = tokio::select! {
                        () = stop.cancelled() => return,
                        notice = notices.next() => notice,
                    };
                    match notice {
                        Some(notice) if notice.cancel_requested => cancels.request(notice.id),
                        Some(_) => {}
                        None => break,
                    }
                }
                tracing::debug!(%queue, "job status notices ended; subscribing again");
            }
            Err(error) => {
                tracing::warn!(%queue, %error, "cannot watch for job cancellations; trying again");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(10));
            }
        }
    }
}
