//! The status of a job, as stores keep it and the HTTP API shows it, and the changes that
//! move it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names::{JobName, MessageId, QueueName};

/// Where a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Enqueued (or handed back), waiting for a worker; `due_at` says when a delayed job is due.
    Queued,
    /// A worker runs it.
    Running,
    /// An attempt failed; it runs again at `due_at`.
    Retrying,
    /// Done (finished).
    Succeeded,
    /// Given up; `error` says why (finished).
    DeadLettered,
    /// Cancelled by request (finished).
    Cancelled,
}

impl JobState {
    /// Whether the job is over: succeeded, dead-lettered or cancelled.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::DeadLettered | JobState::Cancelled
        )
    }

    /// The state's name in JSON and in stores: `queued`, `running`, …
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::DeadLettered => "dead_lettered",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// How far a running job is, as its handler reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Done so far, from 0 to 1.
    pub fraction: f64,
    /// A short message for people (`resized 4 of 10`).
    pub message: String,
}

/// The status of one job.
///
/// In JSON (what `GET /jobs/{id}` returns; times are RFC 3339 in UTC):
///
/// ```json
/// {"id":"0192…","job":"resize","queue":"images","state":"running","seq":3,"attempt":1,
///  "enqueued_at":"2026-12-01T10:00:00.000Z","due_at":null,"started_at":"2026-12-01T10:00:00.120Z",
///  "finished_at":null,"updated_at":"2026-12-01T10:00:01.500Z","worker":"web-1:4242",
///  "error":null,"progress":{"fraction":0.4,"message":"resized 4 of 10"},"result":null,
///  "cancel_requested":false,"unique_key":null,"expires_at":"2026-12-08T10:00:00.000Z"}
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job's id (its message id).
    pub id: MessageId,
    /// The job name.
    pub job: JobName,
    /// The queue it was enqueued on.
    pub queue: QueueName,
    /// Where it is.
    pub state: JobState,
    /// The sequence number of its latest change (1 when enqueued).
    pub seq: u64,
    /// The attempt running or last run (0 before the first).
    pub attempt: u32,
    /// When it was enqueued.
    #[serde(with = "time")]
    pub enqueued_at: SystemTime,
    /// When a queued job is due, or a retrying job runs again.
    #[serde(with = "time::option", default)]
    pub due_at: Option<SystemTime>,
    /// When its latest attempt started.
    #[serde(with = "time::option", default)]
    pub started_at: Option<SystemTime>,
    /// When it finished.
    #[serde(with = "time::option", default)]
    pub finished_at: Option<SystemTime>,
    /// When its status last changed.
    #[serde(with = "time")]
    pub updated_at: SystemTime,
    /// The worker that runs it or ran it last (`host:pid`).
    #[serde(default)]
    pub worker: Option<String>,
    /// Why the latest attempt failed, or why it was dead-lettered.
    #[serde(default)]
    pub error: Option<String>,
    /// Its handler's latest progress report.
    #[serde(default)]
    pub progress: Option<Progress>,
    /// What its handler left as the result.
    #[serde(default)]
    pub result: Option<Value>,
    /// Whether its cancellation was asked for.
    #[serde(default)]
    pub cancel_requested: bool,
    /// The unique key it was enqueued with.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// When the store forgets it if nothing changes it again.
    #[serde(with = "time")]
    pub expires_at: SystemTime,
}

impl JobStatus {
    /// The status of a job about to be enqueued: queued, `seq` 1.
    pub fn queued(
        id: MessageId,
        job: JobName,
        queue: QueueName,
        due_at: Option<SystemTime>,
        unique_key: Option<String>,
        expires_at: SystemTime,
    ) -> Self {
        let now = SystemTime::now();
        Self {
            id,
            job,
            queue,
            state: JobState::Queued,
            seq: 1,
            attempt: 0,
            enqueued_at: now,
            due_at,
            started_at: None,
            finished_at: None,
            updated_at: now,
            worker: None,
            error: None,
            progress: None,
            result: None,
            cancel_requested: false,
            unique_key,
            expires_at,
        }
    }

    /// The status after `patch`, with sequence number `seq`: what every store computes
    /// (stores that cannot run Rust compute the same in their own language). Fields the
    /// status does not have are ignored.
    pub fn merged(
        &self,
        patch: &Map<String, Value>,
        seq: u64,
    ) -> Result<JobStatus, serde_json::Error> {
        use serde::de::Error as _;
        fn field<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, serde_json::Error> {
            T::deserialize(value)
        }
        fn at(value: &Value) -> Result<SystemTime, serde_json::Error> {
            value
                .as_str()
                .and_then(time::parse)
                .ok_or_else(|| serde_json::Error::custom(format!("not an RFC 3339 time: {value}")))
        }
        fn maybe_at(value: &Value) -> Result<Option<SystemTime>, serde_json::Error> {
            if value.is_null() {
                Ok(None)
            } else {
                at(value).map(Some)
            }
        }
        let mut next = self.clone();
        for (name, value) in patch {
            match name.as_str() {
                "id" => next.id = field(value)?,
                "job" => next.job = field(value)?,
                "queue" => next.queue = field(value)?,
                "state" => next.state = field(value)?,
                "attempt" => next.attempt = field(value)?,
                "enqueued_at" => next.enqueued_at = at(value)?,
                "due_at" => next.due_at = maybe_at(value)?,
                "started_at" => next.started_at = maybe_at(value)?,
                "finished_at" => next.finished_at = maybe_at(value)?,
                "updated_at" => next.updated_at = at(value)?,
                "worker" => next.worker = field(value)?,
                "error" => next.error = field(value)?,
                "progress" => next.progress = field(value)?,
                "result" => next.result = Some(value.clone()).filter(|v| !v.is_null()),
                "cancel_requested" => next.cancel_requested = field(value)?,
                "unique_key" => next.unique_key = field(value)?,
                "expires_at" => next.expires_at = at(value)?,
                _ => {}
            }
        }
        next.seq = seq;
        Ok(next)
    }
}

/// One change to one job's status: a JSON merge of the fields that change, and when the
/// status expires after it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The job.
    pub id: MessageId,
    /// The fields that change (top-level; `null` clears one), `updated_at` and
    /// `expires_at` included.
    pub patch: Map<String, Value>,
    /// When the status expires after this change.
    pub expires_at: SystemTime,
}

impl Change {
    /// A change of job `id` by `patch`, made now, after which it expires at `expires_at`.
    pub fn new(id: MessageId, patch: Map<String, Value>, expires_at: SystemTime) -> Self {
        Self::made_at(id, patch, expires_at, SystemTime::now())
    }

    /// A change of job `id` by `patch`, made at `at` (its `updated_at`).
    pub(crate) fn made_at(
        id: MessageId,
        mut patch: Map<String, Value>,
        expires_at: SystemTime,
        at: SystemTime,
    ) -> Self {
        patch.insert("updated_at".into(), time::value(at));
        patch.insert("expires_at".into(), time::value(expires_at));
        Self {
            id,
            patch,
            expires_at,
        }
    }

    /// Folds a later change of the same job into this one: the later fields win, and the
    /// later expiry holds (what applying both in order leaves, in one change).
    pub fn absorb(&mut self, later: Change) {
        debug_assert_eq!(self.id, later.id);
        self.patch.extend(later.patch);
        self.expires_at = later.expires_at;
    }

    /// The state this change moves the job to, if it moves it.
    pub fn state(&self) -> Option<JobState> {
        serde_json::from_value(self.patch.get("state")?.clone()).ok()
    }
}

/// Changes with each job once: a job's later changes folded into its first (see
/// [`Change::absorb`]), jobs in the order they first appear. What applying `changes` in
/// order leaves, in fewer writes; each job's sequence number then grows by one.
pub fn coalesce(changes: impl IntoIterator<Item = Change>) -> Vec<Change> {
    let mut batch = Coalesced::default();
    for change in changes {
        batch.push(change);
    }
    batch.changes
}

/// `changes` with each job once, as [`coalesce`] folds them; borrowed as they are when no
/// job appears twice (what the worker's writer hands a store), so a store copies nothing.
pub fn coalesced(changes: &[Change]) -> std::borrow::Cow<'_, [Change]> {
    let mut seen = std::collections::HashSet::with_capacity(changes.len());
    if changes.iter().all(|change| seen.insert(&change.id)) {
        std::borrow::Cow::Borrowed(changes)
    } else {
        std::borrow::Cow::Owned(coalesce(changes.iter().cloned()))
    }
}

/// Changes being gathered for one write, each job once.
#[derive(Default)]
pub(crate) struct Coalesced {
    pub(crate) changes: Vec<Change>,
    index: std::collections::HashMap<MessageId, usize>,
}

impl Coalesced {
    /// Adds `change`, folding it into an earlier change of the same job.
    pub(crate) fn push(&mut self, change: Change) {
        match self.index.get(&change.id) {
            Some(&at) => self.changes[at].absorb(change),
            None => {
                self.index.insert(change.id.clone(), self.changes.len());
                self.changes.push(change);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.changes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.changes.clear();
        self.index.clear();
    }
}

/// The patches of the changes the runtime, handlers and the API make.
pub mod patch {
    use std::time::SystemTime;

    use serde_json::{Map, Value, json};

    use super::{JobState, Progress, time};

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    /// Attempt `attempt` started on `worker`.
    pub fn running(attempt: u32, worker: &str) -> Map<String, Value> {
        let mut patch = Map::new();
        put_running(&mut patch, attempt, worker, SystemTime::now(), false);
        patch
    }

    /// Puts the fields of [`running`] (attempt `attempt` started on `worker` at `started_at`)
    /// into `patch`; with `keep`, only those `patch` does not have (what folding `patch` into
    /// a `running` change leaves, without building that change).
    pub(crate) fn put_running(
        patch: &mut Map<String, Value>,
        attempt: u32,
        worker: &str,
        started_at: SystemTime,
        keep: bool,
    ) {
        let mut put = |name: &str, value: &dyn Fn() -> Value| {
            if !keep || !patch.contains_key(name) {
                patch.insert(name.to_owned(), value());
            }
        };
        put("state", &|| Value::from(JobState::Running.as_str()));
        put("attempt", &|| Value::from(attempt));
        put("worker", &|| Value::from(worker));
        put("started_at", &|| time::value(started_at));
        put("due_at", &|| Value::Null);
        put("progress", &|| Value::Null);
    }

    /// Attempt `attempt` failed with `error`; the next runs at `next_try_at`.
    pub fn retrying(attempt: u32, error: &str, next_try_at: SystemTime) -> Map<String, Value> {
        object(json!({
            "state": JobState::Retrying,
            "attempt": attempt,
            "error": error,
            "due_at": time::value(next_try_at),
        }))
    }

    /// Succeeded, leaving `result`.
    pub fn succeeded(result: Option<&Value>) -> Map<String, Value> {
        object(json!({
            "state": JobState::Succeeded,
            "finished_at": time::value(SystemTime::now()),
            "result": result,
            "error": null,
            "due_at": null,
        }))
    }

    /// Dead-lettered for `reason`.
    pub fn dead_lettered(reason: &str) -> Map<String, Value> {
        object(json!({
            "state": JobState::DeadLettered,
            "finished_at": time::value(SystemTime::now()),
            "error": reason,
            "due_at": null,
        }))
    }

    /// Cancelled as asked.
    pub fn cancelled() -> Map<String, Value> {
        object(json!({
            "state": JobState::Cancelled,
            "finished_at": time::value(SystemTime::now()),
            "due_at": null,
        }))
    }

    /// Handed back to the queue (shutdown), due again now.
    pub fn requeued() -> Map<String, Value> {
        object(json!({ "state": JobState::Queued, "due_at": null }))
    }

    /// The handler's progress.
    pub fn progress(progress: &Progress) -> Map<String, Value> {
        object(json!({ "progress": progress }))
    }

    /// Its cancellation was asked for.
    pub fn cancel_requested() -> Map<String, Value> {
        object(json!({ "cancel_requested": true }))
    }
}

/// Times as RFC 3339 strings in UTC, with milliseconds.
pub(crate) mod time {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::Value;

    /// `time` as an RFC 3339 string (`2026-12-01T10:00:00.123Z`). Every status change
    /// carries two or three times, so this is written out by hand: a tenth of what a
    /// general formatter costs. Times before 1970 or after 9999 go through `chrono`.
    pub(crate) fn text(time: SystemTime) -> String {
        let Some(millis) = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|since| since.as_millis())
            .filter(|&millis| millis < 253_402_300_800_000)
        else {
            return chrono::DateTime::<chrono::Utc>::from(time)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        };
        // Both below 2^64 for years up to 9999.
        let (days, of_day) = ((millis / 86_400_000) as u64, (millis % 86_400_000) as u64);
        let (year, month, day) = civil_from_days(days);
        let mut text = String::with_capacity(24);
        let mut push = |value: u64, digits: u32, after: char| {
            for place in (0..digits).rev() {
                let digit = (value / 10u64.pow(place)) % 10;
                text.push(char::from(b'0' + digit as u8));
            }
            text.push(after);
        };
        push(year, 4, '-');
        push(month, 2, '-');
        push(day, 2, 'T');
        push(of_day / 3_600_000, 2, ':');
        push(of_day / 60_000 % 60, 2, ':');
        push(of_day / 1000 % 60, 2, '.');
        push(of_day % 1000, 3, 'Z');
        text
    }

    /// Year, month and day of the `days`th day after 1970-01-01 (Howard Hinnant's
    /// `civil_from_days`, for days on or after the epoch).
    fn civil_from_days(days: u64) -> (u64, u64, u64) {
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        (year, month, day)
    }

    /// `time` as a JSON string.
    pub(crate) fn value(time: SystemTime) -> Value {
        Value::from(text(time))
    }

    pub(crate) fn parse(text: &str) -> Option<SystemTime> {
        chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|time| SystemTime::from(time.with_timezone(&chrono::Utc)))
    }

    pub(crate) fn serialize<S: Serializer>(
        time: &SystemTime,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&text(*time))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 time: `{text}`")))
    }

    pub(crate) mod option {
        use std::time::SystemTime;

        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            time: &Option<SystemTime>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match time {
                Some(time) => serializer.serialize_str(&super::text(*time)),
                None => serializer.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<SystemTime>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                Some(text) => super::parse(&text).map(Some).ok_or_else(|| {
                    serde::de::Error::custom(format!("not an RFC 3339 time: `{text}`"))
                }),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::message::unix_millis as millis;

    #[test]
    fn statuses_round_trip_through_json_with_rfc3339_times() {
        let status = JobStatus::queued(
            MessageId::new("m1"),
            JobName::new("resize"),
            QueueName::new("images"),
            None,
            Some("user-7".into()),
            UNIX_EPOCH + Duration::from_millis(1_800_000_000_123),
        );
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"], "queued");
        assert_eq!(json["expires_at"], "2027-01-15T08:00:00.123Z");
        assert_eq!(json["due_at"], Value::Null);
        let back: JobStatus = serde_json::from_value(json).unwrap();
        assert_eq!(millis(back.enqueued_at), millis(status.enqueued_at));
        assert_eq!(back.unique_key.as_deref(), Some("user-7"));
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let chrono_text = |time: SystemTime| {
            chrono::DateTime::<chrono::Utc>::from(time)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        // Leap days, year ends, 2000 and 2100, the far future, and a spread in between.
        let mut samples = vec![
            0,
            951_782_400_000,
            951_868_799_999,
            4_107_542_400_000,
            1_798_761_599_999,
            253_402_300_799_999,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x % 253_402_300_800_000);
        }
        for millis in samples {
            let at = UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(time::text(at), chrono_text(at), "{millis} ms");
        }
        let before_1970 = UNIX_EPOCH - Duration::from_millis(1);
        assert_eq!(time::text(before_1970), "1969-12-31T23:59:59.999Z");
        let after_9999 = UNIX_EPOCH + Duration::from_millis(253_402_300_800_000);
        assert_eq!(time::text(after_9999), chrono_text(after_9999));
    }

    #[test]
    fn a_merge_changes_only_the_patched_fields() {
        let status = JobStatus::queued(
            MessageId::new("m1"),
            JobName::new("resize"),
            QueueName::new("images"),
            None,
            None,
            SystemTime::now(),
        );
        let running = status.merged(&patch::running(1, "w:1"), 2).unwrap();
        assert_eq!(
            (running.state, running.seq, running.attempt),
            (JobState::Running, 2, 1)
        );
        assert_eq!(running.worker.as_deref(), Some("w:1"));
        let progress = Progress {
            fraction: 0.5,
            message: "half".into(),
        };
        let half = running.merged(&patch::progress(&progress), 3).unwrap();
        assert_eq!(half.state, JobState::Running);
        assert_eq!(half.progress, Some(progress));
        let done = half
            .merged(&patch::succeeded(Some(&serde_json::json!({"pages": 3}))), 4)
            .unwrap();
        assert!(done.state.is_finished());
        assert_eq!(done.result, Some(serde_json::json!({"pages": 3})));
        assert_eq!(done.progress, half.progress, "the last progress stays");
    }
}
