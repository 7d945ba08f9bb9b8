//! Delays on RabbitMQ without plugins: a fixed ladder of TTL queues (NServiceBus's design).
//!
//! Level `L` is a queue whose per-queue TTL is `2^L` ms. A message delayed by `d` ms waits
//! in the levels of the set bits of `d`, nowhere else, so it waits exactly `d` ms plus the
//! broker's hops, never less. Per-queue TTL means every message in a level expires in
//! arrival order: no head-of-line blocking. The number of queues is fixed ([`LEVELS`]) for
//! any delay and any number of work queues.
//!
//! Routing: each level has a topic exchange. A delayed message is published to the top
//! level's exchange with the routing key `b31.b30.….b0.<queue>` (`bL` is `0` or `1`). Level
//! `L`'s exchange routes `1` at word `31-L` to its queue and `0` onward to level `L-1`'s
//! exchange; each level queue dead-letters into the next level's exchange when its TTL ends.
//! Past level 0 the `longshore.delivery` exchange routes by the queue-name suffix to the
//! work queue.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use longshore_core::spi::{Message, headers, unix_millis};
use longshore_core::{BrokerError, MessageId, QueueName};

/// Levels of the ladder: delays up to `2^32 - 1` ms (about 49.7 days).
pub(crate) const LEVELS: u32 = 32;

/// The exchange that routes a delayed message into its work queue after the last level.
pub(crate) const DELIVERY_EXCHANGE: &str = "longshore.delivery";

/// The longest delay the ladder can hold.
pub(crate) const MAX_DELAY: Duration = Duration::from_millis((1 << LEVELS) - 1);

/// The exchange and the queue of level `level`.
pub(crate) fn level_name(level: u32) -> String {
    format!("longshore.delay.{level:02}")
}

/// Where level `level`'s queue dead-letters and its `0` binding points: the next level down.
pub(crate) fn next_exchange(level: u32) -> String {
    match level {
        0 => DELIVERY_EXCHANGE.to_owned(),
        _ => level_name(level - 1),
    }
}

/// The exchange a delayed message is published to.
pub(crate) fn entry_exchange() -> String {
    level_name(LEVELS - 1)
}

fn prefix(level: u32) -> String {
    "*.".repeat((LEVELS - 1 - level) as usize)
}

/// Binding patterns of level `level`'s exchange: (to its queue, to the next exchange).
pub(crate) fn level_patterns(level: u32) -> (String, String) {
    (
        format!("{}1.#", prefix(level)),
        format!("{}0.#", prefix(level)),
    )
}

/// The delivery exchange's binding pattern for a work queue.
pub(crate) fn delivery_pattern(queue: &str) -> String {
    format!("{}{queue}", "*.".repeat(LEVELS as usize))
}

/// Why a delay cannot go through the ladder.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DelayError {
    /// Longer than [`MAX_DELAY`].
    #[error("the delay is longer than the delay ladder holds ({MAX_DELAY:?})")]
    TooLong,
    /// The routing key would pass AMQP's 255-byte limit.
    #[error(
        "the queue name is too long to route through the delay queues (255 bytes with 64 of routing)"
    )]
    QueueNameTooLong,
}

/// How long until `message` is due, if it carries a due time (a delay past the ladder's
/// reach) that has not come; the due-time header is taken off either way.
pub(crate) fn not_due_yet(message: &mut Message) -> Option<Duration> {
    let due_ms = message
        .headers_mut()
        .remove(headers::DUE_AT)?
        .parse::<u64>()
        .ok()?;
    let due = UNIX_EPOCH + Duration::from_millis(due_ms);
    due.duration_since(SystemTime::now())
        .ok()
        .filter(|remaining| !remaining.is_zero())
}

/// The routing key carrying `delay` (whole milliseconds, rounded up) to `queue`.
pub(crate) fn routing_key(delay: Duration, queue: &str) -> Result<String, DelayError> {
    let millis = delay.as_nanos().div_ceil(1_000_000);
    if millis > u128::from(u32::MAX) {
        return Err(DelayError::TooLong);
    }
    let mut key = String::with_capacity(2 * LEVELS as usize + queue.len());
    for level in (0..LEVELS).rev() {
        key.push(if millis & (1 << level) != 0 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(queue);
    if key.len() > 255 {
        return Err(DelayError::QueueNameTooLong);
    }
    Ok(key)
}

/// Where a message goes to reach its queue after a delay: an exchange, a routing key, and
/// for a delay longer than the ladder holds, the due time (Unix ms) it carries.
pub(crate) struct Route {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) due_at: Option<String>,
}

/// The route of a message for `queue` delayed by `delay`: the queue itself when there is no
/// delay, else the ladder. A delay longer than [`MAX_DELAY`] hops: the message waits
/// `MAX_DELAY`, carries its due time in `longshore-due-at`, and the consumer sends it on
/// for the rest (see `consume.rs`), so any delay works and none ends early.
pub(crate) fn route(
    queue: &QueueName,
    message_id: &MessageId,
    delay: Duration,
) -> Result<Route, BrokerError> {
    if delay.is_zero() {
        return Ok(Route {
            exchange: String::new(),
            routing_key: queue.to_string(),
            due_at: None,
        });
    }
    let due_at = (delay > MAX_DELAY).then(|| unix_millis(SystemTime::now() + delay).to_string());
    let routing_key = routing_key(delay.min(MAX_DELAY), queue.as_str()).map_err(|error| {
        BrokerError::InvalidMessage {
            message_id: message_id.clone(),
            problem: match error {
                DelayError::TooLong => format!("a delay of {delay:?} does not fit the ladder"),
                DelayError::QueueNameTooLong => {
                    format!("queue name `{queue}` is too long to route through the delay queues")
                }
            },
        }
    })?;
    Ok(Route {
        exchange: entry_exchange(),
        routing_key,
        due_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Matches an AMQP topic pattern (`*` one word, `#` zero or more) against a key.
    fn topic_match(pattern: &str, key: &str) -> bool {
        fn go(p: &[&str], k: &[&str]) -> bool {
            match (p.first(), k.first()) {
                (None, None) => true,
                (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
                (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
                (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
                _ => false,
            }
        }
        let p: Vec<&str> = pattern.split('.').collect();
        let k: Vec<&str> = key.split('.').collect();
        go(&p, &k)
    }

    /// Follows a message through the ladder as RabbitMQ would route it; returns the total
    /// TTL it waits and the queue it lands in.
    fn route(key: &str) -> (u64, Vec<String>) {
        let mut waited = 0;
        let mut visited = Vec::new();
        for level in (0..LEVELS).rev() {
            let (to_queue, onward) = level_patterns(level);
            if topic_match(&to_queue, key) {
                assert!(!topic_match(&onward, key));
                waited += 1u64 << level;
                visited.push(level_name(level));
            } else {
                assert!(
                    topic_match(&onward, key),
                    "level {level} routes {key} nowhere"
                );
            }
        }
        (waited, visited)
    }

    #[test]
    fn a_delay_waits_exactly_its_set_bits() {
        for millis in [
            1u64,
            2,
            3,
            20,
            1500,
            60_000,
            3_600_000,
            43_200_000,
            u64::from(u32::MAX),
        ] {
            let key = routing_key(Duration::from_millis(millis), "orders").unwrap();
            let (waited, visited) = route(&key);
            assert_eq!(waited, millis);
            assert_eq!(visited.len() as u32, millis.count_ones());
            assert!(topic_match(&delivery_pattern("orders"), &key));
        }
    }

    #[test]
    fn sub_millisecond_delays_round_up_never_down() {
        let key = routing_key(Duration::from_micros(1), "q").unwrap();
        assert_eq!(route(&key).0, 1);
    }

    #[test]
    fn dotted_queue_names_route_only_to_their_own_queue() {
        let key = routing_key(Duration::from_millis(5), "app.emails").unwrap();
        assert!(topic_match(&delivery_pattern("app.emails"), &key));
        assert!(!topic_match(&delivery_pattern("emails"), &key));
        let other = routing_key(Duration::from_millis(5), "x.app.emails").unwrap();
        assert!(!topic_match(&delivery_pattern("app.emails"), &other));
    }

    #[test]
    fn limits_are_clear_errors() {
        assert_eq!(
            routing_key(MAX_DELAY + Duration::from_millis(1), "q"),
            Err(DelayError::TooLong)
        );
        assert_eq!(
            routing_key(Duration::from_millis(1), &"q".repeat(200)),
            Err(DelayError::QueueNameTooLong)
        );
        assert!(routing_key(MAX_DELAY, "q").is_ok());
    }

    #[test]
    fn delays_past_the_ladder_hop_with_their_due_time() {
        let (queue, id) = (QueueName::new("q"), MessageId::from("m".to_owned()));
        let direct = super::route(&queue, &id, Duration::ZERO).unwrap();
        assert_eq!(
            (direct.exchange.as_str(), direct.routing_key.as_str()),
            ("", "q")
        );
        assert!(
            super::route(&queue, &id, MAX_DELAY)
                .unwrap()
                .due_at
                .is_none()
        );
        let sixty_days = Duration::from_secs(60 * 86_400);
        let hop = super::route(&queue, &id, sixty_days).unwrap();
        assert_eq!(hop.routing_key, routing_key(MAX_DELAY, "q").unwrap());
        let due: u64 = hop.due_at.expect("a due time").parse().unwrap();
        let expected = unix_millis(SystemTime::now() + sixty_days);
        assert!(expected.abs_diff(due) < 1_000, "{due} vs {expected}");
    }
}
