//! Newtypes for the names and numbers that are easy to mix up.

use std::fmt;
use std::sync::Arc;

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a name.
            pub fn new(name: impl AsRef<str>) -> Self {
                Self(Arc::from(name.as_ref()))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                Self::new(name)
            }
        }

        impl From<String> for $name {
            fn from(name: String) -> Self {
                Self(Arc::from(name))
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                String::deserialize(deserializer).map(Self::from)
            }
        }
    };
}

name_type!(
    /// The name of a queue on the broker (an AMQP queue name, an SQS queue name or URL).
    QueueName
);

name_type!(
    /// The stable name of a job type, carried in the `longshore-job` header; handlers are found by it.
    JobName
);

name_type!(
    /// A message's unique id: set by the producer, kept across retries and dead-lettering.
    MessageId
);

impl MessageId {
    /// A fresh, time-ordered id (UUID v7: the Unix time in milliseconds, then 74 random
    /// bits).
    ///
    /// The random bits come from a generator per thread, seeded once from the operating
    /// system's randomness: `Uuid::now_v7` asks the kernel for them (a `getrandom` system
    /// call) on every id, and every enqueue and every delivery without an id makes one.
    pub fn generate() -> Self {
        thread_local! {
            static RANDOM: std::cell::RefCell<fastrand::Rng> =
                std::cell::RefCell::new(fastrand::Rng::with_seed(os_seed()));
        }
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        let mut random = [0u8; 10];
        RANDOM.with_borrow_mut(|rng| rng.fill(&mut random));
        let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        Self::new(uuid.hyphenated().encode_lower(&mut text))
    }
}

/// 64 bits from the operating system's randomness: std's `RandomState` keys (read from the
/// OS once per thread), mixed with the time and the thread. `fastrand`'s own seed is only
/// the monotonic clock and the thread id, which processes on many machines can share.
fn os_seed() -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    std::time::SystemTime::now().hash(&mut hasher);
    std::thread::current().id().hash(&mut hasher);
    hasher.finish()
}

impl QueueName {
    /// The name of this queue's dead-letter queue when longshore declares it: `<queue>.dlq`.
    pub fn dead_letter_queue(&self) -> QueueName {
        QueueName::new(format!("{}.dlq", self.0))
    }
}

/// Which delivery of a message this is, counted by the broker and starting at 1.
///
/// It comes from the broker (AMQP: longshore's attempt header or `x-delivery-count`; SQS:
/// `ApproximateReceiveCount`), never from worker memory, so it survives worker restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attempt(u32);

impl Attempt {
    /// The first delivery.
    pub const FIRST: Attempt = Attempt(1);

    /// An attempt number; 0 is read as 1 (a broker that counts from zero).
    pub fn new(n: u32) -> Self {
        Self(n.max(1))
    }

    /// The number, 1 for the first delivery.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The attempt after this one.
    pub fn next(self) -> Attempt {
        Attempt(self.0.saturating_add(1))
    }
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_counts_from_one() {
        assert_eq!(Attempt::new(0), Attempt::FIRST);
        assert_eq!(Attempt::FIRST.next().get(), 2);
        assert_eq!(Attempt::new(u32::MAX).next().get(), u32::MAX);
    }

    #[test]
    fn dead_letter_queue_name() {
        assert_eq!(
            QueueName::new("emails").dead_letter_queue().as_str(),
            "emails.dlq"
        );
    }

    #[test]
    fn generated_ids_are_unique() {
        assert_ne!(MessageId::generate(), MessageId::generate());
        // Many threads at once, each with its own generator: no id twice.
        let threads: Vec<_> = (0..8)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..20_000)
                        .map(|_| MessageId::generate())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for thread in threads {
            for id in thread.join().expect("no panic") {
                assert!(all.insert(id), "an id came twice");
            }
        }
        assert_eq!(all.len(), 160_000);
    }

    #[test]
    fn generated_ids_are_uuid_v7_in_time_order() {
        let first = MessageId::generate();
        let parsed = uuid::Uuid::parse_str(first.as_str()).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(first.as_str(), parsed.hyphenated().to_string());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64;
        let (seconds, nanos) = parsed.get_timestamp().expect("v7 has a time").to_unix();
        let millis = seconds * 1000 + u64::from(nanos) / 1_000_000;
        assert!(now.abs_diff(millis) < 5_000, "{millis} is not now ({now})");
        // An id made in a later millisecond sorts after.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(MessageId::generate().as_str() > first.as_str());
    }
}
