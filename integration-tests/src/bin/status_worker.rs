//! A worker process with job status, for the end-to-end status tests: runs `report` jobs
//! from a queue until killed.
//!
//! Usage: `status_worker <broker url> <queue> <status store url>`.

use integration_tests::report::report;
use longshore::{Topology, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_ansi(false).init();
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, store] = args.as_slice() else {
        return Err("usage: status_worker <broker url> <queue> <status store url>".into());
    };
    let broker = longshore::connect(url.as_str()).await?;
    let statuses = longshore::status_store::connect(store).await?;
    let worker = Worker::builder(broker, queue.as_str())
        .handler(report)
        .status(statuses)
        .topology(Topology::Verify)
        .build()?;
    println!("worker running");
    worker.run().await?;
    Ok(())
}
