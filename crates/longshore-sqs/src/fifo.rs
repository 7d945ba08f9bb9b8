//! FIFO groups: one receive can return several messages of one group, in order; SQS leaves
//! it to the consumer to run them in that order. The gate hands out one delivery per group
//! at a time and holds the rest. When the delivery out is acked or dead-lettered, the next of
//! its group goes; when it is released, the held ones go back to SQS (visibility 0); when it
//! is retried after a delay, the held ones go back until just after the retry is due. SQS then
//! redelivers the group in order. Until the messages handed back have come in again (the
//! retried one first), any other message of the group is handed back too.
//!
//! (SQS locks a group while one of its messages is in flight, so there no message can
//! overtake. LocalStack does not: once a retried message is due it hands it out with the
//! group's messages that were never received, ahead of those still invisible because the
//! gate handed them back. The gate keeps the order on both.)

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::client::broker_error;
use crate::queue::QueueCtx;

/// A received message as the gate holds it: opaque to the gate but for its receipt and
/// when its receive response arrived.
pub(crate) trait Held: Send + 'static {
    fn receipt(&self) -> Option<String>;
    fn responded(&self) -> Instant;
    /// SQS's id of the message: the same on every receive.
    fn sqs_id(&self) -> Option<String>;
}

/// What to do with a message the gate is shown.
pub(crate) enum Admit<T> {
    /// Its group is free: deliver it.
    Deliver(T),
    /// Its group is busy: the gate holds it.
    Held,
    /// It was received before its group restarted, or while the group waits for a retry:
    /// hand it back to SQS, invisible until `until` (or visible at once).
    Return(T, Option<Instant>),
}

/// A group that started again from SQS.
struct Restart {
    at: Instant,
    /// SQS ids of the messages the group must start again with, in order: the retried
    /// message, then those handed back. Any other message of the group that comes first is
    /// handed back as well.
    awaited: VecDeque<String>,
    /// When the awaited messages are due again: the retry's due time, or the restart.
    due: Instant,
    /// The first awaited message came back here. Until then, once it is due, another
    /// message of the group means another consumer took the group up: the gate lets go.
    resumed: bool,
}

impl Restart {
    /// Whether the gate may still wait for `awaited` at `now`.
    fn awaiting(&self, now: Instant) -> bool {
        !self.awaited.is_empty() && now < self.due + AWAIT_AT_MOST
    }
}

pub(crate) struct Gate<T> {
    state: Mutex<State<T>>,
    /// Woken when a held message becomes ready.
    pub(crate) ready: Notify,
}

/// The gate looks at its restarts for old ones once it holds this many.
const PRUNE_AT: usize = 1024;
/// A restart matters while its retry is pending, and for this long after (a message
/// received before it cannot still be on its way after that).
const RESTART_MATTERS: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// How long after they are due the gate waits for the messages a group must start again
/// with; past that (one was deleted elsewhere or moved to a dead-letter queue, say) the
/// group goes on without them.
const AWAIT_AT_MOST: std::time::Duration = std::time::Duration::from_secs(10);

/// Forgets the restarts that no longer matter: nothing awaited, and older than
/// [`RESTART_MATTERS`]. Without it every group ever retried stays in memory.
fn prune(restarted: &mut HashMap<String, Restart>, now: Instant) {
    restarted.retain(|_, restart| {
        restart.awaiting(now) || now.saturating_duration_since(restart.at) < RESTART_MATTERS
    });
}

struct State<T> {
    busy: HashSet<String>,
    held: HashMap<String, VecDeque<T>>,
    ready: VecDeque<T>,
    /// When each group last restarted.
    restarted: HashMap<String, Restart>,
}

/// How the delivery that was out ended, for its group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Acked or dead-lettered: the next of the group may go.
    Done,
    /// Released or abandoned: the group starts again from SQS now, with this message.
    Returned {
        /// SQS's id of the message handed back.
        sqs_id: String,
    },
    /// Retried: the group starts again from SQS with this message, once it is due.
    Retried {
        /// When the retry is due.
        until: Instant,
        /// SQS's id of the retried message.
        sqs_id: String,
    },
}

impl<T: Held> Gate<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                busy: HashSet::new(),
                held: HashMap::new(),
                ready: VecDeque::new(),
                restarted: HashMap::new(),
            }),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a received message.
    pub(crate) fn admit(&self, group: &str, message: T) -> Admit<T> {
        let mut state = self.lock();
        if let Some(restart) = state.restarted.get_mut(group) {
            let now = Instant::now();
            if message.responded() <= restart.at {
                // Received before the restart: it comes back after the retry, if one is due,
                // and the group waits for it as for those held then.
                if let Some(id) = message.sqs_id()
                    && !restart.awaited.contains(&id)
                {
                    restart.awaited.push_back(id);
                }
                return Admit::Return(message, (now < restart.due).then_some(restart.due));
            }
            if restart.awaited.front() == message.sqs_id().as_ref() {
                restart.awaited.pop_front();
                restart.resumed = true;
            } else if !restart.awaited.is_empty() {
                if now < restart.due || (restart.resumed && restart.awaiting(now)) {
                    // Overtaking: back until the awaited ones are due, for a second at least.
                    return Admit::Return(message, Some(restart.due.max(now)));
                }
                restart.awaited.clear();
            }
        }
        if state.busy.insert(group.to_owned()) {
            Admit::Deliver(message)
        } else {
            state
                .held
                .entry(group.to_owned())
                .or_default()
                .push_back(message);
            Admit::Held
        }
    }

    /// A held message whose turn has come, if any.
    pub(crate) fn next_ready(&self) -> Option<T> {
        self.lock().ready.pop_front()
    }

    /// The delivery of `group` that was out has ended; returns the receipts to hand back and
    /// until when they stay invisible.
    pub(crate) fn ended(&self, group: &str, how: Ended) -> (Vec<String>, Option<Instant>) {
        let mut state = self.lock();
        let mut held = state.held.remove(group).unwrap_or_default();
        let (first, due) = match how {
            Ended::Done => {
                match held.pop_front() {
                    Some(next) => {
                        state.ready.push_back(next);
                        if !held.is_empty() {
                            state.held.insert(group.to_owned(), held);
                        }
                        drop(state);
                        self.ready.notify_one();
                    }
                    None => {
                        state.busy.remove(group);
                    }
                }
                return (Vec::new(), None);
            }
            Ended::Returned { sqs_id } => (sqs_id, None),
            Ended::Retried { until, sqs_id } => (sqs_id, Some(until)),
        };
        state.busy.remove(group);
        let now = Instant::now();
        if state.restarted.len() >= PRUNE_AT {
            prune(&mut state.restarted, now);
        }
        // Those still awaited from an earlier restart come after the ones held now: while
        // they were awaited, a message of the group was let in only in its turn.
        let earlier = state
            .restarted
            .remove(group)
            .filter(|restart| restart.awaiting(now))
            .map(|restart| restart.awaited)
            .unwrap_or_default();
        let awaited = std::iter::once(first)
            .chain(held.iter().filter_map(Held::sqs_id))
            .chain(earlier)
            .collect();
        state.restarted.insert(
            group.to_owned(),
            Restart {
                at: now,
                awaited,
                due: due.unwrap_or(now),
                resumed: false,
            },
        );
        (held.iter().filter_map(Held::receipt).collect(), due)
    }

    /// Everything held or ready, for release when consuming stops.
    pub(crate) fn drain(&self) -> Vec<String> {
        let mut state = self.lock();
        let ready: Vec<T> = state.ready.drain(..).collect();
        let held: Vec<T> = state.held.drain().flat_map(|(_, queue)| queue).collect();
        ready
            .iter()
            .chain(held.iter())
            .filter_map(Held::receipt)
            .collect()
    }
}

/// Makes messages visible again at `until` (a second after, so a retried message due then
/// goes first), or at once; ten per call.
pub(crate) async fn release_all(ctx: Arc<QueueCtx>, receipts: Vec<String>, until: Option<Instant>) {
    let visibility = until.map_or(0, |until| {
        crate::topology::seconds_up(until.saturating_duration_since(Instant::now())) + 1
    });
    for chunk in receipts.chunks(10) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(visibility)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect::<Vec<_>>();
        let sent = ctx
            .client
            .change_message_visibility_batch()
            .queue_url(&ctx.info.url)
            .set_entries(Some(entries))
            .send()
            .await;
        if let Err(error) = sent {
            tracing::warn!(queue = %ctx.name, error = %broker_error(error, &ctx.name), "could not release messages; they return when their visibility timeout ends");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct M(&'static str, Instant);
    impl Held for M {
        fn receipt(&self) -> Option<String> {
            Some(self.0.to_owned())
        }
        fn responded(&self) -> Instant {
            self.1
        }
        fn sqs_id(&self) -> Option<String> {
            Some(self.0.trim_end_matches("-again").to_owned())
        }
    }

    fn m(name: &'static str) -> M {
        M(name, Instant::now())
    }

    /// `out` goes out, `held` waits behind it.
    fn out_and_held(gate: &Gate<M>, group: &str, out: &'static str, held: &'static str) {
        assert!(gate.admit(group, m(out)).delivered());
        assert!(gate.admit(group, m(held)).held());
    }

    fn retried(sqs_id: &str, until: Instant) -> Ended {
        Ended::Retried {
            until,
            sqs_id: sqs_id.into(),
        }
    }

    impl<T> Admit<T> {
        fn delivered(&self) -> bool {
            matches!(self, Admit::Deliver(_))
        }
        fn held(&self) -> bool {
            matches!(self, Admit::Held)
        }
    }

    #[test]
    fn old_restarts_are_forgotten_and_pending_retries_kept() {
        let now = Instant::now();
        let old = now.checked_sub(RESTART_MATTERS * 2).unwrap_or(now);
        let mut restarted = HashMap::new();
        for n in 0..PRUNE_AT {
            restarted.insert(
                format!("old-{n}"),
                Restart {
                    at: old,
                    awaited: VecDeque::new(),
                    due: old,
                    resumed: false,
                },
            );
        }
        restarted.insert(
            "recent".into(),
            Restart {
                at: now,
                awaited: VecDeque::new(),
                due: now,
                resumed: false,
            },
        );
        restarted.insert(
            "waiting".into(),
            Restart {
                at: old,
                awaited: VecDeque::from(["id".to_owned()]),
                due: now + std::time::Duration::from_secs(3600),
                resumed: false,
            },
        );
        prune(&mut restarted, now);
        let mut left: Vec<&str> = restarted.keys().map(String::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["recent", "waiting"]);
    }

    /// Seen in CI on LocalStack: b3 failed while b4 was held; b4 went back to SQS. Once b3's
    /// retry was due, LocalStack handed out b3 again with b5 and b6 (b4 still invisible), and
    /// b5 and b6 ran before b4.
    #[test]
    fn messages_handed_back_with_a_retry_are_not_overtaken_after_it_is_due() {
        let gate = Gate::new();
        out_and_held(&gate, "b", "b3", "b4");
        // Due at once, so that it is due when b3 comes back.
        assert_eq!(
            gate.ended("b", retried("b3", Instant::now())).0,
            vec!["b4".to_owned()]
        );
        assert!(
            gate.admit("b", m("b3-again")).delivered(),
            "the retry is due: it goes first"
        );
        assert!(
            matches!(gate.admit("b", m("b5")), Admit::Return(M("b5", _), Some(_))),
            "b5 must not overtake b4, which was handed back with the retry"
        );
        assert!(matches!(gate.admit("b", m("b6")), Admit::Return(..)));
        assert!(
            gate.admit("b", m("b4-again")).held(),
            "b4 comes back: it waits behind b3 only"
        );
        assert!(gate.ended("b", Ended::Done).0.is_empty());
        assert_eq!(gate.next_ready().map(|m| m.0), Some("b4-again"));
        assert!(
            gate.admit("b", m("b5-again")).held(),
            "everything handed back is in again: b5 waits behind b4"
        );
    }

    #[test]
    fn a_message_received_before_a_restart_is_awaited_after_those_held() {
        let gate = Gate::new();
        out_and_held(&gate, "a", "a1", "a2");
        let received_before_restart = m("a3");
        assert_eq!(
            gate.ended("a", retried("a1", Instant::now())).0,
            vec!["a2".to_owned()]
        );
        assert!(matches!(
            gate.admit("a", received_before_restart),
            Admit::Return(M("a3", _), None)
        ));
        assert!(gate.admit("a", m("a1-again")).delivered());
        assert!(gate.admit("a", m("a2-again")).held());
        assert!(
            matches!(gate.admit("a", m("a4")), Admit::Return(..)),
            "a4 must not overtake a3"
        );
        assert!(gate.admit("a", m("a3-again")).held());
        assert!(gate.admit("a", m("a4")).held());
    }

    #[test]
    fn messages_awaited_after_a_restart_are_given_up_on_in_time() {
        let gate = Gate::new();
        out_and_held(&gate, "c", "c1", "c2");
        let released = Ended::Returned {
            sqs_id: "c1".into(),
        };
        assert_eq!(gate.ended("c", released).0, vec!["c2".to_owned()]);
        assert!(gate.admit("c", m("c1-again")).delivered());
        assert!(
            matches!(gate.admit("c", m("c3")), Admit::Return(..)),
            "c3 waits for c2, handed back on release"
        );
        assert!(gate.admit("c", m("c2-again")).held());
        // Another consumer took e's retried message up, and with it the group: once the retry
        // is due, this gate lets the group's next message in.
        assert!(gate.admit("e", m("e1")).delivered());
        assert!(gate.ended("e", retried("e1", Instant::now())).0.is_empty());
        assert!(gate.admit("e", m("e2")).delivered());
        // d2 is handed back with a retry that was due longer ago than the gate waits, and
        // never comes back (moved to a dead-letter queue, say): the group goes on.
        out_and_held(&gate, "d", "d1", "d2");
        let long_ago = Instant::now()
            .checked_sub(AWAIT_AT_MOST + std::time::Duration::from_secs(1))
            .expect("the clock is older than that");
        assert_eq!(
            gate.ended("d", retried("d1", long_ago)).0,
            vec!["d2".to_owned()]
        );
        assert!(gate.admit("d", m("d1-again")).delivered());
        assert!(
            gate.admit("d", m("d3")).held(),
            "held behind d1, not handed back"
        );
    }

    #[test]
    fn one_per_group_in_order_and_a_retry_returns_the_rest() {
        let gate = Gate::new();
        out_and_held(&gate, "a", "a1", "a2");
        assert!(gate.admit("a", m("a3")).held());
        assert!(
            gate.admit("b", m("b1")).delivered(),
            "other groups go concurrently"
        );
        assert!(gate.next_ready().is_none());
        assert!(gate.ended("a", Ended::Done).0.is_empty());
        assert_eq!(gate.next_ready().map(|m| m.0), Some("a2"));
        let received_before_restart = m("a5");
        assert!(
            gate.admit("a", m("a4")).held(),
            "a2 is out: a4 waits behind a3"
        );
        let until = Instant::now() + std::time::Duration::from_secs(60);
        assert_eq!(
            gate.ended("a", retried("a2", until)),
            (vec!["a3".to_owned(), "a4".to_owned()], Some(until))
        );
        assert!(
            matches!(
                gate.admit("a", received_before_restart),
                Admit::Return(M("a5", _), Some(_))
            ),
            "received before the restart: back to SQS"
        );
        assert!(
            matches!(gate.admit("a", m("a3")), Admit::Return(_, Some(u)) if u == until),
            "a3 must not overtake the retried a2"
        );
        assert!(
            gate.admit("a", m("a2-again")).delivered(),
            "the retried message goes first"
        );
        assert!(gate.ended("b", Ended::Done).0.is_empty());
        assert!(gate.admit("b", m("b2")).delivered());
        assert_eq!(
            gate.ended(
                "b",
                Ended::Returned {
                    sqs_id: "b2".into()
                }
            )
            .1,
            None,
            "a release returns at once"
        );
    }
}
