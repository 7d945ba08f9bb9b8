//! A worker process for the signal tests: runs probe jobs on the in-memory broker until
//! SIGTERM/SIGINT, then prints its report and what is left in the queue.
//!
//! Usage: `signal_worker <sleep|hang> <jobs> <concurrency>`. Prints `ready` once
//! `concurrency` jobs are running.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::harness::{Behaviour, Probe, Recorder, probe};
use longshore::{Broker, MemoryBroker, Producer, QueueName, QueueOptions, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let (mode, jobs, concurrency) = match args.as_slice() {
        [_, mode, jobs, concurrency] => (
            mode.clone(),
            jobs.parse::<u32>()?,
            concurrency.parse::<usize>()?,
        ),
        _ => return Err("usage: signal_worker <sleep|hang> <jobs> <concurrency>".into()),
    };
    let behaviour = match mode.as_str() {
        "sleep" => Behaviour::Sleep(500),
        "hang" => Behaviour::HangUntilCancelled,
        other => return Err(format!("unknown mode `{other}`").into()),
    };
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    let queue = QueueName::new("signals");
    broker.declare(&queue, &QueueOptions::default()).await?;
    let producer = Producer::new(Arc::clone(&broker), queue.clone());
    for key in 0..jobs {
        producer.enqueue(&Probe { key, behaviour }).await?;
    }
    let recorder = Arc::new(Recorder::default());
    let worker = Worker::builder(Arc::clone(&broker), queue.clone())
        .dependency_arc(Arc::clone(&recorder))
        .handler(probe)
        .concurrency(concurrency)
        .shutdown_timeout(Duration::from_secs(60))
        .build()?;
    let watcher = Arc::clone(&recorder);
    tokio::spawn(async move {
        while watcher.running() < concurrency {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!("jobs running: ready");
    });
    let report = worker.run().await?;
    let left = broker.stats(&queue).await?;
    println!(
        "report succeeded={} released={} immediate={} ready={}",
        report.stats.succeeded, report.stats.released, report.immediate, left.ready
    );
    Ok(())
}
