//! longshore's quickstart: no services needed, everything runs on the embedded broker.
//!
//! It enqueues a batch of two job types: `charge_card` fails transiently on its first
//! attempt for some orders and succeeds on a retry; `send_receipt` fails permanently for
//! malformed addresses, which go to the dead-letter queue with the reason. Each job gets its
//! own `LedgerTx` from the scope container, committed when the job succeeds and rolled back
//! when it fails. Progress prints while it runs; a summary prints at the end.
//!
//! Run with `cargo run --example quickstart`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longshore::spi::headers;
use longshore::{
    Broker, Dep, Job, JobContext, JobError, MemoryBroker, Producer, QueueName, QueueOptions,
    RetryPolicy, Worker,
};
use serde::{Deserialize, Serialize};

/// Charge a card for an order (fails transiently once for every fifth order).
#[derive(Serialize, Deserialize)]
struct ChargeCard {
    order: u32,
    cents: u64,
}

impl Job for ChargeCard {
    const NAME: &'static str = "charge_card";
}

/// Email a receipt (fails permanently when the address is malformed).
#[derive(Serialize, Deserialize)]
struct SendReceipt {
    order: u32,
    email: String,
}

impl Job for SendReceipt {
    const NAME: &'static str = "send_receipt";
}

/// Process-wide: the committed ledger, shared by every job.
#[derive(Default)]
struct Ledger {
    committed: Mutex<Vec<String>>,
    rolled_back: Mutex<u32>,
}

/// Per job: a ledger transaction, committed by its disposer if the job succeeds.
struct LedgerTx {
    ledger: Arc<Ledger>,
    pending: Mutex<Vec<String>>,
}

impl LedgerTx {
    fn record(&self, entry: String) {
        self.pending.lock().expect("not poisoned").push(entry);
    }
}

async fn charge_card(job: ChargeCard, tx: Dep<LedgerTx>, ctx: JobContext) -> Result<(), JobError> {
    tx.record(format!("order {} charged {} cents", job.order, job.cents));
    tokio::time::sleep(Duration::from_millis(20)).await; // the payment gateway
    if job.order.is_multiple_of(5) && ctx.attempt.get() == 1 {
        return Err(JobError::retryable("payment gateway timed out"));
    }
    Ok(())
}

async fn send_receipt(job: SendReceipt, tx: Dep<LedgerTx>) -> Result<(), JobError> {
    if !job.email.contains('@') {
        return Err(JobError::permanent(format!(
            "order {}: `{}` is not an email address",
            job.order, job.email
        )));
    }
    tokio::time::sleep(Duration::from_millis(10)).await; // the mail server
    tx.record(format!("order {} receipt sent to {}", job.order, job.email));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()))
        .init();

    let memory = MemoryBroker::new();
    let broker: Arc<dyn Broker> = Arc::new(memory.clone());
    let queue = QueueName::new("orders");
    broker.declare(&queue, &QueueOptions::default()).await?;

    let orders = 40;
    let producer = Producer::new(Arc::clone(&broker), queue.clone());
    for order in 1..=orders {
        producer
            .enqueue(&ChargeCard {
                order,
                cents: 1_000 + u64::from(order),
            })
            .await?;
        let email = if order.is_multiple_of(13) {
            format!("customer{order}.example.com")
        } else {
            format!("customer{order}@example.com")
        };
        producer.enqueue(&SendReceipt { order, email }).await?;
    }
    let total = orders * 2;
    println!("enqueued {total} jobs ({orders} charge_card, {orders} send_receipt) on `{queue}`");

    let ledger = Arc::new(Ledger::default());
    let worker = Worker::builder(Arc::clone(&broker), queue.clone())
        .dependency(Arc::clone(&ledger))
        .scoped_with_disposer(
            |ledger: Dep<Arc<Ledger>>| async move {
                Ok::<_, JobError>(LedgerTx {
                    ledger: Arc::clone(&ledger),
                    pending: Mutex::default(),
                })
            },
            |tx: LedgerTx, succeeded| async move {
                let pending = tx.pending.into_inner().expect("not poisoned");
                if succeeded {
                    tx.ledger
                        .committed
                        .lock()
                        .expect("not poisoned")
                        .extend(pending);
                } else {
                    *tx.ledger.rolled_back.lock().expect("not poisoned") += 1;
                }
                Ok::<_, JobError>(())
            },
        )
        .handler(charge_card)
        .handler(send_receipt)
        .concurrency(8)
        .retry_policy(RetryPolicy::exponential(
            Duration::from_millis(50),
            Duration::from_secs(1),
            4,
        ))
        .build()?;
    let stats = worker.stats();
    let shutdown = worker.shutdown_handle();
    let started = Instant::now();
    let running = tokio::spawn(worker.run());

    // Progress until the queue is empty: nothing ready, delayed or in flight.
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stats.snapshot();
        let queued = broker.stats(&queue).await?;
        println!(
            "  progress: {:>2}/{total} done, {:>2} retries scheduled, {:>2} dead-lettered, {} running, {} waiting",
            now.succeeded,
            now.retried,
            now.dead_lettered,
            now.in_flight,
            queued.ready + queued.delayed.unwrap_or(0)
        );
        let idle = queued.ready == 0 && queued.delayed == Some(0) && queued.in_flight == Some(0);
        if idle || running.is_finished() {
            break;
        }
    }
    shutdown.shutdown();
    let report = running.await??;

    let dead = memory.messages(&queue.dead_letter_queue())?;
    println!("\nsummary after {:.2?}", started.elapsed());
    println!("  done:          {}", report.stats.succeeded);
    println!(
        "  retried:       {} (each succeeded on a later attempt)",
        report.stats.retried
    );
    println!("  dead-lettered: {}", report.stats.dead_lettered);
    for message in &dead {
        println!(
            "    - {} {}: {}",
            message.job,
            message.id,
            message
                .headers
                .get(headers::DEAD_REASON)
                .map_or("(no reason)", String::as_str)
        );
    }
    println!(
        "  ledger:        {} entries committed, {} job transactions rolled back",
        ledger.committed.lock().expect("not poisoned").len(),
        ledger.rolled_back.lock().expect("not poisoned")
    );
    let accounted = report.stats.succeeded + report.stats.dead_lettered;
    if accounted != u64::from(total) || dead.len() as u64 != report.stats.dead_lettered {
        return Err(format!("{accounted} of {total} jobs accounted for").into());
    }
    Ok(())
}
