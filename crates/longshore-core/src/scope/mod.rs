//! The scope container: a process-wide [`Root`] and a per-job child [`Scope`].
//!
//! Handlers ask for what they need by type ([`Dep<T>`]) and cannot tell a root value from a
//! per-job one. Per-job values are built lazily by registered factories, the first time a
//! job asks; when the job ends, their disposers run (commit or roll back, flush) before the
//! delivery settles, and the values are dropped. A disposer takes its value by ownership
//! and can fail the attempt: a refused commit is retried, never acked.
//!
//! Factories declare what they need the way handlers do (their arguments), so
//! [`WorkerBuilder::build`](crate::WorkerBuilder::build) checks every dependency, a
//! factory's included, and rejects cycles before the first job runs.

mod check;
mod dispose;
mod factory;

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

pub(crate) use check::{Problem, check_dependencies};
pub use factory::Factory;

type AnyArc = Arc<dyn Any + Send + Sync>;

/// Runs a per-job value's disposer: the value (which it downcasts and unwraps) and whether
/// the job succeeded so far.
type Disposer = Box<dyn FnOnce(AnyArc, bool) -> BoxFuture<'static, Result<(), JobError>> + Send>;

/// Builds one per-job value in a scope, with its disposer if it has one.
type Build = Arc<
    dyn Fn(Scope) -> BoxFuture<'static, Result<(AnyArc, Option<Disposer>), JobError>> + Send + Sync,
>;

/// A registered per-job factory: how to build the value, and what it needs.
struct Registered {
    build: Build,
    requirements: Vec<Requirement>,
    type_name: &'static str,
}

/// The process-wide container: values that live as long as the worker, and the factories
/// that build per-job values.
#[derive(Default)]
pub struct Root {
    values: HashMap<TypeId, AnyArc>,
    factories: HashMap<TypeId, Registered>,
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
    ///
    /// The factory is an async function of what it needs, asked for as handlers ask
    /// (`Dep<U>`, [`JobContext`], [`Scope`]), returning `Result<T, E>` for any error that
    /// converts into [`JobError`]. Its `Dep<U>` arguments are checked when the worker is built.
    pub fn scoped<T, Args, F>(&mut self, factory: F)
    where
        T: Send + Sync + 'static,
        Args: 'static,
        F: Factory<T, Args>,
    {
        self.register(
            factory,
            None::<fn(T, bool) -> std::future::Ready<Result<(), JobError>>>,
        );
    }

    /// Registers a per-job value with an async disposer that runs when the job ends, before
    /// the delivery settles: `disposer(value, succeeded)`, newest value first.
    ///
    /// The disposer owns the value (a commit may consume the transaction). If it fails, or
    /// panics, or passes the worker's disposal timeout, the attempt fails: a job that had
    /// succeeded is retried instead of acked (the error is permanent only if the disposer
    /// says so), and the disposers after it see `succeeded = false`. A value something
    /// still holds when the job ends (a `Dep<T>` moved into a task that outlives the job)
    /// cannot be handed over: that fails the attempt too.
    pub fn scoped_with_disposer<T, Args, F, D, DFut, E>(&mut self, factory: F, disposer: D)
    where
        T: Send + Sync + 'static,
        Args: 'static,
        F: Factory<T, Args>,
        D: Fn(T, bool) -> DFut + Clone + Send + Sync + 'static,
        DFut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<JobError> + 'static,
    {
        self.register(factory, Some(disposer));
    }

    fn register<T, Args, F, D, DFut, E>(&mut self, factory: F, disposer: Option<D>)
    where
        T: Send + Sync + 'static,
        Args: 'static,
        F: Factory<T, Args>,
        D: Fn(T, bool) -> DFut + Clone + Send + Sync + 'static,
        DFut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<JobError> + 'static,
    {
        let build: Build = Arc::new(move |scope: Scope| {
            let built = factory.build(scope);
            let disposer = disposer.clone();
            Box::pin(async move {
                let value: AnyArc = Arc::new(built.await?);
                let disposer = disposer.map(|disposer| -> Disposer {
                    Box::new(move |value: AnyArc, succeeded: bool| {
                        Box::pin(dispose::hand_over::<T, D, DFut, E>(
                            value, succeeded, disposer,
                        ))
                    })
                });
                Ok((value, disposer))
            })
        });
        self.factories.insert(
            TypeId::of::<T>(),
            Registered {
                build,
                requirements: F::requirements(),
                type_name: type_name::<T>(),
            },
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
    /// The per-job values being built on this call path, innermost last: a factory asking,
    /// directly or through others, for the value it is building is a cycle, reported as an
    /// error instead of waiting on itself.
    building: Option<Arc<Building>>,
}

struct Building {
    type_id: TypeId,
    type_name: &'static str,
    outer: Option<Arc<Building>>,
}

struct ScopeInner {
    root: Arc<Root>,
    context: JobContext,
    built: Mutex<HashMap<TypeId, Arc<OnceCell<AnyArc>>>>,
    disposers: Mutex<Vec<(TypeId, &'static str, Disposer)>>,
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
            building: None,
        }
    }

    /// The job this scope serves.
    pub fn context(&self) -> &JobContext {
        &self.inner.context
    }

    /// The value of type `T`: this job's own if a factory is registered for `T` (built now
    /// if this is the first ask), else the process-wide one.
    ///
    /// A type nobody registered is a permanent error; so is a factory that asks for its own
    /// type, directly or through other factories (a cycle).
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
        if let Some(cycle) = self.cycle_through(type_id, factory.type_name) {
            return Err(JobError::permanent(format!(
                "the per-job factories need each other in a cycle ({cycle}), so none can be \
                 built; break the cycle"
            )));
        }
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
                let building = Scope {
                    inner: Arc::clone(&self.inner),
                    building: Some(Arc::new(Building {
                        type_id,
                        type_name: factory.type_name,
                        outer: self.building.clone(),
                    })),
                };
                let (value, disposer) = (factory.build)(building).await?;
                if let Some(disposer) = disposer {
                    self.inner
                        .disposers
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((type_id, factory.type_name, disposer));
                }
                Ok::<_, JobError>(value)
            })
            .await?;
        Arc::clone(value).downcast::<T>().map_err(|_| {
            // The map is keyed by TypeId::of::<T>(), so the value is a T.
            JobError::permanent(format!("scoped value is not a `{}`", type_name::<T>()))
        })
    }

    /// `A → B → A` if `type_id` is being built on this call path.
    fn cycle_through(&self, type_id: TypeId, name: &'static str) -> Option<String> {
        let mut path = vec![name];
        let mut at = self.building.as_deref();
        while let Some(building) = at {
            path.push(building.type_name);
            if building.type_id == type_id {
                path.reverse();
                return Some(path.join(" → "));
            }
            at = building.outer.as_deref();
        }
        None
    }

    /// Ends the job's scope: runs the disposers, newest value first, each bounded by
    /// `timeout` and guarded against panics, then drops the per-job values. `succeeded` is
    /// whether the job succeeded; after a disposer fails, the rest see `false`. Returns the
    /// first disposer's failure. Running it again does nothing.
    pub async fn dispose(
        &self,
        succeeded: bool,
        timeout: std::time::Duration,
    ) -> Result<(), JobError> {
        let disposers = std::mem::take(
            &mut *self
                .inner
                .disposers
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut result = Ok(());
        let mut succeeded = succeeded;
        for (type_id, type_name, disposer) in disposers.into_iter().rev() {
            let Some(value) = self.take_built(type_id) else {
                continue;
            };
            let outcome = dispose::guarded(type_name, timeout, disposer(value, succeeded)).await;
            if let Err(error) = outcome {
                tracing::warn!(value = type_name, %error, "a per-job value's disposer failed");
                succeeded = false;
                if result.is_ok() {
                    result = Err(error);
                }
            }
        }
        self.inner
            .built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        result
    }

    /// Takes a built value out of the scope, so that its disposer can own it.
    fn take_built(&self, type_id: TypeId) -> Option<AnyArc> {
        let cell = self
            .inner
            .built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&type_id)?;
        match Arc::try_unwrap(cell) {
            Ok(cell) => cell.into_inner(),
            // A `get` still running elsewhere holds the cell: hand over what it holds, so the
            // disposer reports the value as still in use rather than being skipped.
            Err(cell) => cell.get().cloned(),
        }
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
///
/// // In a unit test, call the handler with a value of your own:
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// welcome(Welcome { to: "ada@example.com".into() }, Dep::new(Mailer)).await.unwrap();
/// # });
/// ```
pub struct Dep<T>(Arc<T>);

impl<T> Dep<T> {
    /// Wraps a value, for calling a handler directly in a test.
    pub fn new(value: T) -> Self {
        Dep(Arc::new(value))
    }

    /// Wraps a shared value.
    pub fn from_arc(value: Arc<T>) -> Self {
        Dep(value)
    }

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

/// A type a handler or factory needs to find in the container, checked when the worker is
/// built.
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

/// Something a handler or factory can take as an argument, built from the job's scope.
///
/// Implement it for an app-defined struct to build a typed per-job bundle (a transaction
/// plus a tenant client), as axum's `FromRequestParts` builds per-request values.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler or factory argument",
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
mod tests;
