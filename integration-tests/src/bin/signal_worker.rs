//! A worker process for the signal and crash tests: runs probe jobs until SIGTERM/SIGINT,
//! then prints its report and what is left in the queue.
//!
//! Usage: `signal_worker <sleep|hang|stall> <jobs> <concurrency> [<broker url> <queue>]`.
//! Enqueues `jobs` probes first (on the in-memory broker when no URL is given), and prints
//! `jobs running: ready` once `concurrency` jobs are running.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::harness::{Behaviour, Probe, Recorder, probe};
use longshore::{Broker, Producer, QueueName, QueueOptions, Topology, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let (mode, jobs, concurrency, url, queue) = match args.as_slice() {
        [_, mode, jobs, concurrency] => (mode, jobs, concurrency, "memory://", "signals"),
        [_, mode, jobs, concurrency, url, queue] => {
            (mode, jobs, concurrency, url.as_str(), queue.as_str())
        }
        _ => {
            return Err(
                "usage: signal_worker <sleep|hang|stall> <jobs> <concurrency> [<url> <queue>]"
                    .into(),
            );
        }
    };
    let (jobs, concurrency) = (jobs.parse::<u32>()?, concurrency.parse::<usize>()?);
    let behaviour = match mode.as_str() {
        "sleep" => Behaviour::Sleep(500),
        "hang" => Behaviour::HangUntilCancelled,
        "stall" => Behaviour::StallUntil(2),
        other => return Err(format!("unknown mode `{other}`").into()),
    };
    let broker: Arc<dyn Broker> = longshore::connect(url).await?;
    let queue = QueueName::new(queue);
    // On a real broker the test declared the queue: plug into it as it is.
    let topology = if url == "memory://" {
        broker.declare(&queue, &QueueOptions::default()).await?;
        Topology::Declare
    } else {
        broker.verify(&queue).await?;
        Topology::Verify
    };
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
        .topology(topology)
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
