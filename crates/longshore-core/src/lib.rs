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
mod context;
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
pub use producer::{EnqueueError, EnqueueOptions, Producer};
pub use retry::RetryPolicy;
pub use runtime::{
    BuildError, Health, JobOptions, JobRequest, Layer, Next, Shutdown, StatsSnapshot, Worker,
    WorkerBuilder, WorkerError, WorkerReport, WorkerStats,
};
pub use scope::{Dep, Factory, FromScope, Scope};
pub use url::BrokerUrl;
