//! The background writer: workers hand it status changes and never wait for the store. It
//! writes them in order, in batches (one store call for everything that queued up while
//! the previous call ran), and keeps retrying while the store is down. Its buffer is
//! bounded: when it is full, new changes are dropped and counted in the log, never the job.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Change, StatusStore};

/// Changes waiting to be written, at most.
const BUFFER: usize = 65_536;
/// Changes written in one store call, at most.
const BATCH: usize = 512;
/// How often a full buffer or a failing store is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

enum Command {
    /// A change, and who waits for it to be written (told whether it was).
    Write(Change, Option<oneshot::Sender<()>>),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// A handle to the writer of one store; cheap to clone. The task starts with the first
/// change (within the runtime that sends it).
#[derive(Clone)]
pub(crate) struct Writer {
    store: Arc<dyn StatusStore>,
    sender: Arc<OnceLock<mpsc::Sender<Command>>>,
    /// Set while the store fails: nobody waits for a write then.
    failing: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    last_drop_log: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl Writer {
    pub(crate) fn new(store: Arc<dyn StatusStore>) -> Self {
        Self {
            store,
            sender: Arc::default(),
            failing: Arc::default(),
            dropped: Arc::default(),
            last_drop_log: Arc::default(),
        }
    }

    fn sender(&self) -> &mpsc::Sender<Command> {
        self.sender.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(BUFFER);
            tokio::spawn(run(
                Arc::clone(&self.store),
                receiver,
                Arc::clone(&self.failing),
            ));
            sender
        })
    }

    /// Queues `change`; drops it (logged) if the buffer is full.
    pub(crate) fn send(&self, change: Change) {
        self.queue(change, None);
    }

    /// Queues `change` and waits until it is written, up to `timeout`; does not wait while
    /// the store is failing. Whether it was written.
    pub(crate) async fn send_confirmed(&self, change: Change, timeout: Duration) -> bool {
        if self.failing.load(Ordering::Relaxed) {
            self.queue(change, None);
            return false;
        }
        let (done, written) = oneshot::channel();
        self.queue(change, Some(done));
        matches!(tokio::time::timeout(timeout, written).await, Ok(Ok(())))
    }

    fn queue(&self, change: Change, done: Option<oneshot::Sender<()>>) {
        if self
            .sender()
            .try_send(Command::Write(change, done))
            .is_err()
        {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self
                .last_drop_log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                *last = Some(Instant::now());
                tracing::error!(
                    dropped,
                    "the job status store is behind and {BUFFER} changes wait: status changes are \
                     dropped (the jobs run and settle; their status shows an older state)"
                );
            }
        }
    }

    /// Waits until what was queued before is written; `false` after `timeout`.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        let (done, written) = oneshot::channel();
        if self.sender().send(Command::Flush(done)).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, written).await, Ok(Ok(())))
    }
}

async fn run(
    store: Arc<dyn StatusStore>,
    mut commands: mpsc::Receiver<Command>,
    failing: Arc<AtomicBool>,
) {
    let mut pending: Vec<Change> = Vec::new();
    // Told once everything before them is written: flushes, and confirmed changes.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut wait = Duration::from_millis(100);
    let mut failing_since: Option<Instant> = None;
    let mut last_log: Option<Instant> = None;
    loop {
        if pending.is_empty() {
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            match commands.recv().await {
                Some(Command::Write(change, done)) => {
                    pending.push(change);
                    waiting.extend(done);
                }
                Some(Command::Flush(done)) => {
                    waiting.push(done);
                    continue;
                }
                None => return,
            }
        }
        while pending.len() < BATCH {
            match commands.try_recv() {
                Ok(Command::Write(change, done)) => {
                    pending.push(change);
                    waiting.extend(done);
                }
                Ok(Command::Flush(done)) => waiting.push(done),
                Err(_) => break,
            }
        }
        match store.apply(&pending).await {
            Ok(()) => {
                failing.store(false, Ordering::Relaxed);
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        down_for_ms = since.elapsed().as_millis() as u64,
                        "the job status store answers again; waiting changes are written"
                    );
                }
                pending.clear();
                wait = Duration::from_millis(100);
            }
            Err(error) => {
                failing.store(true, Ordering::Relaxed);
                failing_since.get_or_insert_with(Instant::now);
                if last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                    last_log = Some(Instant::now());
                    tracing::warn!(
                        %error,
                        waiting = pending.len() + commands.len(),
                        "cannot write job status changes; trying again (jobs are not held up)"
                    );
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
