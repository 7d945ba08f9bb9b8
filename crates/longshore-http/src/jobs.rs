//! The job-status API for frontends:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /jobs/{id}` | `200` with the status as JSON ([`JobStatus`]); `404` for an id the store never saw; an `ETag` of the sequence number, so `If-None-Match` polls get `304` |
//! | `GET /jobs/{id}/events` | server-sent events from the current state on (`Last-Event-ID` resumes after that sequence number, losing nothing); each event is `event: status`, `id: <seq>`, `data: <status JSON>`; the stream ends after the job finishes |
//! | `POST /jobs/{id}/cancel` | `202` with the status once the cancellation is asked for; `409` with it if the job had finished; `404` |
//!
//! Errors of the store are `503` with `{"error": "..."}`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use longshore_core::MessageId;
use longshore_core::status::{CancelOutcome, JobStatus, JobStatuses, StatusError};
use tokio::sync::broadcast;

/// How often an event stream looks at the store when no notice came (notices are a wake-up,
/// the store is the truth: nothing is lost either way).
const POLL: Duration = Duration::from_secs(1);

/// What the job routes share: the statuses, and the store's notices fanned out to streams.
#[derive(Clone)]
pub(crate) struct Jobs {
    pub(crate) statuses: JobStatuses,
    pub(crate) notices: Arc<Notices>,
}

/// The store's notices, fanned out to every open event stream by one subscription.
pub(crate) struct Notices {
    sender: broadcast::Sender<MessageId>,
}

impl Notices {
    /// Starts the subscription (re-made after the store's notices break off).
    pub(crate) fn start(statuses: &JobStatuses) -> Arc<Self> {
        let (sender, _) = broadcast::channel(1024);
        let notices = Arc::new(Self { sender });
        let weak = Arc::downgrade(&notices);
        let statuses = statuses.clone();
        tokio::spawn(async move {
            loop {
                match statuses.store().notices().await {
                    Ok(mut stream) => {
                        while let Some(notice) = stream.next().await {
                            let Some(notices) = weak.upgrade() else {
                                return;
                            };
                            let _ = notices.sender.send(notice.id);
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "job status notices unavailable; event streams poll")
                    }
                }
                if weak.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        });
        notices
    }
}

fn error_response(error: &StatusError) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": error.to_string() })),
    )
        .into_response()
}

fn not_found(id: &MessageId) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": format!("no job `{id}` is known (never enqueued with a status, or expired)") })),
    )
        .into_response()
}

fn etag(status: &JobStatus) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", status.seq))
        .unwrap_or(HeaderValue::from_static("\"0\""))
}

/// `GET /jobs/{id}`.
pub(crate) async fn get(
    State(jobs): State<Jobs>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id = MessageId::from(id);
    match jobs.statuses.get(&id).await {
        Ok(Some(status)) => {
            let tag = etag(&status);
            if headers.get(header::IF_NONE_MATCH) == Some(&tag) {
                return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
            }
            (
                [
                    (header::ETAG, tag),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                Json(status),
            )
                .into_response()
        }
        Ok(None) => not_found(&id),
        Err(error) => error_response(&error),
    }
}

/// `POST /jobs/{id}/cancel`.
pub(crate) async fn cancel(State(jobs): State<Jobs>, Path(id): Path<String>) -> Response {
    let id = MessageId::from(id);
    match jobs.statuses.cancel(&id).await {
        Ok(CancelOutcome::Requested(status)) => {
            (StatusCode::ACCEPTED, Json(status)).into_response()
        }
        Ok(CancelOutcome::Finished(status)) => (StatusCode::CONFLICT, Json(status)).into_response(),
        Ok(CancelOutcome::NotFound) => not_found(&id),
        Err(error) => error_response(&error),
    }
}

fn event(status: &JobStatus) -> Event {
    Event::default()
        .event("status")
        .id(status.seq.to_string())
        .json_data(status)
        .unwrap_or_else(|_| Event::default().comment("unencodable status"))
}

/// `GET /jobs/{id}/events`.
pub(crate) async fn events(
    State(jobs): State<Jobs>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id = MessageId::from(id);
    let resume_after = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    // Subscribe first, then read: a change between the two is not missed.
    let wake = jobs.notices.sender.subscribe();
    let current = match jobs.statuses.get(&id).await {
        Ok(Some(status)) => status,
        Ok(None) => return not_found(&id),
        Err(error) => return error_response(&error),
    };
    let stream = status_stream(jobs.statuses, id, current, resume_after, wake);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The events of one job: from `current` (or after `resume_after`), then each change, until
/// the job has finished.
fn status_stream(
    statuses: JobStatuses,
    id: MessageId,
    current: JobStatus,
    resume_after: Option<u64>,
    wake: broadcast::Receiver<MessageId>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct Follow {
        statuses: JobStatuses,
        id: MessageId,
        sent: u64,
        pending: std::collections::VecDeque<JobStatus>,
        finished: bool,
        wake: broadcast::Receiver<MessageId>,
        first: Option<(JobStatus, Option<u64>)>,
    }
    let follow = Follow {
        statuses,
        id,
        sent: 0,
        pending: std::collections::VecDeque::new(),
        finished: false,
        wake,
        first: Some((current, resume_after)),
    };
    futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            if let Some((current, resume_after)) = f.first.take() {
                match resume_after {
                    // A fresh stream starts from the current state.
                    None => f.pending.push_back(current),
                    Some(after) => {
                        f.sent = after;
                        f.pending
                            .extend(f.statuses.events(&f.id, after).await.unwrap_or_default());
                        if f.pending.is_empty() && current.seq > after {
                            f.pending.push_back(current);
                        }
                    }
                }
            }
            if let Some(status) = f.pending.pop_front() {
                if status.seq <= f.sent {
                    continue;
                }
                f.sent = status.seq;
                f.finished = status.state.is_finished();
                return Some((Ok(event(&status)), f));
            }
            if f.finished {
                return None;
            }
            // Wait for a notice about this job, or poll.
            let deadline = tokio::time::Instant::now() + POLL;
            loop {
                match tokio::time::timeout_at(deadline, f.wake.recv()).await {
                    Ok(Ok(id)) if id == f.id => break,
                    Ok(Ok(_)) => continue,
                    Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                }
            }
            match f.statuses.events(&f.id, f.sent).await {
                Ok(events) => f.pending.extend(events),
                Err(error) => tracing::debug!(%error, "reading job events failed; trying again"),
            }
        }
    })
}
