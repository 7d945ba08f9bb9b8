//! [`Job`] types and the [`JobError`] a handler returns.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::broker::BoxError;

/// A job type: a serde value with a stable name that finds its handler.
///
/// ```
/// use longshore_core::Job;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendWelcomeEmail {
///     user_id: u64,
/// }
///
/// impl Job for SendWelcomeEmail {
///     const NAME: &'static str = "send_welcome_email";
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The job name on the wire (`longshore-job` header). Renaming the Rust type is safe;
    /// changing this strands messages already queued.
    const NAME: &'static str;
}

/// Why a job attempt failed, and whether trying again can help.
///
/// `?` on any `std::error::Error` gives a [`Retryable`](JobError::Retryable) error; say
/// [`JobError::permanent`] (or [`.permanent()`](ResultExt::permanent)) for inputs that will
/// never succeed, so they go to the dead-letter queue at once.
pub enum JobError {
    /// A transient failure: retry with backoff until attempts run out.
    Retryable(BoxError),
    /// A failure no retry can fix: dead-letter at once.
    Permanent(BoxError),
}

impl JobError {
    /// A retryable error from any error or message.
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        JobError::Retryable(error.into())
    }

    /// A permanent error from any error or message.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        JobError::Permanent(error.into())
    }

    /// The retryable failure of something that panicked: `what` says what it was (`the
    /// handler`, `the disposer of ..`), `payload` is the panic's payload.
    pub(crate) fn panicked(what: &str, payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("non-string panic payload");
        JobError::Retryable(format!("{what} panicked: {message}").into())
    }

    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, JobError::Retryable(_))
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        match self {
            JobError::Retryable(e) | JobError::Permanent(e) => e.as_ref(),
        }
    }
}

impl<E> From<E> for JobError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        JobError::Retryable(Box::new(error))
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.source(), f)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retryable(e) => f.debug_tuple("Retryable").field(e).finish(),
            JobError::Permanent(e) => f.debug_tuple("Permanent").field(e).finish(),
        }
    }
}

/// `?` on a `JobError` in a function returning `Box<dyn Error + Send + Sync>` (a test, `main`).
impl From<JobError> for Box<dyn std::error::Error + Send + Sync + 'static> {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Retryable(e) | JobError::Permanent(e) => e,
        }
    }
}

/// `?` on a `JobError` in a function returning `Box<dyn Error>` (a test, `main`).
impl From<JobError> for Box<dyn std::error::Error + 'static> {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Retryable(e) | JobError::Permanent(e) => e,
        }
    }
}

/// Marks the error of a `Result` as permanent or retryable.
pub trait ResultExt<T> {
    /// Turns the error into [`JobError::Permanent`].
    fn permanent(self) -> Result<T, JobError>;
    /// Turns the error into [`JobError::Retryable`].
    fn retryable(self) -> Result<T, JobError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn permanent(self) -> Result<T, JobError> {
        self.map_err(JobError::permanent)
    }

    fn retryable(self) -> Result<T, JobError> {
        self.map_err(JobError::retryable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &str) -> Result<u32, JobError> {
        Ok(input.parse::<u32>()?)
    }

    #[test]
    fn a_job_error_converts_into_a_boxed_error() {
        fn main_like() -> Result<(), Box<dyn std::error::Error>> {
            Err(JobError::permanent("no such customer"))?;
            Ok(())
        }
        assert_eq!(main_like().unwrap_err().to_string(), "no such customer");
    }

    #[test]
    fn question_mark_means_retryable_and_permanent_is_explicit() {
        assert!(parse("x").unwrap_err().is_retryable());
        let permanent: Result<u32, JobError> = "x".parse::<u32>().permanent();
        assert!(!permanent.unwrap_err().is_retryable());
        assert_eq!(
            JobError::permanent("bad address").to_string(),
            "bad address"
        );
    }
}
