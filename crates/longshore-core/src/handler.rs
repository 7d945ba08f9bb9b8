//! Handlers: plain async functions taking the job and what they need, by type.
//!
//! The generics live here, not in the user's signature: any
//! `async fn(J, A1, .., An) -> Result<(), E>` with `J: Job`, each `Ai: FromScope` (up to
//! eight) and `E: Into<JobError>` is a [`Handler`].

use std::future::Future;
use std::marker::PhantomData;

use futures_util::future::BoxFuture;

use crate::job::{Job, JobError};
use crate::scope::{FromScope, Requirement, Scope};

/// An async function that runs jobs of type `J`, taking extractor arguments `Args`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a longshore handler for job `{J}`",
    label = "not a handler",
    note = "a handler is an `async fn(job: {J}, ..) -> Result<(), E>` where `{J}: Job`, every later argument implements `FromScope` (`Dep<T>`, `JobContext`, `Scope`) and `E: Into<JobError>`; at most 8 arguments after the job"
)]
pub trait Handler<J, Args>: Clone + Send + Sync + 'static {
    /// Runs the handler for `job` in `scope`.
    fn call<'a>(&'a self, job: J, scope: &'a Scope) -> BoxFuture<'a, Result<(), JobError>>;

    /// The container types the handler's arguments need.
    fn requirements() -> Vec<Requirement>;
}

macro_rules! impl_handler {
    ($($arg:ident),*) => {
        #[allow(non_snake_case, unused_mut)]
        impl<F, Fut, E, J, $($arg,)*> Handler<J, ($($arg,)*)> for F
        where
            F: Fn(J, $($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = Result<(), E>> + Send,
            E: Into<JobError>,
            J: Job,
            $($arg: FromScope,)*
        {
            fn call<'a>(&'a self, job: J, scope: &'a Scope) -> BoxFuture<'a, Result<(), JobError>> {
                let _ = scope;
                Box::pin(async move {
                    $(let $arg = $arg::from_scope(scope).await?;)*
                    (self)(job, $($arg),*).await.map_err(Into::into)
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

impl_handler!();
impl_handler!(A1);
impl_handler!(A1, A2);
impl_handler!(A1, A2, A3);
impl_handler!(A1, A2, A3, A4);
impl_handler!(A1, A2, A3, A4, A5);
impl_handler!(A1, A2, A3, A4, A5, A6);
impl_handler!(A1, A2, A3, A4, A5, A6, A7);
impl_handler!(A1, A2, A3, A4, A5, A6, A7, A8);

/// A handler with its job type erased: decodes the body, then calls the typed handler.
pub(crate) trait ErasedHandler: Send + Sync {
    fn call<'a>(&'a self, body: &'a [u8], scope: &'a Scope) -> BoxFuture<'a, Result<(), JobError>>;
}

pub(crate) struct TypedHandler<J, Args, H> {
    handler: H,
    _marker: PhantomData<fn() -> (J, Args)>,
}

impl<J, Args, H> TypedHandler<J, Args, H> {
    pub(crate) fn new(handler: H) -> Self {
        Self {
            handler,
            _marker: PhantomData,
        }
    }
}

impl<J, Args, H> ErasedHandler for TypedHandler<J, Args, H>
where
    J: Job,
    H: Handler<J, Args>,
    Args: 'static,
{
    fn call<'a>(&'a self, body: &'a [u8], scope: &'a Scope) -> BoxFuture<'a, Result<(), JobError>> {
        match serde_json::from_slice::<J>(body) {
            Ok(job) => self.handler.call(job, scope),
            Err(error) => Box::pin(std::future::ready(Err(JobError::permanent(format!(
                "undecodable body for job `{}`: {error}",
                J::NAME
            ))))),
        }
    }
}
