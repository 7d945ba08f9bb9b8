//! Testing handlers without a broker or a worker.
//!
//! [`TestJob`] runs a handler on one job as a worker would: with the dependencies you give
//! it, in a scope of its own whose per-job values are disposed afterwards (committed when it
//! succeeded, rolled back otherwise), and tells you how it ended. A handler can also be
//! called directly with [`Dep::new`](crate::Dep::new) and [`context`].
//!
//! ```
//! use longshore_core::testing::TestJob;
//! use longshore_core::{Dep, Job, JobError};
//! use serde::{Deserialize, Serialize};
//! use std::sync::Mutex;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Welcome { to: String }
//! impl Job for Welcome { const NAME: &'static str = "welcome"; }
//!
//! #[derive(Default)]
//! struct FakeMailer { sent: Mutex<Vec<String>> }
//!
//! async fn welcome(job: Welcome, mailer: Dep<FakeMailer>) -> Result<(), JobError> {
//!     if !job.to.contains('@') {
//!         return Err(JobError::permanent("not an address"));
//!     }
//!     mailer.sent.lock().unwrap().push(job.to);
//!     Ok(())
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let result = TestJob::new().dependency(FakeMailer::default())
//!     .run(welcome, Welcome { to: "ada@example.com".into() }).await;
//! assert!(result.is_ok());
//!
//! let error = TestJob::new().dependency(FakeMailer::default())
//!     .run(welcome, Welcome { to: "nobody".into() }).await.unwrap_err();
//! assert!(!error.is_retryable());
//! # });
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::context::JobContext;
use crate::handler::Handler;
use crate::job::{Job, JobError};
use crate::message::Headers;
use crate::names::{Attempt, JobName, MessageId, QueueName};
use crate::scope::{Factory, Problem, Root, Scope, check_dependencies};

/// How long a disposer may take in a test run.
const DISPOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A context for a job named `job`: its first attempt, from queue `test`, with a fresh id
/// and no headers; for calling a handler directly in a test.
pub fn context(job: &str) -> JobContext {
    JobContext::new(
        MessageId::generate(),
        JobName::new(job),
        QueueName::new("test"),
        Attempt::FIRST,
        SystemTime::now(),
        Arc::default(),
        Arc::new(CancellationToken::new()),
    )
}

/// One job run by hand: the dependencies it may ask for, and what its context says.
#[derive(Debug)]
pub struct TestJob {
    root: Root,
    attempt: Attempt,
    headers: Headers,
}

impl Default for TestJob {
    fn default() -> Self {
        Self::new()
    }
}

impl TestJob {
    /// A first attempt with no dependencies and no headers.
    pub fn new() -> Self {
        Self {
            root: Root::new(),
            attempt: Attempt::FIRST,
            headers: Headers::new(),
        }
    }

    /// Adds a process-wide value (`Dep<T>`).
    pub fn dependency<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.root.insert(value);
        self
    }

    /// Adds a process-wide value the test keeps a handle to.
    pub fn dependency_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.root.insert_arc(value);
        self
    }

    /// Adds a per-job factory, as [`WorkerBuilder::scoped`](crate::WorkerBuilder::scoped).
    pub fn scoped<T, Args, F>(mut self, factory: F) -> Self
    where
        T: Send + Sync + 'static,
        Args: 'static,
        F: Factory<T, Args>,
    {
        self.root.scoped(factory);
        self
    }

    /// Adds a per-job factory with a disposer, as
    /// [`WorkerBuilder::scoped_with_disposer`](crate::WorkerBuilder::scoped_with_disposer).
    pub fn scoped_with_disposer<T, Args, F, D, DFut, E>(mut self, factory: F, disposer: D) -> Self
    where
        T: Send + Sync + 'static,
        Args: 'static,
        F: Factory<T, Args>,
        D: Fn(T, bool) -> DFut + Clone + Send + Sync + 'static,
        DFut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<JobError> + 'static,
    {
        self.root.scoped_with_disposer(factory, disposer);
        self
    }

    /// Runs as attempt `n` (a retry when above 1).
    pub fn attempt(mut self, n: u32) -> Self {
        self.attempt = Attempt::new(n);
        self
    }

    /// Adds a message header (`JobContext::headers`).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Runs `handler` on `job` and disposes its scope, as a worker would: `Ok` if it
    /// succeeded and its disposers did too. Dependencies are checked first, as
    /// `WorkerBuilder::build` checks them: a missing one is a permanent error naming it.
    pub async fn run<J, Args, H>(self, handler: H, job: J) -> Result<(), JobError>
    where
        J: Job,
        Args: 'static,
        H: Handler<J, Args>,
    {
        let requirements = vec![(JobName::new(J::NAME), H::requirements())];
        match check_dependencies(&self.root, &requirements) {
            Ok(()) => {}
            Err(Problem::Missing(missing)) => return Err(JobError::permanent(missing.join("; "))),
            Err(Problem::Cycle(cycle)) => {
                return Err(JobError::permanent(format!(
                    "the per-job factories need each other in a cycle ({cycle})"
                )));
            }
        }
        let mut context = context(J::NAME);
        context.attempt = self.attempt;
        context.trigger = crate::Trigger::from_headers(&self.headers, self.attempt);
        context.headers = Arc::new(self.headers);
        let scope = Scope::new(Arc::new(self.root), context);
        let result = handler.call(job, &scope).await;
        let disposed = scope.dispose(result.is_ok(), DISPOSE_TIMEOUT).await;
        result.and(disposed)
    }
}
