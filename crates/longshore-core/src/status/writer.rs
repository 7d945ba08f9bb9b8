//! The background writer: workers hand it status changes and never wait for the store. It
//! writes them in order, in batches (one store call for everything that queued up while
//! the previous call ran), and keeps retrying while the store is down. Changes of one job
//! that wait together are written as one (an outage holds one change per job). A job's
//! `running` change lingers up to [`LINGER`] first: a job that ends sooner costs one write,
//! its final change carrying what `running` said (attempt, worker, start). Its buffer is
//! bounded: when it is full, new changes are dropped and counted in the log, never the job.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::model::{Coalesced, patch};
use super::{Change, StatusStore};
use crate::names::MessageId;

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
    /// A job's `running` change, which waits up to [`LINGER`] for a later one of the job.
    Running(Running),
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

    /// Queues a job's `running` change, written within [`LINGER`], or folded into the job's
    /// next change if that comes sooner (then never built).
    pub(crate) fn send_running(&self, running: Running) {
        self.queue(Command::Running(running));
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

/// A job's `running` change, kept as its parts until it is written: most jobs end within
/// [`LINGER`], and their final change takes these fields instead.
pub(crate) struct Running {
    /// The job.
    pub(crate) id: MessageId,
    /// The attempt that started.
    pub(crate) attempt: u32,
    /// The worker it runs on.
    pub(crate) worker: Arc<str>,
    /// When it started.
    pub(crate) started_at: SystemTime,
    /// When the status expires after this change.
    pub(crate) expires_at: SystemTime,
}

impl Running {
    /// The change it stands for, made when the attempt started.
    fn change(self) -> Change {
        let mut fields = serde_json::Map::new();
        patch::put_running(
            &mut fields,
            self.attempt,
            &self.worker,
            self.started_at,
            false,
        );
        Change::made_at(self.id, fields, self.expires_at, self.started_at)
    }

    /// Folds it under `later`, a later change of the same job: what
    /// `running.change().absorb(later)` gives, without building the `running` change.
    fn under(self, later: &mut Change) {
        debug_assert_eq!(self.id, later.id);
        patch::put_running(
            &mut later.patch,
            self.attempt,
            &self.worker,
            self.started_at,
            true,
        );
    }
}

/// `running` changes waiting out their [`LINGER`], oldest first.
#[derive(Default)]
struct Lingering {
    changes: std::collections::HashMap<MessageId, Running>,
    /// When each was queued; ids whose change left early are skipped.
    order: std::collections::VecDeque<(Instant, MessageId)>,
}

impl Lingering {
    /// Moves the changes whose time is up into `pending`.
    fn release_due(&mut self, pending: &mut Coalesced, now: Instant) {
        while let Some((at, _)) = self.order.front()
            && *at + LINGER <= now
        {
            let (_, id) = self.order.pop_front().expect("a front");
            if let Some(running) = self.changes.remove(&id) {
                pending.push(running.change());
            }
        }
    }

    /// When the oldest is due.
    fn next_due(&self) -> Option<Instant> {
        self.order.front().map(|(at, _)| *at + LINGER)
    }

    /// Puts a change into `pending`, with the lingering `running` change of its job folded
    /// under it.
    fn write(&mut self, pending: &mut Coalesced, mut change: Change) {
        if let Some(running) = self.changes.remove(&change.id) {
            running.under(&mut change);
        }
        pending.push(change);
    }

    /// Keeps `running` until its time is up or the job's next change comes (a later start
    /// of the same job replaces it: the later `running` change holds every field it had).
    fn linger(&mut self, running: Running) {
        self.order.push_back((Instant::now(), running.id.clone()));
        self.changes.insert(running.id.clone(), running);
    }

    /// Everything, for a flush.
    fn release_all(&mut self, pending: &mut Coalesced) {
        for (_, id) in self.order.drain(..) {
            if let Some(running) = self.changes.remove(&id) {
                pending.push(running.change());
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
        Command::Running(running) => lingering.linger(running),
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::{Value, json};

    use super::{Running, patch};
    use crate::names::MessageId;
    use crate::status::{Change, JobState, Progress};

    fn running(id: &MessageId, started_at: SystemTime) -> Running {
        Running {
            id: id.clone(),
            attempt: 2,
            worker: "host:1".into(),
            started_at,
            expires_at: started_at + Duration::from_secs(60),
        }
    }

    #[test]
    fn a_running_change_has_the_fields_of_the_running_patch() {
        let (id, at) = (MessageId::generate(), SystemTime::now());
        let change = running(&id, at).change();
        let mut expected = patch::running(2, "host:1");
        expected.insert("started_at".into(), crate::status::model::time::value(at));
        let expected = Change::made_at(id, expected, at + Duration::from_secs(60), at);
        assert_eq!(change, expected);
        assert_eq!(
            change.patch["state"],
            serde_json::to_value(JobState::Running).unwrap()
        );
        assert_eq!(change.patch["updated_at"], change.patch["started_at"]);
    }

    /// Folding a `running` change under a later one gives what absorbing the later one into
    /// the built `running` change gives, for every kind of later change.
    #[test]
    fn folding_running_under_a_later_change_is_absorbing_it() {
        let at = SystemTime::now() - Duration::from_millis(20);
        let later_expiry = at + Duration::from_secs(600);
        let progress = Progress {
            fraction: 0.5,
            message: "half".into(),
        };
        let mut with_progress = patch::succeeded(Some(&json!({"n": 1})));
        with_progress.extend(patch::progress(&progress));
        let laters = [
            patch::succeeded(None),
            with_progress,
            patch::retrying(2, "boom", at + Duration::from_secs(5)),
            patch::dead_lettered("bad input"),
            patch::cancelled(),
            patch::requeued(),
            patch::progress(&progress),
        ];
        for later in laters {
            let id = MessageId::generate();
            let later = Change::new(id.clone(), later, later_expiry);
            let mut absorbed = running(&id, at).change();
            absorbed.absorb(later.clone());
            let mut folded = later;
            running(&id, at).under(&mut folded);
            assert_eq!(folded, absorbed);
            assert_ne!(folded.patch["attempt"], Value::Null);
        }
    }
}
