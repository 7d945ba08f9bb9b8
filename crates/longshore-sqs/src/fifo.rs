//! FIFO groups: one receive can return several messages of one group, in order; SQS leaves
//! it to the consumer to run them in that order. The gate hands out one delivery per group
//! at a time and holds the rest. When the delivery out is acked or dead-lettered, the next of
//! its group goes; when it is released, the held ones go back to SQS (visibility 0); when it
//! is retried after a delay, the held ones, and any other message of the group received
//! before the retry is due, go back until just after the retry is due. SQS then redelivers
//! the group in order. (SQS locks a group while one of its messages is in flight, but some
//! emulators hand out the rest of a group while a retried message waits; this keeps the
//! order on both.)

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
    /// A retried message's due time and SQS id: until then, the group waits for it.
    retry: Option<(Instant, String)>,
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

/// Forgets the restarts that no longer matter: no retry pending, and older than
/// [`RESTART_MATTERS`]. Without it every group ever retried stays in memory.
fn prune(restarted: &mut HashMap<String, Restart>, now: Instant) {
    restarted.retain(|_, restart| {
        restart
            .retry
            .as_ref()
            .is_some_and(|(until, _)| *until > now)
            || now.saturating_duration_since(restart.at) < RESTART_MATTERS
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
    /// Released or abandoned: the group starts again from SQS now.
    Returned,
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
        if let Some(restart) = state.restarted.get(group) {
            let now = Instant::now();
            let waiting = restart.retry.as_ref().filter(|(until, _)| now < *until);
            let stale = message.responded() <= restart.at;
            let overtaking = waiting.is_some_and(|(_, id)| message.sqs_id().as_ref() != Some(id));
            if stale || overtaking {
                return Admit::Return(message, waiting.map(|(until, _)| *until));
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
        let retry = match how {
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
            Ended::Returned => None,
            Ended::Retried { until, sqs_id } => Some((until, sqs_id)),
        };
        state.busy.remove(group);
        let until = retry.as_ref().map(|(until, _)| *until);
        if state.restarted.len() >= PRUNE_AT {
            prune(&mut state.restarted, Instant::now());
        }
        state.restarted.insert(
            group.to_owned(),
            Restart {
                at: Instant::now(),
                retry,
            },
        );
        (held.iter().filter_map(Held::receipt).collect(), until)
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
                    retry: None,
                },
            );
        }
        restarted.insert(
            "recent".into(),
            Restart {
                at: now,
                retry: None,
            },
        );
        restarted.insert(
            "waiting".into(),
            Restart {
                at: old,
                retry: Some((now + std::time::Duration::from_secs(3600), "id".into())),
            },
        );
        prune(&mut restarted, now);
        let mut left: Vec<&str> = restarted.keys().map(String::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["recent", "waiting"]);
    }

    #[test]
    fn one_per_group_in_order_and_a_retry_returns_the_rest() {
        let gate = Gate::new();
        assert!(gate.admit("a", m("a1")).delivered());
        assert!(gate.admit("a", m("a2")).held());
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
        let retried = Ended::Retried {
            until,
            sqs_id: "a2".into(),
        };
        assert_eq!(
            gate.ended("a", retried),
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
            gate.ended("b", Ended::Returned).1,
            None,
            "a release returns at once"
        );
    }
}
