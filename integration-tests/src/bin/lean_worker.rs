//! The smallest RabbitMQ worker, for the memory benchmark (`scripts/bench rss`): what a
//! team's worker of one broker links (the RabbitMQ adapter, not `longshore::connect`'s
//! every broker), running `chaos` jobs and printing `done <n>` as `chaos_worker` does.
//!
//! Usage: `lean_worker <amqp url> <queue> <concurrency> <prefetch>`; the queue is declared
//! by the benchmark (the worker verifies it).

use std::sync::Arc;
use std::time::Duration;

use integration_tests::chaos::{chaos, init_worker_logs};
use longshore::amqp::AmqpBroker;
use longshore::{Broker, QueueName, Topology, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    init_worker_logs();
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue, concurrency, prefetch] = args.as_slice() else {
        return Err("usage: lean_worker <amqp url> <queue> <concurrency> <prefetch>".into());
    };
    let broker: Arc<dyn Broker> = Arc::new(AmqpBroker::connect(url.as_str()).await?);
    let queue = QueueName::new(queue);
    broker.verify(&queue).await?;
    let worker = Worker::builder(Arc::clone(&broker), queue)
        .dependency_arc(Arc::new(Duration::ZERO))
        .handler(chaos)
        .concurrency(concurrency.parse()?)
        .prefetch(prefetch.parse()?)
        .topology(Topology::Verify)
        .build()?;
    // Tells the benchmark the worker connected.
    println!("ready");
    worker.run().await?;
    Ok(())
}
