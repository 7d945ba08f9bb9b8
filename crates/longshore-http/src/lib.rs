//! [longshore](https://docs.rs/longshore) over HTTP, on axum:
//!
//! - [`router`]: the job-status API for frontends ([`jobs`]);
//! - [`probes`]: `/healthz`, `/readyz` and `/metrics` for containers and Prometheus;
//! - [`Dashboard`]: a page and its API to watch queues, workers and jobs, and to redrive
//!   dead letters.
//!
//! Each is an axum router: mount it in your own app, or merge them and [`serve`] them on a
//! listener of their own.
//!
//! ```no_run
//! use longshore_core::status::{JobStatuses, MemoryStatusStore};
//!
//! # async fn run() -> std::io::Result<()> {
//! let statuses = JobStatuses::new(MemoryStatusStore::new());
//! // In your own app, behind your own authentication (cancel is an action):
//! let app = axum::Router::new().nest("/api", longshore_http::router(statuses.clone()));
//! # let _ = app;
//! // Or on a listener of its own:
//! let server = longshore_http::serve("0.0.0.0:8081", longshore_http::router(statuses)).await?;
//! println!("job status on http://{}", server.local_addr());
//! # Ok(()) }
//! ```
//!
//! Frontends on another origin need CORS; add `tower_http::cors::CorsLayer` to the router.

pub mod dashboard;
pub mod jobs;
pub mod metrics;
mod probes;
mod serve;

use axum::Router;
use axum::routing::{get, post};
use longshore_core::status::JobStatuses;

pub use dashboard::Dashboard;
pub use metrics::Metrics;
pub use probes::probes;
pub use serve::{Server, serve};

/// The job-status routes (`/jobs/{id}`, `/jobs/{id}/events`, `/jobs/{id}/cancel`) on
/// `statuses`. Mount it with `Router::nest` or `Router::merge`.
pub fn router(statuses: JobStatuses) -> Router {
    let state = jobs::Jobs {
        notices: jobs::Notices::start(&statuses),
        statuses,
    };
    Router::new()
        .route("/jobs/{id}", get(jobs::get))
        .route("/jobs/{id}/events", get(jobs::events))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .with_state(state)
}
