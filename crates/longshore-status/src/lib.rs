//! Job status stores for [longshore](https://docs.rs/longshore) on real servers:
//! [`PostgresStatusStore`] (feature `postgres`) and [`RedisStatusStore`] (feature
//! `redis`). The in-memory store and what the stores are for live in
//! `longshore_core::status`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use longshore_core::status::JobStatuses;
//!
//! let statuses = longshore_status::connect("redis://127.0.0.1:6379/0").await?;
//! // or with the application's own pool:
//! let pool = sqlx::PgPool::connect("postgres://app@db/app").await?;
//! let store = longshore_status::PostgresStatusStore::new(pool);
//! store.migrate().await?;
//! let statuses = JobStatuses::new(store);
//! # let _ = statuses; Ok(()) }
//! ```

#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;

use longshore_core::status::{JobStatuses, MemoryStatusStore, StatusError};

#[cfg(feature = "postgres")]
pub use postgres::{CANCEL_CHANNEL, CHANNEL, MIGRATION, PostgresStatusStore};
#[cfg(feature = "redis")]
pub use redis::RedisStatusStore;

/// Connects to the store a URL names: `postgres://…` or `postgresql://…` (feature
/// `postgres`; creates the schema if missing), `redis://…` or `rediss://…` (feature
/// `redis`), or `memory://` (this process only).
pub async fn connect(url: &str) -> Result<JobStatuses, StatusError> {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    match scheme {
        "memory" => Ok(JobStatuses::new(MemoryStatusStore::new())),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(JobStatuses::new(PostgresStatusStore::connect(url).await?)),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(JobStatuses::new(RedisStatusStore::connect(url).await?)),
        _ => Err(StatusError::Store(
            format!(
                "unsupported job status store URL `{}`: expected {}",
                redacted(url),
                supported()
            )
            .into(),
        )),
    }
}

/// The schemes this build supports.
fn supported() -> &'static str {
    match (cfg!(feature = "postgres"), cfg!(feature = "redis")) {
        (true, true) => "postgres://, redis:// or memory://",
        (true, false) => "postgres:// or memory:// (enable the `redis` feature for redis://)",
        (false, true) => "redis:// or memory:// (enable the `postgres` feature for postgres://)",
        (false, false) => "memory:// (enable the `postgres` or `redis` feature)",
    }
}

/// The URL with anything between `//` and `@` hidden.
fn redacted(url: &str) -> String {
    match (url.find("//"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}***{}", &url[..start + 2], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_schemes_list_the_supported_ones_and_hide_secrets() {
        let error = connect("mongodb://admin:hunter2@db/x").await.unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("expected postgres://, redis:// or memory://"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }
}
