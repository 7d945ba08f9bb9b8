//! The README's Rust snippets, compiled and run: each snippet in README.md is quoted from
//! this file (a test in `integration-tests/tests/readme.rs` checks that every one is here).
//!
//! Run with `cargo run --example readme`: it runs the billing worker of "A handler" on the
//! embedded broker and checks that it commits on success, rolls back on failure, and that a
//! missing dependency fails at `build()`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longshore::testing::TestJob;
use longshore::{
    Broker, BuildError, Dep, Job, JobContext, JobError, MemoryBroker, Producer, QueueOptions,
    ResultExt, Worker,
};
use serde::{Deserialize, Serialize};

// --- README: A handler ---
#[derive(Serialize, Deserialize)]
struct SendInvoice {
    customer: String,
    cents: u64,
}

impl Job for SendInvoice {
    const NAME: &'static str = "send_invoice"; // the name on the wire: keep it stable
}

async fn send_invoice(
    job: SendInvoice,
    mailer: Dep<Mailer>,  // process-wide or per-job: the handler cannot tell
    tx: Dep<Transaction>, // per job, built lazily, committed or rolled back when it ends
    ctx: JobContext,      // id, attempt, queue, trigger, enqueue time, headers
) -> Result<(), JobError> {
    let cents = i64::try_from(job.cents).permanent()?; // can never work: dead-letter now
    tx.record(&job.customer, cents)?; // `?` on an error: retry with backoff
    mailer.send(&job.customer, cents, ctx.attempt.get()).await?;
    Ok(())
}
// --- end ---

/// A stand-in for a database pool, cheap to clone as sqlx's `PgPool` is: what was
/// committed, how many transactions rolled back.
#[derive(Clone, Default)]
pub struct Pool(Arc<PoolState>);

/// What the stand-in pool holds.
#[derive(Default)]
pub struct PoolState {
    committed: Mutex<Vec<String>>,
    rolled_back: AtomicUsize,
}

/// A stand-in for a database error.
#[derive(Debug)]
pub struct DbError(&'static str);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DbError {}

/// A stand-in for a database transaction: commit consumes it, as sqlx's does.
pub struct Transaction {
    pool: Pool,
    pending: Mutex<Vec<String>>,
}

impl Transaction {
    async fn begin(pool: &Pool) -> Result<Transaction, DbError> {
        Ok(Transaction {
            pool: pool.clone(),
            pending: Mutex::default(),
        })
    }

    fn record(&self, customer: &str, cents: i64) -> Result<(), DbError> {
        self.pending
            .lock()
            .map_err(|_| DbError("poisoned"))?
            .push(format!("{customer}: {cents}"));
        Ok(())
    }

    async fn commit(self) -> Result<(), DbError> {
        let pending = self.pending.into_inner().map_err(|_| DbError("poisoned"))?;
        self.pool
            .0
            .committed
            .lock()
            .map_err(|_| DbError("poisoned"))?
            .extend(pending);
        Ok(())
    }

    async fn rollback(self) -> Result<(), DbError> {
        self.pool.0.rolled_back.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A stand-in mailer whose first try for `flaky` customers fails.
#[derive(Default)]
pub struct Mailer {
    sent: Mutex<Vec<String>>,
}

impl Mailer {
    fn new() -> Self {
        Self::default()
    }

    async fn send(&self, customer: &str, cents: i64, attempt: u32) -> Result<(), DbError> {
        if customer.starts_with("flaky") && attempt == 1 {
            return Err(DbError("mail server busy"));
        }
        self.sent
            .lock()
            .map_err(|_| DbError("poisoned"))?
            .push(format!("{customer}: {cents}"));
        Ok(())
    }
}

/// The worker of "A handler", with the pool it commits to.
pub fn billing_worker(broker: Arc<dyn Broker>, pool: Pool) -> Result<Worker, BuildError> {
    // --- README: A handler (worker) ---
    let worker = Worker::builder(broker, "billing")
        .dependency(Mailer::new()) // root: one for the process
        .dependency(pool) // the database pool
        .scoped_with_disposer(
            |pool: Dep<Pool>| async move { Transaction::begin(&pool).await },
            |tx: Transaction, succeeded| async move {
                if succeeded {
                    tx.commit().await
                } else {
                    tx.rollback().await
                }
            },
        )
        .handler(send_invoice)
        .concurrency(32)
        .build()?; // fails here, not at job time, if anything a handler or factory asks for is missing
    // --- end ---
    Ok(worker)
}

/// The same worker without the pool: what the README once showed. It fails at `build()`.
pub fn billing_worker_without_pool(broker: Arc<dyn Broker>) -> Result<Worker, BuildError> {
    Worker::builder(broker, "billing")
        .dependency(Mailer::new())
        .scoped_with_disposer(
            |pool: Dep<Pool>| async move { Transaction::begin(&pool).await },
            |tx: Transaction, succeeded| async move {
                if succeeded {
                    tx.commit().await
                } else {
                    tx.rollback().await
                }
            },
        )
        .handler(send_invoice)
        .build()
}

/// The unit test of "Testing a handler".
pub async fn handler_unit_test() -> Result<(), JobError> {
    // --- README: Testing a handler ---
    let pool = Pool::default();
    let result = TestJob::new()
        .dependency(Mailer::new())
        .dependency(pool.clone())
        .scoped_with_disposer(
            |pool: Dep<Pool>| async move { Transaction::begin(&pool).await },
            |tx: Transaction, succeeded| async move {
                if succeeded {
                    tx.commit().await
                } else {
                    tx.rollback().await
                }
            },
        )
        .run(
            send_invoice,
            SendInvoice {
                customer: "acme".into(),
                cents: 4200,
            },
        )
        .await;
    assert!(result.is_ok());
    assert_eq!(pool.0.committed.lock().unwrap().len(), 1);
    // --- end ---
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Reminder {
    to: String,
}

impl Job for Reminder {
    const NAME: &'static str = "reminder";
}

#[derive(Serialize, Deserialize)]
struct Heartbeat {
    target: String,
}

impl Job for Heartbeat {
    const NAME: &'static str = "heartbeat";
}

#[derive(Serialize, Deserialize)]
struct MorningReport;

impl Job for MorningReport {
    const NAME: &'static str = "morning_report";
}

async fn heartbeat(_job: Heartbeat) -> Result<(), JobError> {
    Ok(())
}

async fn morning_report(_job: MorningReport) -> Result<(), JobError> {
    Ok(())
}

/// "Delayed jobs and cron schedules".
pub async fn delays_and_schedules(
    broker: Arc<dyn Broker>,
    producer: Producer,
) -> Result<Worker, Box<dyn std::error::Error>> {
    // --- README: Delayed jobs and cron schedules ---
    use longshore::schedule::{CatchUp, Schedule, Tz};
    use std::time::SystemTime;

    producer
        .enqueue_in(&Reminder { to: "ops".into() }, Duration::from_secs(90))
        .await?;
    producer
        .enqueue_at(
            &Reminder { to: "ops".into() },
            SystemTime::now() + Duration::from_secs(86_400 * 60),
        )
        .await?;

    let worker = Worker::builder(broker, "maintenance")
        .handler(heartbeat)
        .handler(morning_report)
        // Six fields: seconds first. Five fields are crontab's minute-level ones.
        .schedule("heartbeat", "*/30 * * * * *", Tz::UTC, || Heartbeat {
            target: "payments".into(),
        })
        .add_schedule(
            Schedule::new(
                "morning-report",
                "0 9 * * MON-FRI",
                Tz::Europe__Paris,
                || MorningReport,
            )?
            .catch_up(CatchUp::RunEach { max: 3 }),
        )
        .build()?;
    // --- end ---
    Ok(worker)
}

/// What one run of the billing worker did.
#[derive(Debug, PartialEq, Eq)]
pub struct Ledger {
    /// Entries committed, sorted.
    pub committed: Vec<String>,
    /// Transactions rolled back.
    pub rolled_back: usize,
    /// Jobs dead-lettered.
    pub dead_lettered: u64,
}

/// Runs the billing worker on the embedded broker over three invoices: one succeeds, one
/// fails once (rolled back) and then succeeds, one can never work (dead-lettered).
pub async fn run_billing() -> Result<Ledger, Box<dyn std::error::Error>> {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    broker
        .declare(&"billing".into(), &QueueOptions::default())
        .await?;
    let invoices = Producer::new(Arc::clone(&broker), "billing");
    for (customer, cents) in [("acme", 4200), ("flaky-corp", 990), ("overflow", u64::MAX)] {
        invoices
            .enqueue(&SendInvoice {
                customer: customer.into(),
                cents,
            })
            .await?;
    }
    let pool = Pool::default();
    let worker = billing_worker(broker, pool.clone())?;
    let (stats, shutdown) = (worker.stats(), worker.shutdown_handle());
    let running = tokio::spawn(worker.run_until_stopped());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats.snapshot().succeeded + stats.snapshot().dead_lettered < 3 {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("jobs did not finish: {:?}", stats.snapshot()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.shutdown();
    let report = running.await??;
    let mut committed = pool.0.committed.lock().map_err(|_| "poisoned")?.clone();
    committed.sort();
    Ok(Ledger {
        committed,
        rolled_back: pool.0.rolled_back.load(Ordering::SeqCst),
        dead_lettered: report.stats.dead_lettered,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ledger = run_billing().await?;
    println!("{ledger:?}");
    assert_eq!(ledger.committed, ["acme: 4200", "flaky-corp: 990"]);
    // The flaky invoice's first attempt and the overflowing one both rolled back.
    assert_eq!((ledger.rolled_back, ledger.dead_lettered), (2, 1));
    let error = billing_worker_without_pool(Arc::new(MemoryBroker::new()))
        .err()
        .ok_or("the worker without a pool must not build")?;
    println!("without the pool: {error}");
    assert!(error.to_string().contains("Pool"));
    handler_unit_test().await?;

    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    broker
        .declare(&"maintenance".into(), &QueueOptions::default())
        .await?;
    let producer = Producer::new(Arc::clone(&broker), "maintenance");
    delays_and_schedules(broker, producer).await?;
    Ok(())
}
