//! The background writer: workers hand it status changes and never wait for the store. It
//! writes them in order, in batches (one store call for everything that queued up while
//! the previous call ran), and keeps retrying while the store is down. Changes of one job
//! that wait together are written as one (an outage holds one change per job). A job's
//! `running` change lingers up to [`LINGER`] first: a job that ends sooner costs one write,
//! its final change carrying what `running` said (attempt, worker, start). Its buffer is
//! bounded: when it is full, new changes are dropped and counted in the log, never the job.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::model::Coalesced;
use super::{Change, StatusStore};

/// Changes waiting to be written, at most.
const BUFFER: usize = 65_536;
/// Changes written in one store call, at most.
const BATCH: usize = 512;
/// How often a full buffer or a failing store is logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a `running` change waits for the job's next change before it is written.
pub(crate) const LINGER: Duration = Duration::from_millis(50);

enum Command {
    /// A change, and who waits for it to be written (told whether it was).
    Write(Change, Option<oneshot::Sender<()>>),
    /// A change that may wait up to [`LINGER`] for a later one of the same job.
    Linger(Change),
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
        self.queue(Command::Write(change, None));
    }

    /// Queues `change` to be written within [`LINGER`], folded into the job's next change
    /// if that comes sooner.
    pub(crate) fn send_lingering(&self, change: Change) {
        self.queue(Command::Linger(change));
    }

    /// Queues `change` and waits until it is written, up to `timeout`; does not wait while
    /// the store is failing. Whether it was written.
    pub(crate) async fn send_confirmed(&self, change: Change, timeout: Duration) -> bool {
        if self.failing.load(Ordering::Relaxed) {
            self.queue(Command::Write(change, None));
            return false;
        }
        let (done, written) = oneshot::channel();
        self.queue(Command::Write(change, Some(done)));
        matches!(tokio::time::timeout(timeout, written).await, Ok(Ok(())))
    }

    fn queue(&self, command: Command) {
        if self.sender().try_send(command).is_err() {
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

/// `running` changes waiting out their [`LINGER`], oldest first.
#[derive(Default)]
struct Lingering {
    changes: std::collections::HashMap<crate::names::MessageId, Change>,
    /// When each was queued; ids whose change left early are skipped.
    order: std::collections::VecDeque<(Instant, crate::names::MessageId)>,
}

impl Lingering {
    /// Moves the changes whose time is up into `pending`.
    fn release_due(&mut self, pending: &mut Coalesced, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && *at + LINGER <= now
        {
            let (_, id) = self.order.pop_front().expect("a front");
            if let Some(change) = self.changes.remove(&id) {
                pending.push(change);
            }
        }
    }

    /// When the oldest is due.
    fn next_due(&self) -> Option<Instant> {
        self.order.front().map(|(at, _)| *at + LINGER)
    }

    /// Puts a change into `pending`, after the lingering one of its job.
    fn write(&mut self, pending: &mut Coalesced, change: Change) {
        if let Some(earlier) = self.changes.remove(&change.id) {
            pending.push(earlier);
        }
        pending.push(change);
    }

    fn linger(&mut self, change: Change) {
        self.order.push_back((Instant::now(), change.id.clone()));
        self.changes.insert(change.id.clone(), change);
    }

    /// Everything, for a flush.
    fn release_all(&mut self, pending: &mut Coalesced) {
        for (_, id) in self.order.drain(..) {
            if let Some(change) = self.changes.remove(&id) {
                pending.push(change);
            }
        }
    }
}

/// Takes one command into the batch being gathered.
fn take(
    command: Command,
    pending: &mut Coalesced,
    lingering: &mut Lingering,
    waiting: &mut Vec<oneshot::Sender<()>>,
) {
    match command {
        Command::Write(change, done) => {
            lingering.write(pending, change);
            waiting.extend(done);
        }
        Command::Linger(change) => lingering.linger(change),
        Command::Flush(done) => {
            lingering.release_all(pending);
            waiting.push(done);
        }
    }
}

async fn run(
    store: Arc<dyn StatusStore>,
    mut commands: mpsc::Receiver<Command>,
    failing: Arc<AtomicBool>,
) {
    let mut pending = Coalesced::default();
    let mut lingering = Lingering::default();
    // Told once everything before them is written: flushes, and confirmed changes.
    let mut waiting: Vec<oneshot::Sender<()>> = Vec::new();
    let mut wait = Duration::from_millis(100);
    let mut failing_since: Option<Instant> = None;
    let mut last_log: Option<Instant> = None;
    loop {
        lingering.release_due(&mut pending, Instant::now());
        if pending.is_empty() {
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            let command = match lingering.next_due() {
                Some(due) => tokio::select! {
                    command = commands.recv() => command,
                    () = tokio::time::sleep_until(due) => continue,
                },
                None => commands.recv().await,
            };
            let Some(command) = command else {
                lingering.release_all(&mut pending);
                if pending.is_empty() {
                    return;
                }
                let _ = store.apply(&pending.changes).await;
                return;
            };
            take(command, &mut pending, &mut lingering, &mut waiting);
            if pending.is_empty() {
                continue;
            }
            // Let the jobs that are ready run first: their changes join this batch (a
            // fast store would otherwise be called once per change).
            tokio::task::yield_now().await;
        }
        while pending.len() < BATCH {
            match commands.try_recv() {
                Ok(command) => take(command, &mut pending, &mut lingering, &mut waiting),
                Err(_) => break,
            }
        }
        match store.apply(&pending.changes).await {
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
