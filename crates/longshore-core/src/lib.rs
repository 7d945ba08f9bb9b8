//! The core of [longshore](https://docs.rs/longshore): the vocabulary every broker adapter
//! speaks, the runtime, the per-job scope container, the retry policy and the in-memory
//! broker. Applications depend on the `longshore` crate, which re-exports all of this.
//!
//! ```
//! use std::sync::Arc;
//! use longshore_core::{Broker, Dep, Job, JobError, MemoryBroker, Producer, QueueOptions, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize { image: String }
//! impl Job for Resize { const NAME: &'static str = "resize"; }
//!
//! struct Storage;
//!
//! async fn resize(job: Resize, _storage: Dep<Storage>) -> Result<(), JobError> {
//!     if job.image.is_empty() {
//!         return Err(JobError::permanent("no image name"));
//!     }
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
//! broker.declare(&"images".into(), &QueueOptions::default()).await?;
//! Producer::new(broker.clone(), "images").enqueue(&Resize { image: "cat.png".into() }).await?;
//!
//! let worker = Worker::builder(broker.clone(), "images")
//!     .dependency(Storage)
//!     .handler(resize)
//!     .build()?;
//! let stats = worker.stats();
//! let shutdown = worker.shutdown_handle();
//! let running = tokio::spawn(worker.run_until_stopped());
//! while stats.snapshot().succeeded < 1 {
//!     tokio::task::yield_now().await;
//! }
//! shutdown.shutdown();
//! let report = running.await??;
//! assert_eq!(report.stats.succeeded, 1);
//! # Ok(())
//! # }
//! ```

mod broker;
pub mod check;
mod context;
pub mod dead_letters;
mod delivery;
mod handler;
mod job;
mod memory;
mod message;
mod names;
mod outcome;
mod producer;
mod retry;
mod runtime;
pub mod schedule;
mod scope;
pub mod spi;
pub mod status;
mod telemetry;
pub mod testing;
mod url;

pub use async_trait::async_trait;
pub use broker::{Broker, BrokerError, IntoBroker, QueueOptions, QueueStats, Topology};
pub use context::{JobContext, Trigger};
pub use handler::Handler;
pub use job::{Job, JobError, ResultExt};
pub use memory::MemoryBroker;
pub use names::{Attempt, JobName, MessageId, QueueName};
pub use outcome::Outcome;
pub use producer::{ENQUEUE_WINDOW, EnqueueError, EnqueueOptions, Producer};
pub use retry::RetryPolicy;
pub use runtime::{
    BuildError, Health, JobOptions, JobRequest, Layer, Next, Shutdown, StatsSnapshot, Worker,
    WorkerBuilder, WorkerError, WorkerReport, WorkerStats,
};
pub use scope::{Dep, Factory, FromScope, Scope};
pub use url::BrokerUrl;

/// `<host>:<pid>`, how this process names itself in job statuses and schedule records: the
/// host from the kernel (or `HOSTNAME`), the process id.
pub fn process_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}:{}", std::process::id())
}

/// The crates whose TRACE output carries broker frames (lapin logs the SASL response, with
/// the password bytes, at TRACE).
const FRAME_LOGGERS: [&str; 2] = ["lapin", "amq_protocol"];

/// A log filter (`RUST_LOG` syntax) that keeps broker frames out unless named: `filter`
/// with `lapin=info,amq_protocol=info` added when it does not mention them itself. What
/// `longshore::otel::init` and the `longshore` command log with; use it for your own
/// subscriber too.
pub fn log_filter(filter: &str) -> String {
    let mut out = filter.trim().to_owned();
    for crate_name in FRAME_LOGGERS {
        if !filter.contains(crate_name) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(crate_name);
            out.push_str("=info");
        }
    }
    out
}

#[cfg(test)]
mod log_filter_tests {
    #[test]
    fn broker_frames_stay_out_unless_named() {
        assert_eq!(
            super::log_filter("trace"),
            "trace,lapin=info,amq_protocol=info"
        );
        assert_eq!(super::log_filter(""), "lapin=info,amq_protocol=info");
        assert_eq!(
            super::log_filter("info,lapin=trace"),
            "info,lapin=trace,amq_protocol=info"
        );
    }
}
