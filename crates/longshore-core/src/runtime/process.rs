//! One delivery's way through the worker: its request, the layer stack, the counters.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::pipeline::{JobRequest, Layer, Next, Registration};
use super::stats::WorkerStats;
use crate::context::JobContext;
use crate::delivery::Delivery;
use crate::message::headers;
use crate::names::JobName;
use crate::scope::{Root, Scope};
use crate::status::JobStatuses;
use crate::status::tracking::Tracked;

/// What every job task of a worker shares.
pub(crate) struct Shared {
    pub(crate) system: &'static str,
    pub(crate) root: Arc<Root>,
    pub(crate) registry: HashMap<JobName, Arc<Registration>>,
    /// The per-job layer stack, outermost first.
    pub(crate) layers: Arc<[Arc<dyn Layer>]>,
    pub(crate) stats: Arc<WorkerStats>,
    /// Cancelled when the shutdown deadline passes: running jobs stop and are released.
    pub(crate) deadline: Arc<CancellationToken>,
    /// Job statuses, when the worker tracks them.
    pub(crate) statuses: Option<JobStatuses>,
    /// Larger bodies are dead-lettered undecoded.
    pub(crate) max_body_bytes: usize,
}

/// The largest body a worker takes unless told otherwise.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Runs one delivery through the layer stack to its settlement.
pub(crate) async fn process(shared: &Shared, delivery: Delivery) {
    let running = shared.stats.start();
    let message = delivery.message();
    let registration = match shared.registry.get(&message.job) {
        _ if message.body.len() > shared.max_body_bytes => Err(format!(
            "the body is {} bytes; this worker takes at most {} (WorkerBuilder::max_body_bytes)",
            message.body.len(),
            shared.max_body_bytes
        )),
        Some(registration) => Ok(Arc::clone(registration)),
        None => Err(unknown_job_reason(
            &message.job,
            &message.headers,
            &shared.registry,
        )),
    };
    let mut context = JobContext::new(
        message.id.clone(),
        message.job.clone(),
        delivery.queue().clone(),
        delivery.attempt(),
        message.enqueued_at,
        Arc::clone(&message.headers),
        Arc::clone(&shared.deadline),
    );
    if let Some(statuses) = &shared.statuses
        && message.headers.contains_key(headers::STATUS)
    {
        let tracked = Tracked::new(statuses.clone(), message.id.clone());
        context = context.tracked(Arc::new(tracked));
    }
    let scope = Scope::new(Arc::clone(&shared.root), context);
    let mut job = JobRequest::new(scope, delivery, registration);
    let outcome = Next::stack(&shared.layers).run(&mut job).await;
    running.finish(&outcome);
}

fn unknown_job_reason(
    job: &JobName,
    wire: &crate::message::Headers,
    registry: &HashMap<JobName, Arc<Registration>>,
) -> String {
    if job.as_str().is_empty() {
        if let Some(problem) = wire.get(headers::WIRE_ERROR) {
            return format!("{problem}, so no handler can be chosen");
        }
        return format!(
            "message has no `{}` header, so no handler can be chosen",
            headers::JOB
        );
    }
    let mut known: Vec<&str> = registry.keys().map(JobName::as_str).collect();
    known.sort_unstable();
    format!(
        "unknown job `{job}`: no handler is registered for it on this worker (registered: {})",
        known.join(", ")
    )
}
