//! [`Factory`]: per-job factories as plain async functions of what they need, like handlers.

use std::future::Future;

use futures_util::future::BoxFuture;

use super::{FromScope, Requirement, Scope};
use crate::job::JobError;

/// An async function that builds a per-job `T` from what it asks for (`Dep<U>`,
/// [`JobContext`](crate::JobContext), [`Scope`], any [`FromScope`]), returning
/// `Result<T, E>` with `E: Into<JobError>`: `?` on a database error works as in a handler.
///
/// ```
/// use longshore_core::{Dep, JobContext, Worker, MemoryBroker};
/// struct Pool;
/// struct Tenant(String);
/// # fn builder() -> longshore_core::WorkerBuilder { Worker::builder(MemoryBroker::new(), "q") }
/// let builder = builder()
///     .dependency(Pool)
///     .scoped(|_pool: Dep<Pool>, ctx: JobContext| async move {
///         Ok::<_, std::io::Error>(Tenant(ctx.headers.get("tenant").cloned().unwrap_or_default()))
///     });
/// ```
///
/// Annotate the closure's argument types: they say what the factory needs, and the worker
/// checks at `build()` that each is registered.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a longshore factory of `{T}`",
    label = "not a per-job factory",
    note = "a factory is an async function or closure `|a: Dep<A>, ctx: JobContext, ..| async move {{ .. }}` returning `Result<{T}, E>` with `E: Into<JobError>`; annotate the closure's argument types; at most 8 arguments"
)]
pub trait Factory<T, Args>: Clone + Send + Sync + 'static {
    /// Builds the value for the job of `scope`.
    fn build(&self, scope: Scope) -> BoxFuture<'static, Result<T, JobError>>;

    /// The container types the factory's arguments need.
    fn requirements() -> Vec<Requirement>;
}

macro_rules! impl_factory {
    ($($arg:ident),*) => {
        #[allow(non_snake_case, unused_mut)]
        impl<F, Fut, T, E, $($arg,)*> Factory<T, ($($arg,)*)> for F
        where
            F: Fn($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<T, E>> + Send + 'static,
            T: Send + 'static,
            E: Into<JobError>,
            $($arg: FromScope + 'static,)*
        {
            fn build(&self, scope: Scope) -> BoxFuture<'static, Result<T, JobError>> {
                let factory = self.clone();
                Box::pin(async move {
                    let _ = &scope;
                    $(let $arg = $arg::from_scope(&scope).await?;)*
                    factory($($arg),*).await.map_err(Into::into)
                })
            }

            fn requirements() -> Vec<Requirement> {
                let mut out = Vec::new();
                $($arg::requirements(&mut out);)*
                out
            }
        }
    };
}

impl_factory!();
impl_factory!(A1);
impl_factory!(A1, A2);
impl_factory!(A1, A2, A3);
impl_factory!(A1, A2, A3, A4);
impl_factory!(A1, A2, A3, A4, A5);
impl_factory!(A1, A2, A3, A4, A5, A6);
impl_factory!(A1, A2, A3, A4, A5, A6, A7);
impl_factory!(A1, A2, A3, A4, A5, A6, A7, A8);
