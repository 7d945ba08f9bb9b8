//! Coalesced acks: one `basic.ack` with `multiple=true` for a run of finished deliveries.
//!
//! Each consumer channel has an [`Acks`]: every delivery the consumer reads is registered
//! (its tag, in the order RabbitMQ numbers them), and marked when its job finished. One
//! task per channel sends the acks: the longest run of finished tags from the last one
//! acknowledged becomes one `basic.ack(tag, multiple=true)`; a tag finished above a job
//! still running waits up to [`LINGER`] for the run to close, then is acked on its own, so a
//! long job never holds back the acks of jobs that finished after it, and a crash
//! redelivers only unfinished jobs. A tag whose job has not finished is never covered: a
//! multiple ack only reaches up to the first tag still running, or settled any other way
//! (nacked, or acked by the consumer's own hop task) until that settlement is done.
//!
//! A job's settle waits until the ack carrying its tag was handed to the connection, as a
//! single ack would: a worker that stops has sent every ack of the jobs it finished.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::Channel;
use lapin::options::BasicAckOptions;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crate::receiver::replaced;

/// How long a finished tag waits for the tags below it before it is acked on its own.
pub(crate) const LINGER: Duration = Duration::from_millis(1);

/// Where a delivery stands.
enum Tag {
    /// Its job runs, or it is being settled some other way (nack, hop).
    Open,
    /// Its job finished: to be acked; the sender tells its settle once the ack was sent.
    Finished {
        since: Instant,
        sent: oneshot::Sender<bool>,
    },
    /// Settled already (acked on its own, nacked, or acked by a hop task).
    Settled,
}

/// What the sender does next.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// `basic.ack(tag, multiple=true)`: every tag from the last acknowledged up to it.
    pub(crate) multiple: Option<u64>,
    /// `basic.ack(tag)` one by one: finished above a tag still open, for [`LINGER`].
    pub(crate) single: Vec<u64>,
    /// When to look again for tags still lingering.
    pub(crate) again_at: Option<Instant>,
}

/// The tags of one consumer channel.
#[derive(Default)]
pub(crate) struct Book {
    /// Tag `floor + 1 + i` is at `tags[i]`: every tag above `floor` delivered and not yet
    /// acked as part of a run. A channel's delivery tags count up from 1 without gaps.
    tags: VecDeque<Tag>,
    /// Every tag up to it is acknowledged or settled.
    floor: u64,
    /// Finished tags in `tags` (the run's and those lingering above it).
    finished: usize,
    /// The channel closed: nothing can be acked any more.
    closed: bool,
}

impl Book {
    /// The slot of `tag`, made (open) if it is past the end; `None` at or below the floor.
    fn slot(&mut self, tag: u64) -> Option<&mut Tag> {
        let index = usize::try_from(tag.checked_sub(self.floor + 1)?).ok()?;
        if index >= self.tags.len() {
            self.tags.resize_with(index + 1, || Tag::Open);
        }
        self.tags.get_mut(index)
    }

    /// Puts `tag` in `state`, keeping the count of finished tags; nothing changes at or
    /// below the floor. A finished tag's waiter that is replaced hears its ack was not sent.
    fn set(&mut self, tag: u64, state: Tag) {
        let finished = matches!(state, Tag::Finished { .. });
        let Some(slot) = self.slot(tag) else {
            return;
        };
        let was_finished = matches!(std::mem::replace(slot, state), Tag::Finished { .. });
        self.finished = self.finished + usize::from(finished) - usize::from(was_finished);
    }

    /// A delivery was read.
    pub(crate) fn open(&mut self, tag: u64) {
        self.set(tag, Tag::Open);
    }

    /// Its job finished: ack it; `sent` hears whether the ack was sent.
    pub(crate) fn finish(&mut self, tag: u64, sent: oneshot::Sender<bool>) {
        if self.closed {
            let _ = sent.send(false);
            return;
        }
        if tag <= self.floor {
            // Already settled: it cannot be acked again.
            let _ = sent.send(false);
            return;
        }
        let since = Instant::now();
        self.set(tag, Tag::Finished { since, sent });
    }

    /// It was settled another way (nack, or acked on its own).
    pub(crate) fn settled(&mut self, tag: u64) {
        self.set(tag, Tag::Settled);
        self.advance_over_settled();
    }

    fn advance_over_settled(&mut self) {
        while matches!(self.tags.front(), Some(Tag::Settled)) {
            self.tags.pop_front();
            self.floor += 1;
        }
    }

    /// The channel closed: every ack waiting hears it was not sent.
    fn close(&mut self) {
        self.closed = true;
        self.finished = 0;
        for tag in std::mem::take(&mut self.tags) {
            if let Tag::Finished { sent, .. } = tag {
                let _ = sent.send(false);
            }
        }
    }

    /// Takes what can be acked now, and the senders to tell once it is.
    pub(crate) fn plan(&mut self, now: Instant) -> (Plan, Vec<oneshot::Sender<bool>>) {
        let mut plan = Plan::default();
        let mut waiting = Vec::new();
        // The run: consecutive tags from the floor, each finished or settled. RabbitMQ
        // wants the tag a multiple ack names to be one not acked yet: the highest finished
        // tag of the run.
        while let Some(front) = self.tags.front() {
            if matches!(front, Tag::Open) {
                break;
            }
            self.floor += 1;
            if let Some(Tag::Finished { sent, .. }) = self.tags.pop_front() {
                self.finished -= 1;
                waiting.push(sent);
                plan.multiple = Some(self.floor);
            }
        }
        if self.finished > 0 {
            // Above the run: finished tags that waited long enough go on their own.
            let linger_from = now.checked_sub(LINGER).unwrap_or(now);
            for (index, state) in self.tags.iter_mut().enumerate() {
                let Tag::Finished { since, .. } = state else {
                    continue;
                };
                if *since <= linger_from {
                    plan.single.push(self.floor + 1 + index as u64);
                    if let Tag::Finished { sent, .. } = std::mem::replace(state, Tag::Settled) {
                        self.finished -= 1;
                        waiting.push(sent);
                    }
                } else {
                    let at = *since + LINGER;
                    plan.again_at = Some(plan.again_at.map_or(at, |t| t.min(at)));
                }
            }
        }
        self.advance_over_settled();
        (plan, waiting)
    }
}

/// The coalescing acks of one consumer channel; the sender task ends when the channel
/// closes or no one else holds them.
pub(crate) struct Acks {
    book: Mutex<Book>,
    wake: Notify,
}

impl Acks {
    /// Starts the sender for `channel`, on the connection of `generation` (the link's
    /// generation is `current`).
    pub(crate) fn start(
        channel: Channel,
        current: watch::Receiver<u64>,
        generation: u64,
    ) -> Arc<Self> {
        let acks = Arc::new(Self {
            book: Mutex::default(),
            wake: Notify::new(),
        });
        tokio::spawn(send(Arc::clone(&acks), channel, current, generation));
        acks
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A delivery was read (before it is handed out).
    pub(crate) fn open(&self, tag: u64) {
        self.book().open(tag);
    }

    /// Its job finished: acks it with the run it belongs to; returns once the ack was sent
    /// (`true`), or could not be (`false`: the channel closed, RabbitMQ redelivers it).
    pub(crate) async fn ack(&self, tag: u64) -> bool {
        let (sent, heard) = oneshot::channel();
        self.book().finish(tag, sent);
        self.wake.notify_one();
        heard.await.unwrap_or(false)
    }

    /// It was settled another way: the runs may pass it.
    pub(crate) fn settled(&self, tag: u64) {
        self.book().settled(tag);
        self.wake.notify_one();
    }
}

/// The sender task: waits to be woken (or for lingering tags), sends what the book plans.
/// Ends when the channel has closed or its connection was replaced (the book is closed:
/// waiting acks hear they were not sent), or nobody else holds the acks.
async fn send(acks: Arc<Acks>, channel: Channel, current: watch::Receiver<u64>, generation: u64) {
    tokio::select! {
        () = send_while_open(&acks, &channel) => {}
        // On a connection that was replaced an ack would wait forever: the delivery is gone.
        () = replaced(current, generation) => {}
    }

    acks.book().close();
}

async fn send_while_open(acks: &Arc<Acks>, channel: &Channel) {
    let mut again_at: Option<Instant> = None;
    loop {
        let notified = acks.wake.notified();
        match again_at {
            Some(at) => {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => {
                if tokio::time::timeout(Duration::from_secs(1), notified)
                    .await
                    .is_err()
                {
                    if !channel.status().connected() || Arc::strong_count(acks) == 1 {
                        return;
                    }
                    continue;
                }
            }
        }
        let (plan, waiting) = acks.book().plan(Instant::now());
        again_at = plan.again_at;
        let mut sent_all = true;
        if let Some(tag) = plan.multiple {
            sent_all &= channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .is_ok();
        }
        for tag in plan.single {
            sent_all &= channel
                .basic_ack(tag, BasicAckOptions { multiple: false })
                .await
                .is_ok();
        }
        for sent in waiting {
            let _ = sent.send(sent_all);
        }
        if !sent_all && !channel.status().connected() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(book: &mut Book, tag: u64) -> oneshot::Receiver<bool> {
        let (sent, heard) = oneshot::channel();
        book.finish(tag, sent);
        heard
    }

    #[test]
    fn a_run_of_finished_tags_is_one_multiple_ack() {
        let mut book = Book::default();
        for tag in 1..=5 {
            book.open(tag);
        }
        let heard: Vec<_> = (1..=4).map(|tag| finished(&mut book, tag)).collect();
        let (plan, waiting) = book.plan(Instant::now());
        assert_eq!(plan.multiple, Some(4));
        assert!(plan.single.is_empty() && plan.again_at.is_none());
        assert_eq!((waiting.len(), heard.len()), (4, 4));
    }

    /// Job 1 slow, jobs 2–100 fast: tag 1 is never covered while its job runs; the others
    /// are acked on their own once they have lingered, and tag 1 only when it finished.
    #[test]
    fn a_slow_first_job_is_never_acked_early_nor_holds_back_the_rest() {
        let mut book = Book::default();
        for tag in 1..=100 {
            book.open(tag);
        }
        let _heard: Vec<_> = (2..=100).map(|tag| finished(&mut book, tag)).collect();
        let (plan, waiting) = book.plan(Instant::now());
        assert_eq!(plan.multiple, None, "tag 1 still runs");
        assert!(plan.single.is_empty(), "they linger first");
        assert!(waiting.is_empty());
        let (plan, waiting) = book.plan(Instant::now() + LINGER);
        assert_eq!(plan.multiple, None, "tag 1 still runs");
        assert_eq!(plan.single, (2..=100).collect::<Vec<_>>());
        assert_eq!(waiting.len(), 99);
        let _one = finished(&mut book, 1);
        let (plan, waiting) = book.plan(Instant::now());
        // Tags 2–100 are acked already; RabbitMQ refuses an ack naming one of them.
        assert_eq!(plan.multiple, Some(1), "only tag 1 is left to ack");
        assert_eq!(waiting.len(), 1);
        assert_eq!(book.floor, 100);
        assert!(book.tags.is_empty());
    }

    #[test]
    fn tags_settled_another_way_let_the_run_pass_but_are_not_acked() {
        let mut book = Book::default();
        for tag in 1..=3 {
            book.open(tag);
        }
        let _a = finished(&mut book, 1);
        let _c = finished(&mut book, 3);
        let (plan, _) = book.plan(Instant::now());
        assert_eq!(plan.multiple, Some(1), "tag 2 is still open");
        book.settled(2);
        let (plan, waiting) = book.plan(Instant::now());
        assert_eq!(plan.multiple, Some(3));
        assert_eq!(waiting.len(), 1);
        // A run of settled tags only: nothing to send.
        book.open(4);
        book.settled(4);
        let (plan, _) = book.plan(Instant::now());
        assert_eq!(plan, Plan::default());
        assert_eq!(book.floor, 4);
    }

    #[test]
    fn acks_waiting_when_the_channel_closes_hear_they_were_not_sent() {
        let mut book = Book::default();
        book.open(1);
        let mut heard = finished(&mut book, 1);
        book.close();
        assert_eq!(heard.try_recv(), Ok(false));
        book.open(2);
        let mut late = finished(&mut book, 2);
        assert_eq!(late.try_recv(), Ok(false));
    }
}
