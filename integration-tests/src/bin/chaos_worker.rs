//! A worker process for the chaos suite: runs `chaos` jobs and prints `done <n>` as each
//! one's handler finishes (before its ack: a job acked is always printed; a job printed
//! and then redelivered shows as a duplicate). Runs until SIGTERM.
//!
//! Usage: `chaos_worker <broker url> <queue> <concurrency> <prefetch> <job ms>`; the queue
//! is declared by the test (the worker verifies it).

use std::sync::Arc;
use std::time::Duration;

use integration_tests::chaos::{chaos, init_worker_logs};
use longshore::{Broker, QueueName, Topology, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_worker_logs();
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, concurrency, prefetch, job_ms] = args.as_slice() else {
        return Err("usage: chaos_worker <url> <queue> <concurrency> <prefetch> <job ms>".into());
    };
    let broker: Arc<dyn Broker> = longshore::connect(url.as_str()).await?;
    let queue = QueueName::new(queue);
    broker.verify(&queue).await?;
    let worker = Worker::builder(Arc::clone(&broker), queue)
        .dependency_arc(Arc::new(Duration::from_millis(job_ms.parse()?)))
        .handler(chaos)
        .concurrency(concurrency.parse()?)
        .prefetch(prefetch.parse()?)
        .shutdown_timeout(Duration::from_secs(30))
        .topology(Topology::Verify)
        .build()?;
    // Tells the test the worker connected.
    println!("ready");
    worker.run().await?;
    Ok(())
}
