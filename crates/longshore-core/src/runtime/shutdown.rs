//! [`Shutdown`]: asks a worker to stop, gracefully or at once; and the signal listener.

use tokio_util::sync::CancellationToken;

/// A handle that stops a running worker. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    pub(crate) graceful: CancellationToken,
    pub(crate) immediate: CancellationToken,
}

impl Shutdown {
    /// Graceful: stop fetching, let in-flight jobs finish up to the shutdown timeout,
    /// release the rest, return.
    pub fn shutdown(&self) {
        self.graceful.cancel();
    }

    /// At once: return without waiting; unsettled deliveries come back through the
    /// broker's redelivery.
    pub fn immediate(&self) {
        self.graceful.cancel();
        self.immediate.cancel();
    }

    /// Whether a graceful shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.graceful.is_cancelled()
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the worker");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// First signal: graceful shutdown; second: immediate.
pub(crate) async fn listen_for_signals(shutdown: Shutdown) {
    signal().await;
    tracing::info!(
        "shutdown signal received; finishing in-flight jobs (send it again to stop at once)"
    );
    shutdown.shutdown();
    signal().await;
    tracing::warn!("second shutdown signal; stopping at once");
    shutdown.immediate();
}
