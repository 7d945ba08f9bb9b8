//! The scope container: a process-wide [`Root`] and a per-job child [`Scope`].
//!
//! Handlers ask for what they need by type ([`Dep<T>`]) and cannot tell a root value from a
//! per-job one. Per-job values are built lazily by registered factories, the first time a
//! job asks; when the job ends, their disposers run (commit or roll back, flush) before the
//! delivery settles, and the values are dropped.

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::context::JobContext;
use crate::job::JobError;

type AnyArc = Arc<dyn Any + Send + Sync>;
type Disposer = Box<dyn FnOnce(JobOutcome) -> BoxFuture<'static, ()> + Send>;
type Factory = Arc<
    dyn Fn(Scope) -> BoxFuture<'static, Result<(AnyArc, Option<Disposer>), JobError>> + Send + Sync,
>;

/// How a job ended, as its scope's disposers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// The handler returned `Ok`: commit.
    Succeeded,
    /// The handler failed, panicked or timed out: roll back.
    Failed,
    /// The job was stopped before finishing (shutdown deadline, lost lease): roll back.
    Cancelled,
}

/// The process-wide container: values that live as long as the worker, and the factories
/// that build per-job values.
#[derive(Default)]
pub struct Root {
    values: HashMap<TypeId, AnyArc>,
    factories: HashMap<TypeId, Factory>,
}

impl fmt::Debug for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Root")
            .field("values", &self.values.len())
            .field("factories", &self.factories.len())
            .finish()
    }
}

impl Root {
    /// An empty root.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a process-wide value, shared by every job (a client, a pool, config).
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.insert_arc(Arc::new(value));
    }

    /// Adds a process-wide value already in an `Arc`.
    pub fn insert_arc<T: Send + Sync + 'static>(&mut self, value: Arc<T>) {
        self.values.insert(TypeId::of::<T>(), value);
    }

    /// Registers a per-job value: `factory` runs at most once per job, the first time the
    /// job asks for a `T`, and the value is dropped when the job ends.
    pub fn scoped<T, F, Fut>(&mut self, factory: F)
    where
        T: Send + Sync + 'static,
        F: Fn(Scope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, JobError>> + Send + 'static,
    {
        self.factories.insert(
            TypeId::of::<T>(),
            Arc::new(move |scope| {
                let built = factory(scope);
                Box::pin(async move {
                    let value: AnyArc = Arc::new(built.await?);
                    Ok((value, None))
                })
            }),
        );
    }

    /// Registers a per-job value with an async disposer that runs when the job ends (with
    /// how it ended), before the delivery settles: commit on success, roll back otherwise.
    pub fn scoped_with_disposer<T, F, Fut, D, DFut>(&mut self, factory: F, disposer: D)
    where
        T: Send + Sync + 'static,
        F: Fn(Scope) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, JobError>> + Send + 'static,
        D: Fn(Arc<T>, JobOutcome) -> DFut + Clone + Send + Sync + 'static,
        DFut: Future<Output = ()> + Send + 'static,
    {
        self.factories.insert(
            TypeId::of::<T>(),
            Arc::new(move |scope| {
                let built = factory(scope);
                let disposer = disposer.clone();
                Box::pin(async move {
                    let value = Arc::new(built.await?);
                    let for_disposer = Arc::clone(&value);
                    let dispose: Disposer =
                        Box::new(move |outcome| Box::pin(disposer(for_disposer, outcome)));
                    Ok((value as AnyArc, Some(dispose)))
                })
            }),
        );
    }

    /// Whether a value or factory of this type is registered.
    pub fn provides(&self, type_id: TypeId) -> bool {
        self.values.contains_key(&type_id) || self.factories.contains_key(&type_id)
    }

    /// The process-wide value of type `T`, if one was inserted.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|value| Arc::clone(value).downcast::<T>().ok())
    }
}

/// One job's child of the [`Root`]: its [`JobContext`], its lazily built per-job values and
/// their disposers. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Scope {
    inner: Arc<ScopeInner>,
}

struct ScopeInner {
    root: Arc<Root>,
    context: JobContext,
    built: Mutex<HashMap<TypeId, Arc<OnceCell<AnyArc>>>>,
    disposers: Mutex<Vec<Disposer>>,
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scope")
            .field("job", &self.inner.context.job)
            .field("id", &self.inner.context.id)
            .finish_non_exhaustive()
    }
}

impl Scope {
    /// A new job scope under `root`.
    pub fn new(root: Arc<Root>, context: JobContext) -> Self {
        Self {
            inner: Arc::new(ScopeInner {
                root,
                context,
                built: Mutex::new(HashMap::new()),
                disposers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The job this scope serves.
    pub fn context(&self) -> &JobContext {
        &self.inner.context
    }

    /// The value of type `T`: this job's own if a factory is registered for `T` (built now
    /// if this is the first ask), else the process-wide one.
    pub async fn get<T: Send + Sync + 'static>(&self) -> Result<Arc<T>, JobError> {
        let type_id = TypeId::of::<T>();
        let Some(factory) = self.inner.root.factories.get(&type_id) else {
            return self.inner.root.get::<T>().ok_or_else(|| {
                JobError::permanent(format!(
                    "no value of type `{}` is registered on this worker; add it with \
                     `.dependency(..)` or `.scoped(..)` on the worker builder",
                    type_name::<T>()
                ))
            });
        };
        let cell = Arc::clone(
            self.inner
                .built
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(type_id)
                .or_default(),
        );
        let value = cell
            .get_or_try_init(|| async {
                let (value, disposer) = factory(self.clone()).await?;
                if let Some(disposer) = disposer {
                    self.inner
                        .disposers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(disposer);
                }
                Ok::<_, JobError>(value)
            })
            .await?;
        Arc::clone(value).downcast::<T>().map_err(|_| {
            // The map is keyed by TypeId::of::<T>(), so the value is a T.
            JobError::permanent(format!("scoped value is not a `{}`", type_name::<T>()))
        })
    }

    /// Ends the job's scope: runs disposers, newest first, then drops the per-job values.
    pub async fn dispose(&self, outcome: JobOutcome) {
        let disposers = std::mem::take(
            &mut *self
                .inner
                .disposers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for disposer in disposers.into_iter().rev() {
            disposer(outcome).await;
        }
        self.inner
            .built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// A dependency of type `T` asked for by a handler, from the job's scope or the root.
///
/// ```
/// use longshore_core::{Dep, JobError};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Welcome { to: String }
/// # impl longshore_core::Job for Welcome { const NAME: &'static str = "welcome"; }
/// struct Mailer;
/// impl Mailer {
///     async fn send(&self, _to: &str) -> Result<(), std::io::Error> { Ok(()) }
/// }
///
/// async fn welcome(job: Welcome, mailer: Dep<Mailer>) -> Result<(), JobError> {
///     mailer.send(&job.to).await?;
///     Ok(())
/// }
/// ```
pub struct Dep<T>(Arc<T>);

impl<T> Dep<T> {
    /// The shared pointer to the value.
    pub fn into_arc(self) -> Arc<T> {
        self.0
    }
}

impl<T> Deref for Dep<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Clone for Dep<T> {
    fn clone(&self) -> Self {
        Dep(Arc::clone(&self.0))
    }
}

impl<T: fmt::Debug> fmt::Debug for Dep<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Dep").field(&self.0).finish()
    }
}

/// A type a handler needs to find in the container, checked when the worker is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The type's id.
    pub type_id: TypeId,
    /// The type's name, for error messages.
    pub type_name: &'static str,
}

impl Requirement {
    /// The requirement of a `T`.
    pub fn of<T: 'static>() -> Self {
        Self {
            type_id: TypeId::of::<T>(),
            type_name: type_name::<T>(),
        }
    }
}

/// Something a handler can take as an argument after the job, built from the job's scope.
///
/// Implement it for an app-defined struct to build a typed per-job bundle (a transaction
/// plus a tenant client), as axum's `FromRequestParts` builds per-request values.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument",
    label = "not available from the job's scope",
    note = "after the job itself, handler arguments are `Dep<T>`, `JobContext`, `Scope`, or a type that implements `FromScope`"
)]
#[async_trait]
pub trait FromScope: Sized + Send {
    /// Builds the value for this job.
    async fn from_scope(scope: &Scope) -> Result<Self, JobError>;

    /// The container types this argument needs, so the worker can check them at `build()`.
    fn requirements(_out: &mut Vec<Requirement>) {}
}

#[async_trait]
impl<T: Send + Sync + 'static> FromScope for Dep<T> {
    async fn from_scope(scope: &Scope) -> Result<Self, JobError> {
        scope.get::<T>().await.map(Dep)
    }

    fn requirements(out: &mut Vec<Requirement>) {
        out.push(Requirement::of::<T>());
    }
}

#[async_trait]
impl FromScope for JobContext {
    async fn from_scope(scope: &Scope) -> Result<Self, JobError> {
        Ok(scope.context().clone())
    }
}

#[async_trait]
impl FromScope for Scope {
    async fn from_scope(scope: &Scope) -> Result<Self, JobError> {
        Ok(scope.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::SystemTime;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::names::{Attempt, JobName, MessageId, QueueName};

    fn context() -> JobContext {
        JobContext::new(
            MessageId::generate(),
            JobName::new("test"),
            QueueName::new("q"),
            Attempt::FIRST,
            SystemTime::now(),
            Arc::default(),
            CancellationToken::new(),
        )
    }

    struct Config(u32);
    struct Tx {
        serial: usize,
    }

    fn root_with_tx(
        built: Arc<AtomicUsize>,
        disposed: Arc<Mutex<Vec<(usize, JobOutcome)>>>,
    ) -> Arc<Root> {
        let mut root = Root::new();
        root.insert(Config(7));
        root.scoped_with_disposer(
            move |_scope| {
                let serial = built.fetch_add(1, Ordering::SeqCst);
                async move { Ok(Tx { serial }) }
            },
            move |tx: Arc<Tx>, outcome| {
                let disposed = Arc::clone(&disposed);
                async move { disposed.lock().unwrap().push((tx.serial, outcome)) }
            },
        );
        Arc::new(root)
    }

    #[tokio::test]
    async fn scoped_values_are_lazy_fresh_per_job_and_disposed() {
        let built = Arc::new(AtomicUsize::new(0));
        let disposed = Arc::new(Mutex::new(Vec::new()));
        let root = root_with_tx(Arc::clone(&built), Arc::clone(&disposed));

        let first = Scope::new(Arc::clone(&root), context());
        assert_eq!(built.load(Ordering::SeqCst), 0, "factories run lazily");
        let a = first.get::<Tx>().await.unwrap();
        let again = first.get::<Tx>().await.unwrap();
        assert!(Arc::ptr_eq(&a, &again), "one value per job");
        let second = Scope::new(Arc::clone(&root), context());
        let b = second.get::<Tx>().await.unwrap();
        assert_ne!(a.serial, b.serial, "fresh value per job");

        first.dispose(JobOutcome::Succeeded).await;
        second.dispose(JobOutcome::Failed).await;
        assert_eq!(
            *disposed.lock().unwrap(),
            vec![
                (a.serial, JobOutcome::Succeeded),
                (b.serial, JobOutcome::Failed)
            ]
        );
        drop((a, again));
        assert_eq!(Arc::strong_count(&b), 1, "the scope dropped its value");
    }

    #[tokio::test]
    async fn root_values_are_shared_and_missing_types_are_clear_errors() {
        let root = root_with_tx(Arc::default(), Arc::default());
        let one = Scope::new(Arc::clone(&root), context())
            .get::<Config>()
            .await
            .unwrap();
        let two = Scope::new(Arc::clone(&root), context())
            .get::<Config>()
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&one, &two));
        assert_eq!(one.0, 7);
        let missing = Scope::new(root, context())
            .get::<String>()
            .await
            .unwrap_err();
        assert!(
            missing
                .to_string()
                .contains("no value of type `alloc::string::String`")
        );
        assert!(!missing.is_retryable());
    }

    #[tokio::test]
    async fn factory_can_use_other_values_and_failures_propagate() {
        let mut root = Root::new();
        root.insert(Config(3));
        root.scoped(|scope: Scope| async move {
            let config = scope.get::<Config>().await?;
            Ok(format!("tenant-{}-{}", config.0, scope.context().job))
        });
        root.scoped(|_scope: Scope| async move { Err::<u64, _>(JobError::retryable("db down")) });
        let scope = Scope::new(Arc::new(root), context());
        assert_eq!(*scope.get::<String>().await.unwrap(), "tenant-3-test");
        let err = scope.get::<u64>().await.unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(err.to_string(), "db down");
    }
}
