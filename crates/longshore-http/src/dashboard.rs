//! The dashboard: a page (HTML with a little hand-written JavaScript, no build step) and
//! the JSON API it reads. Queues with depths and rates, workers with their running jobs'
//! progress, recent failures (give each worker [`Dashboard::failure_hooks`]), dead letters
//! grouped by reason with show and redrive (one, filtered, all), job lookup with its live
//! status, schedules.
//!
//! Read-only unless an admin token is set; actions (`POST`) need the token in the
//! `X-Longshore-Token` header, which a page of another site cannot send (no CORS is
//! offered), and a request whose `Origin` is another host is refused.
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /` | the page |
//! | `GET /api/overview` | queues (depths), workers (busy, capacity, running tracked jobs), recent failures, whether actions are allowed |
//! | `GET /api/queues/{queue}/dead-letters?group_by=reason\|job` | groups and the first 200 dead letters |
//! | `GET /api/queues/{queue}/dead-letters/{id}` | one dead letter: body, headers, reason |
//! | `POST /api/queues/{queue}/redrive` | `{"jobs":[..],"reason_contains":"..","ids":[..],"limit":n,"dry_run":bool}`: moves matching dead letters back |
//! | `POST /api/queues/{queue}/purge` | deletes the dead letters |
//! | `GET /api/queues/{queue}/schedules` | the queue's cron schedules |
//! | `/jobs/...` | the job-status API ([`crate::jobs`]), when statuses are given; cancelling needs the token |

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use longshore_core::dead_letters::{DeadLetter, Filter, GroupBy, Redrive};
use longshore_core::spi::{Headers, JobEvent, Telemetry};
use longshore_core::status::JobStatuses;
use longshore_core::{Broker, Health, IntoBroker, MessageId, Outcome, QueueName};
use serde_json::{Value, json};

/// The most dead letters read for one view.
const READ_AT_MOST: usize = 10_000;
/// Dead letters listed one by one in a view.
const LISTED: usize = 200;

/// Failed attempts kept for the page.
const RECENT_FAILURES: usize = 50;

/// Builds the dashboard's router.
#[derive(Clone)]
pub struct Dashboard {
    broker: Arc<dyn Broker>,
    queues: Vec<QueueName>,
    workers: Vec<Health>,
    statuses: Option<JobStatuses>,
    admin_token: Option<String>,
    failures: Arc<RecentFailures>,
}

/// The latest failed attempts of the workers given [`Dashboard::failure_hooks`].
#[derive(Default)]
struct RecentFailures {
    list: Mutex<VecDeque<Value>>,
}

impl Telemetry for RecentFailures {
    fn continue_trace(&self, _: &tracing::Span, _: &Headers) {}
    fn inject(&self, _: &tracing::Span, _: &mut Headers) {}
    fn job_started(&self, _: &JobEvent<'_>) {}

    fn job_finished(&self, event: &JobEvent<'_>, outcome: &Outcome, _: std::time::Duration) {
        let (what, error) = match outcome {
            Outcome::Retried { error, .. } => ("retried", error.clone()),
            Outcome::DeadLettered { reason } => ("dead_lettered", reason.clone()),
            Outcome::Failed(error) => ("failed", error.to_string()),
            _ => return,
        };
        let failure = json!({
            "at": time(std::time::SystemTime::now()), "queue": event.queue.as_str(),
            "job": event.job.as_str(), "id": event.id.as_str(), "attempt": event.attempt.get(),
            "outcome": what, "error": error,
        });
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() == RECENT_FAILURES {
            list.pop_back();
        }
        list.push_front(failure);
    }
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("queues", &self.queues)
            .field("read_only", &self.admin_token.is_none())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A read-only dashboard of `broker`: the queues of its workers (see
    /// [`workers`](Self::workers)) and those named with [`queues`](Self::queues), or all the
    /// broker can list when there are none.
    pub fn new(broker: impl IntoBroker) -> Self {
        Self {
            broker: broker.into_broker(),
            queues: Vec::new(),
            workers: Vec::new(),
            statuses: None,
            admin_token: None,
            failures: Arc::default(),
        }
    }

    /// Hooks for `WorkerBuilder::telemetry` that show the worker's failed attempts on the
    /// page (the latest 50).
    pub fn failure_hooks(&self) -> Arc<dyn Telemetry> {
        Arc::clone(&self.failures) as Arc<dyn Telemetry>
    }

    /// Shows these queues too.
    pub fn queues<'a>(mut self, names: impl IntoIterator<Item = &'a str>) -> Self {
        self.queues.extend(names.into_iter().map(QueueName::new));
        self
    }

    /// Shows these workers: busy against capacity, and their running jobs' progress.
    pub fn workers(mut self, workers: Vec<Health>) -> Self {
        self.workers = workers;
        self
    }

    /// Looks jobs up (and follows them live) in `statuses`.
    pub fn statuses(mut self, statuses: JobStatuses) -> Self {
        self.statuses = Some(statuses);
        self
    }

    /// Allows actions (redrive, purge, cancel) to requests that carry `token`.
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into()).filter(|token| !token.is_empty());
        self
    }

    /// The page, its API and (with statuses) the job-status routes.
    pub fn router(self) -> Router {
        let statuses = self.statuses.clone();
        let state = Arc::new(self);
        let mut router = Router::new()
            .route("/", get(page))
            .route("/api/overview", get(overview))
            .route("/api/queues/{queue}/dead-letters", get(dead_letters))
            .route("/api/queues/{queue}/dead-letters/{id}", get(dead_letter))
            .route("/api/queues/{queue}/redrive", post(redrive))
            .route("/api/queues/{queue}/purge", post(purge))
            .route("/api/queues/{queue}/schedules", get(schedules))
            .with_state(Arc::clone(&state));
        if let Some(statuses) = statuses {
            router = router.merge(crate::router(statuses));
        }
        router.layer(middleware::from_fn_with_state(state, guard))
    }

    async fn queue_names(&self) -> Vec<QueueName> {
        let mut names: Vec<QueueName> = self.workers.iter().map(|w| w.queue().clone()).collect();
        names.extend(self.queues.iter().cloned());
        if names.is_empty()
            && let Ok(Some(listed)) = self.broker.list_queues().await
        {
            names = listed;
        }
        names.sort();
        names.dedup();
        names
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Lets reads through; an action needs the admin token, and no request from another site
/// gets through.
async fn guard(State(dashboard): State<Arc<Dashboard>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        let origin = origin.to_str().unwrap_or_default();
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin_host != host.to_str().unwrap_or_default() {
            return error(
                StatusCode::FORBIDDEN,
                "requests from another site are refused",
            );
        }
    }
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let Some(token) = &dashboard.admin_token else {
        return error(
            StatusCode::FORBIDDEN,
            "the dashboard is read-only: start it with an admin token (LONGSHORE_ADMIN_TOKEN, --admin-token, Dashboard::admin_token) to act",
        );
    };
    if !same(
        headers.get("x-longshore-token").map(|v| v.as_bytes()),
        token.as_bytes(),
    ) {
        return error(
            StatusCode::UNAUTHORIZED,
            "this action needs the admin token",
        );
    }
    next.run(request).await
}

/// Compares in constant time for equal lengths.
fn same(given: Option<&[u8]>, token: &[u8]) -> bool {
    let Some(given) = given else { return false };
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn page() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

async fn overview(State(dashboard): State<Arc<Dashboard>>) -> Response {
    let mut queues = Vec::new();
    for name in dashboard.queue_names().await {
        let stats = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            dashboard.broker.stats(&name),
        )
        .await;
        queues.push(match stats {
            Ok(Ok(stats)) => json!({
                "name": name.as_str(), "ready": stats.ready, "in_flight": stats.in_flight,
                "delayed": stats.delayed, "dead_lettered": stats.dead_lettered,
            }),
            Ok(Err(error)) => json!({ "name": name.as_str(), "error": error.to_string() }),
            Err(_) => {
                json!({ "name": name.as_str(), "error": "the broker did not answer in time" })
            }
        });
    }
    let mut workers = Vec::new();
    for worker in &dashboard.workers {
        let stats = worker.stats().snapshot();
        let mut running = Vec::new();
        if let Some(statuses) = &dashboard.statuses {
            for id in worker.running_tracked() {
                if let Ok(Some(status)) = statuses.get(&id).await {
                    running.push(status);
                }
            }
        }
        workers.push(json!({
            "queue": worker.queue().as_str(),
            "alive": worker.is_alive(),
            "ready": crate::probes::not_ready(worker).is_none(),
            "busy": stats.in_flight,
            "capacity": worker.capacity(),
            "succeeded": stats.succeeded, "retried": stats.retried,
            "dead_lettered": stats.dead_lettered, "skipped": stats.skipped,
            "running": running,
        }));
    }
    Json(json!({
        "system": dashboard.broker.system(),
        "read_only": dashboard.admin_token.is_none(),
        "statuses": dashboard.statuses.is_some(),
        "queues": queues,
        "workers": workers,
        "failures": dashboard.failures.list.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect::<Vec<_>>(),
    }))
    .into_response()
}

/// The answer for a broker whose dead letters cannot be read.
fn no_dead_letters(dashboard: &Dashboard) -> Response {
    error(
        StatusCode::NOT_IMPLEMENTED,
        format!(
            "the {} broker cannot read its dead letters",
            dashboard.broker.system()
        ),
    )
}

fn letter_summary(letter: &DeadLetter) -> Value {
    json!({
        "id": letter.message.id.as_str(),
        "job": letter.message.job.as_str(),
        "reason": letter.reason,
        "attempt": letter.attempt,
        "dead_at": letter.dead_at.map(time),
    })
}

/// RFC 3339 in UTC, to the second.
fn time(at: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[derive(serde::Deserialize)]
struct Grouping {
    group_by: Option<String>,
}

async fn dead_letters(
    State(dashboard): State<Arc<Dashboard>>,
    Path(queue): Path<String>,
    Query(grouping): Query<Grouping>,
) -> Response {
    let Some(dead) = dashboard.broker.dead_letters() else {
        return no_dead_letters(&dashboard);
    };
    let queue = QueueName::new(queue);
    let letters = match dead.browse(&queue, READ_AT_MOST).await {
        Ok(letters) => letters,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    let by = match grouping.group_by.as_deref() {
        Some("job") => GroupBy::Job,
        _ => GroupBy::Reason,
    };
    let groups: Vec<Value> = longshore_core::dead_letters::group(&letters, by)
        .iter()
        .map(|g| json!({ "key": g.key, "count": g.count, "oldest": g.oldest.map(time), "newest": g.newest.map(time), "sample": g.sample.as_str() }))
        .collect();
    let listed: Vec<Value> = letters.iter().take(LISTED).map(letter_summary).collect();
    Json(json!({ "queue": queue.as_str(), "count": letters.len(), "groups": groups, "letters": listed })).into_response()
}

async fn dead_letter(
    State(dashboard): State<Arc<Dashboard>>,
    Path((queue, id)): Path<(String, String)>,
) -> Response {
    let Some(dead) = dashboard.broker.dead_letters() else {
        return no_dead_letters(&dashboard);
    };
    let queue = QueueName::new(queue);
    match dead.browse(&queue, READ_AT_MOST).await {
        Ok(letters) => match letters.iter().find(|l| l.message.id.as_str() == id) {
            Some(letter) => {
                let mut value = letter_summary(letter);
                let body = String::from_utf8_lossy(&letter.message.body).into_owned();
                value["body"] = serde_json::from_str(&body).unwrap_or(Value::String(body));
                value["headers"] = json!(letter.message.headers);
                Json(value).into_response()
            }
            None => error(
                StatusCode::NOT_FOUND,
                format!("no dead letter `{id}` in `{queue}`'s dead-letter queue"),
            ),
        },
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[derive(Default, serde::Deserialize)]
struct RedriveRequest {
    #[serde(default)]
    jobs: Vec<String>,
    reason_contains: Option<String>,
    #[serde(default)]
    ids: Vec<String>,
    limit: Option<usize>,
    #[serde(default)]
    dry_run: bool,
}

async fn redrive(
    State(dashboard): State<Arc<Dashboard>>,
    Path(queue): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Some(dead) = dashboard.broker.dead_letters() else {
        return no_dead_letters(&dashboard);
    };
    let request: RedriveRequest = if body.is_empty() {
        RedriveRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the redrive request is not valid JSON: {e}"),
                );
            }
        }
    };
    let mut filter = Filter::all();
    for job in &request.jobs {
        filter = filter.job(job.as_str());
    }
    if let Some(text) = &request.reason_contains {
        filter = filter.reason_contains(text.as_str());
    }
    for id in &request.ids {
        filter = filter.id(MessageId::from(id.as_str()));
    }
    let mut plan = Redrive::new(filter).dry_run(request.dry_run);
    if let Some(limit) = request.limit {
        plan = plan.limit(limit);
    }
    let queue = QueueName::new(queue);
    match dead.redrive(&queue, &plan, &|_| {}).await {
        Ok(report) => Json(json!({
            "examined": report.examined, "matched": report.matched, "moved": report.moved,
            "dry_run": request.dry_run, "ids": report.ids.iter().map(MessageId::as_str).collect::<Vec<_>>(),
        }))
        .into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

async fn purge(State(dashboard): State<Arc<Dashboard>>, Path(queue): Path<String>) -> Response {
    let Some(dead) = dashboard.broker.dead_letters() else {
        return no_dead_letters(&dashboard);
    };
    match dead.purge(&QueueName::new(queue)).await {
        Ok(purged) => Json(json!({ "purged": purged })).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

async fn schedules(State(dashboard): State<Arc<Dashboard>>, Path(queue): Path<String>) -> Response {
    let Some(store) = dashboard.broker.schedules() else {
        return Json(json!({ "schedules": [] })).into_response();
    };
    match store.list(&QueueName::new(queue)).await {
        Ok(list) => Json(json!({
            "schedules": list.iter().map(|s| json!({ "name": s.name, "held": s.held, "holder": s.holder, "watermark": s.watermark.map(time) })).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_164_092);
        assert_eq!(time(at), "2026-12-01T22:28:12Z");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(Some(b"s3cret"), b"s3cret"));
        assert!(!same(Some(b"s3cre"), b"s3cret"));
        assert!(!same(Some(b"s3creT"), b"s3cret"));
        assert!(!same(None, b"s3cret"));
    }
}
