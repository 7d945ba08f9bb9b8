//! Memory of release-built worker processes (built with the benchmark): `lean_worker`, a
//! RabbitMQ worker as a team writes one (the RabbitMQ adapter only), and `chaos_worker`,
//! which links every broker through `longshore::connect`. Each one's resident set idle
//! after start-up, then while it drains 100,000 jobs (sampled as it goes), and after.
//! RabbitMQ; no-op jobs, concurrency 16, prefetch 100.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use integration_tests::chaos::Chaos;
use longshore::{Producer, QueueName, QueueOptions};

use super::amqp;

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS")
}

pub(super) async fn run(jobs: u64) {
    let lean = measure(jobs, "lean_worker", env!("CARGO_BIN_EXE_lean_worker")).await;
    let full = measure(jobs, "chaos_worker", env!("CARGO_BIN_EXE_chaos_worker")).await;
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "\nresident memory of release-built workers (concurrency 16, prefetch 100, RabbitMQ), MiB"
    );
    println!(
        "{:<40} {:>28} {:>28}",
        "when", "lean_worker (RabbitMQ only)", "chaos_worker (every broker)"
    );
    for (row, (when, lean)) in lean.iter().enumerate() {
        let full = full.get(row).map_or(0, |(_, kib)| *kib);
        println!("{:<40} {:>28.1} {:>28.1}", when, mib(*lean), mib(full));
    }
}

/// Runs `binary` as a worker and returns its resident set (KiB) at each moment.
async fn measure(jobs: u64, name: &str, binary: &str) -> Vec<(String, u64)> {
    let broker = amqp::broker().await;
    let queue = QueueName::new("longshore-bench-rss");
    broker.delete(&queue).await.expect("delete");
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare");
    let mut args = vec![amqp::url(), queue.to_string(), "16".into(), "100".into()];
    if name == "chaos_worker" {
        // Its job length, in ms.
        args.push("0".into());
    }
    let mut child = Command::new(binary)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("start {name}: {error}"));
    let pid = child.id();
    let stdout = child.stdout.take().expect("piped");
    let done = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let counted = Arc::clone(&done);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "ready" {
                let _ = ready_tx.send(());
            } else if line.starts_with("done ") {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    ready
        .recv_timeout(Duration::from_secs(30))
        .expect("the worker started");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid);
    let producer = Producer::new(Arc::clone(&broker), queue.clone());
    let all: Vec<Chaos> = (0..jobs as u32)
        .map(|n| Chaos {
            n,
            fail: false,
            ms: None,
        })
        .collect();
    let filling = tokio::spawn(async move {
        for chunk in all.chunks(10_000) {
            for answer in producer.enqueue_many(chunk).await {
                answer.expect("enqueued");
            }
        }
    });
    let mut samples = Vec::new();
    let mut next_mark = jobs / 10;
    while done.load(Ordering::Relaxed) < jobs {
        let now = done.load(Ordering::Relaxed);
        if now >= next_mark {
            samples.push((now, rss_kib(pid)));
            next_mark += jobs / 10;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    filling.await.expect("enqueued");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = child.wait();
    broker.delete(&queue).await.expect("delete");
    let mut rows = vec![("idle, 2 s after start".to_owned(), idle)];
    rows.extend(
        samples
            .into_iter()
            .map(|(at, kib)| (format!("after {at} of {jobs} jobs"), kib)),
    );
    rows.push(("drained, 1 s later".to_owned(), after));
    rows
}
