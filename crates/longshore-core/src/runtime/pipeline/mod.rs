//! The per-job path as a stack of [`Layer`]s around the handler call, as tower's `Layer`
//! wraps a `Service`. Outermost first:
//!
//! | layer | what it does |
//! | --- | --- |
//! | [`telemetry`] | the job's span (continuing the producer's trace), telemetry hooks |
//! | [`settle`] | settles the delivery by the outcome, within a timeout; catches panics of everything inside |
//! | [`status`] | a tracked job's status follows the attempt; cancelled and already-succeeded jobs are skipped (with a status store) |
//! | [`classify`] | a failure becomes a retry after the policy's delay, or a dead letter |
//! | your layers | [`WorkerBuilder::layer`](crate::WorkerBuilder::layer), in the order added |
//! | [`scope`] | disposes the job's scope (commit or roll back) after the attempt; a failed disposer fails it |
//! | [`timeout`] | the job timeout, the shutdown deadline and the lease heartbeat |
//! | [`panic`] | a panicking handler is a failed attempt |
//! | the handler | decodes the body and calls the handler with what it asks for |
//!
//! Nothing per-job escapes the stack's guards: whatever a layer, handler or disposer does
//! (fail, panic, hang), the delivery settles and the worker's `in_flight` comes back down.

mod classify;
mod panic;
mod scope;
mod settle;
mod status;
mod telemetry;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::context::JobContext;
use crate::delivery::Delivery;
use crate::handler::ErasedHandler;
use crate::job::JobError;
use crate::outcome::Outcome;
use crate::retry::RetryPolicy;
use crate::scope::Scope;
use crate::status::JobStatuses;
use crate::status::tracking::Cancels;
use crate::telemetry::Telemetry;

/// One step of the per-job path around the handler call: it gets the job's request and the
/// rest of the stack, and returns how the attempt ended.
///
/// A layer added with [`WorkerBuilder::layer`](crate::WorkerBuilder::layer) runs inside the
/// job's span and outside its scope's disposal: it sees the handler's outcome before it is
/// settled (`Succeeded`, `Failed`, `Released`, `Abandoned`) and may change it (a
/// `Failed` it returns is retried or dead-lettered by the retry policy). A layer that does
/// not call `next` skips the handler; the delivery is still settled by what it returns.
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Arc;
/// use longshore_core::{JobName, JobRequest, Layer, Next, Outcome, async_trait};
/// use tokio::sync::Semaphore;
///
/// /// At most `n` jobs of a type run at once on this worker (say, for a rate-limited API).
/// struct LimitPerJob(HashMap<JobName, Arc<Semaphore>>);
///
/// #[async_trait]
/// impl Layer for LimitPerJob {
///     async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome {
///         let Some(limit) = self.0.get(&job.context().job) else {
///             return next.run(job).await;
///         };
///         let _permit = limit.acquire().await.expect("never closed");
///         next.run(job).await
///     }
/// }
/// ```
#[async_trait]
pub trait Layer: Send + Sync + 'static {
    /// Runs the attempt of `job` through `next` (the rest of the stack), doing what the
    /// layer does around it.
    async fn call(&self, job: &mut JobRequest, next: Next<'_>) -> Outcome;
}

/// The rest of the stack below a layer.
pub struct Next<'a> {
    rest: &'a [Arc<dyn Layer>],
}

impl<'a> Next<'a> {
    /// The whole stack.
    pub(crate) fn stack(layers: &'a [Arc<dyn Layer>]) -> Self {
        Self { rest: layers }
    }

    /// Runs the rest of the stack, and at its end the handler.
    pub async fn run(self, job: &mut JobRequest) -> Outcome {
        match self.rest.split_first() {
            Some((layer, rest)) => layer.call(job, Next { rest }).await,
            None => call_handler(job).await,
        }
    }
}

impl std::fmt::Debug for Next<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("layers", &self.rest.len())
            .finish()
    }
}

/// One registered job type: its handler and its resolved options.
pub(crate) struct Registration {
    pub(crate) handler: Box<dyn ErasedHandler>,
    pub(crate) retry: RetryPolicy,
    pub(crate) timeout: Duration,
}

/// One attempt of a job as the layers see it: its context, its scope and the delivery.
pub struct JobRequest {
    scope: Scope,
    /// Taken by the settlement.
    delivery: Option<Delivery>,
    /// The job type's registration, or why there is none.
    registration: Result<Arc<Registration>, String>,
}

impl std::fmt::Debug for JobRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRequest")
            .field("context", self.context())
            .finish_non_exhaustive()
    }
}

impl JobRequest {
    pub(crate) fn new(
        scope: Scope,
        delivery: Delivery,
        registration: Result<Arc<Registration>, String>,
    ) -> Self {
        Self {
            scope,
            delivery: Some(delivery),
            registration,
        }
    }

    /// The job: id, name, queue, attempt, trigger, headers.
    pub fn context(&self) -> &JobContext {
        self.scope.context()
    }

    /// The job's scope: its per-job values and the worker's.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// The message body (the job as JSON); empty once the delivery is settled.
    pub fn body(&self) -> &[u8] {
        self.delivery
            .as_ref()
            .map_or(&[], |delivery| &delivery.message().body)
    }

    /// Whether this worker has a handler for the job.
    pub fn has_handler(&self) -> bool {
        self.registration.is_ok()
    }

    /// The unit the broker waits retries in (zero: any delay).
    pub(crate) fn retry_unit(&self) -> Duration {
        self.delivery
            .as_ref()
            .map_or(Duration::ZERO, Delivery::retry_unit)
    }

    /// The job type's retry policy; `None` for a job without a handler.
    pub(crate) fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.registration.as_ref().ok().map(|r| &r.retry)
    }

    /// The job type's attempt timeout; a job without a handler fails at once anyway.
    pub(crate) fn timeout(&self) -> Duration {
        self.registration
            .as_ref()
            .map_or(Duration::MAX, |r| r.timeout)
    }
}

/// The end of the stack: decode the body and call the handler.
async fn call_handler(job: &mut JobRequest) -> Outcome {
    let job: &JobRequest = job;
    let registration = match &job.registration {
        Ok(registration) => registration,
        Err(reason) => return Outcome::Failed(JobError::permanent(reason.clone())),
    };
    let Some(delivery) = &job.delivery else {
        return Outcome::Failed(JobError::permanent(
            "a layer settled the delivery before the handler ran",
        ));
    };
    match registration
        .handler
        .call(&delivery.message().body, &job.scope)
        .await
    {
        Ok(()) => Outcome::Succeeded,
        Err(error) => Outcome::Failed(error),
    }
}

/// The options of the built-in layers.
pub(crate) struct StackOptions {
    pub(crate) system: &'static str,
    pub(crate) telemetry: Vec<Arc<dyn Telemetry>>,
    pub(crate) dispose_timeout: Duration,
    pub(crate) settle_timeout: Duration,
    /// Job status tracking: the statuses, this worker's cancellation requests, its name.
    pub(crate) status: Option<(JobStatuses, Arc<Cancels>, String)>,
}

/// The whole stack: the built-in layers around the user's, in the order of the table above.
pub(crate) fn stack(options: StackOptions, user: Vec<Arc<dyn Layer>>) -> Arc<[Arc<dyn Layer>]> {
    let mut layers: Vec<Arc<dyn Layer>> = vec![
        Arc::new(telemetry::TelemetryLayer::new(
            options.system,
            options.telemetry,
        )),
        Arc::new(settle::SettleLayer {
            timeout: options.settle_timeout,
        }),
    ];
    if let Some((statuses, cancels, worker)) = options.status {
        layers.push(Arc::new(status::StatusLayer {
            statuses,
            cancels,
            worker: worker.into(),
        }));
    }
    layers.push(Arc::new(classify::ClassifyLayer));
    layers.extend(user);
    layers.push(Arc::new(scope::ScopeLayer {
        timeout: options.dispose_timeout,
    }));
    layers.push(Arc::new(timeout::TimeoutLayer));
    layers.push(Arc::new(panic::CatchPanicLayer));
    layers.into()
}

#[cfg(test)]
mod tests;
