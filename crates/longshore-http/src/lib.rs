//! [longshore](https://docs.rs/longshore) over HTTP, on axum: the job-status API for
//! frontends ([`jobs`]), as a router to mount in your own axum app or as a listener of its
//! own.
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

pub mod jobs;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{get, post};
use longshore_core::status::JobStatuses;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;

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

/// A listener serving a router; stops when dropped (or at [`Server::shutdown`]).
#[derive(Debug)]
pub struct Server {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops listening.
    pub fn shutdown(self) {
        self.task.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on `address` until the returned [`Server`] is dropped.
pub async fn serve(address: impl ToSocketAddrs, router: Router) -> std::io::Result<Server> {
    let listener = TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "HTTP listening");
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "the HTTP listener stopped");
        }
    });
    Ok(Server { address, task })
}
