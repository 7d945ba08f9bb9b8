//! The listener: axum routers served over HTTP/1.1 by hyper, with a small request head and
//! a read timeout, so probes and scrapers cannot be held up by a slow or oversized client.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinHandle;

/// The largest request head accepted (hyper's smallest buffer); larger heads get `431`.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

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
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "the HTTP listener could not accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let mut http = hyper::server::conn::http1::Builder::new();
                http.max_buf_size(MAX_HEAD)
                    .timer(TokioTimer::new())
                    .header_read_timeout(READ_TIMEOUT);
                if let Err(error) = http.serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(%error, "an HTTP connection ended with an error");
                }
            });
        }
    });
    Ok(Server { address, task })
}
