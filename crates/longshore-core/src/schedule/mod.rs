//! Cron schedules that are safe to run in every replica.
//!
//! Register a schedule on a worker (or on a [`Scheduler`] of its own) and run as many
//! replicas as you like: each tick is enqueued once, as a job on the worker's queue, whose
//! [`JobContext::trigger`](crate::JobContext) is [`Trigger::Schedule`](crate::Trigger) with
//! the schedule's name and the tick time.
//!
//! ```
//! use longshore_core::schedule::{CatchUp, Schedule, Tz};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct Report { kind: String }
//! # impl longshore_core::Job for Report { const NAME: &'static str = "report"; }
//!
//! let weekdays = Schedule::new("morning-report", "0 9 * * MON-FRI", Tz::Europe__Paris, || Report {
//!     kind: "morning".into(),
//! })?
//! .catch_up(CatchUp::RunOnce);
//! # let _ = weekdays; Ok::<(), longshore_core::schedule::ScheduleError>(())
//! ```
//!
//! # How one tick is enqueued once
//!
//! Every replica runs the same loop for each schedule: take the schedule's *lease* on the
//! broker, and while holding it, enqueue the ticks that are due and record the newest one
//! (the *watermark*) on the broker; replicas that do not hold the lease poll for it. The
//! lease and the watermark use the broker's own means; no lock service is involved:
//!
//! | broker | lease | watermark |
//! | --- | --- | --- |
//! | RabbitMQ | an exclusive queue `<queue>.schedule.<name>.lease`, declared on a connection of its own: RabbitMQ lets one connection hold it and deletes it the moment that connection dies | one message in the durable queue `<queue>.schedule.<name>`, replaced (publish confirmed, then ack the old) on each tick |
//! | SQS | a token message in a FIFO queue `<queue>-schedule-<name>.fifo`, one message group: SQS hands a group's messages to one receiver at a time; the holder keeps the token invisible with heartbeats | the token's body; a new token (deduplication id = the watermark) replaces the old one |
//! | memory | a slot in the broker | the same slot |
//!
//! Tick jobs carry the message id `schedule:<name>@<tick unix millis>` (and that
//! deduplication id on SQS FIFO queues), so a tick enqueued twice is recognisable.
//!
//! # Guarantee and its limits
//!
//! - While replicas run normally, start, stop (gracefully or killed) and fail over, each tick
//!   is enqueued exactly once; after a failover the new holder enqueues what the old one had
//!   not recorded, following the schedule's [`CatchUp`] policy.
//! - A holder killed in the window between enqueuing a tick and recording it (a few
//!   milliseconds per tick) makes its successor enqueue that tick again: at least once, never
//!   lost. Work queues on SQS FIFO drop that copy by its deduplication id; elsewhere a
//!   handler that must not run twice can check the message id.
//! - On SQS the lease is a visibility timeout (30 s, renewed every 10 s): a holder stalled
//!   for longer than that (a frozen VM) can overlap with its successor. On RabbitMQ the lease
//!   ends with the holder's connection, and ticks are published on that same connection, so a
//!   holder that lost the lease cannot publish.
//! - Failover takes up to the standby poll (1 s) after a graceful stop, and after a crash on
//!   RabbitMQ (its connection closes; for a frozen or cut-off host, the heartbeat timeout);
//!   after a crash on SQS, up to the 30 s lease.
//! - Precision: a tick is enqueued when it is due (the holder sleeps until it), within
//!   milliseconds; the job then waits for a free worker like any other.
//! - Cron fields are read in the schedule's time zone, DST transitions as [`CronSchedule`]
//!   says. The watermark is an instant, so a restart never re-runs or skips ticks because of
//!   the time zone.
//! - The first time a schedule runs anywhere it starts from now: ticks before it existed are
//!   not caught up. [`ScheduleStore::delete`] deletes a removed schedule's lease and
//!   watermark.
//! - Schedules need a broker that can hold their leases ([`Broker::schedules`](crate::Broker::schedules));
//!   a worker with schedules on one that cannot fails to build, saying so.

mod cron;
mod lease;
mod runner;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use chrono_tz::Tz;

use crate::job::Job;
use crate::names::JobName;

pub use cron::CronSchedule;
pub use lease::{
    RENEW_EVERY, ScheduleInfo, ScheduleKey, ScheduleLease, ScheduleStore, decode_holder,
    decode_watermark, encode_watermark, lease_lost,
};
pub use runner::Scheduler;

/// What a schedule does with ticks it missed (the scheduler was down, or no replica ran):
/// ticks older than the schedule's grace when it comes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CatchUp {
    /// Drop them; only ticks within the grace run.
    Skip,
    /// Run the latest missed tick once, however many were missed. The default.
    #[default]
    RunOnce,
    /// Run each missed tick, oldest first, at most the latest `max` of them.
    RunEach {
        /// The most missed ticks to run.
        max: usize,
    },
}

/// Why a schedule was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error(
        "invalid cron expression `{expression}`: {problem}; use five fields (minute hour \
         day-of-month month day-of-week), or six with seconds first"
    )]
    Cron {
        /// The expression.
        expression: String,
        /// What the parser said.
        problem: String,
    },
    /// The schedule name cannot name broker queues.
    #[error(
        "invalid schedule name `{0}`: use 1 to 40 ASCII letters, digits, `-` or `_` (it names \
         the broker queues holding the schedule's lease)"
    )]
    Name(String),
    /// Two schedules share a name.
    #[error("two schedules are named `{0}`; schedule names must be unique per queue")]
    Duplicate(String),
    /// The broker cannot hold schedule leases.
    #[error(
        "the {0} broker cannot hold cron schedules' leases, so schedules cannot run on it; \
         use RabbitMQ, SQS or the memory broker for the replicas that schedule"
    )]
    Unsupported(&'static str),
}

type MakeJob = dyn Fn() -> Result<Vec<u8>, serde_json::Error> + Send + Sync;

/// A named cron schedule and the job it enqueues on each tick.
#[derive(Clone)]
pub struct Schedule {
    name: String,
    cron: CronSchedule,
    catch_up: CatchUp,
    grace: Duration,
    job: JobName,
    make: Arc<MakeJob>,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("name", &self.name)
            .field("cron", &self.cron.expression())
            .field("time_zone", &self.cron.time_zone())
            .field("catch_up", &self.catch_up)
            .field("grace", &self.grace)
            .field("job", &self.job)
            .finish()
    }
}

impl Schedule {
    /// A schedule `name` enqueuing `job()` at each tick of `expression`, read in `time_zone`
    /// (`Tz::UTC` for UTC). Catch-up: [`CatchUp::RunOnce`]; grace: 60 s.
    pub fn new<J, F>(
        name: impl Into<String>,
        expression: &str,
        time_zone: Tz,
        job: F,
    ) -> Result<Self, ScheduleError>
    where
        J: Job,
        F: Fn() -> J + Send + Sync + 'static,
    {
        let name = name.into();
        let valid = (1..=40).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(ScheduleError::Name(name));
        }
        Ok(Self {
            name,
            cron: CronSchedule::parse(expression, time_zone)?,
            catch_up: CatchUp::default(),
            grace: Duration::from_secs(60),
            job: J::NAME.into(),
            make: Arc::new(move || serde_json::to_vec(&job())),
        })
    }

    /// A schedule in UTC.
    pub fn utc<J, F>(
        name: impl Into<String>,
        expression: &str,
        job: F,
    ) -> Result<Self, ScheduleError>
    where
        J: Job,
        F: Fn() -> J + Send + Sync + 'static,
    {
        Self::new(name, expression, Tz::UTC, job)
    }

    /// What to do with missed ticks. Default: [`CatchUp::RunOnce`].
    pub fn catch_up(mut self, policy: CatchUp) -> Self {
        self.catch_up = policy;
        self
    }

    /// How late a tick may be enqueued and still count as on time rather than missed.
    /// Default: 60 s (it covers a failover).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The job it enqueues.
    pub fn job(&self) -> &JobName {
        &self.job
    }

    /// The cron expression and time zone.
    pub fn cron(&self) -> &CronSchedule {
        &self.cron
    }

    /// What a holder of the lease does at `now`, given the recorded `watermark`.
    pub fn plan(&self, watermark: SystemTime, now: SystemTime) -> Plan {
        plan(&self.cron, self.catch_up, self.grace, watermark, now)
    }
}

/// Which ticks to enqueue now, and the watermark to record afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The ticks to enqueue, oldest first.
    pub enqueue: Vec<SystemTime>,
    /// How many missed ticks the policy dropped.
    pub skipped: usize,
    /// The newest tick dealt with (enqueued or skipped), if any was due.
    pub watermark: Option<SystemTime>,
}

/// The most missed ticks counted for a log line; beyond it the count says "at least".
const COUNT_LIMIT: usize = 10_000;

fn plan(
    cron: &CronSchedule,
    catch_up: CatchUp,
    grace: Duration,
    watermark: SystemTime,
    now: SystemTime,
) -> Plan {
    // Ticks in (watermark, cutoff) are missed; ticks in [cutoff, now] are on time.
    let cutoff = now.checked_sub(grace).unwrap_or(now).max(watermark);
    let last_missed = cutoff
        .checked_sub(Duration::from_millis(1))
        .unwrap_or(cutoff);
    let on_time: Vec<SystemTime> = cron.ticks(last_missed.max(watermark), now).collect();
    let missed_window = last_missed.duration_since(watermark).unwrap_or_default();
    let latest_missed = if last_missed > watermark {
        cron.latest_at_or_before(last_missed, missed_window)
            .filter(|tick| *tick > watermark)
    } else {
        None
    };
    let missed_count = || cron.ticks(watermark, last_missed).take(COUNT_LIMIT).count();
    let caught_up: Vec<SystemTime> = match (catch_up, latest_missed) {
        (_, None) | (CatchUp::Skip, _) => Vec::new(),
        (CatchUp::RunOnce, Some(latest)) => vec![latest],
        (CatchUp::RunEach { max }, Some(latest)) => {
            let mut newest_first = vec![latest];
            while newest_first.len() < max {
                match cron.previous_before(newest_first[newest_first.len() - 1]) {
                    Some(tick) if tick > watermark => newest_first.push(tick),
                    _ => break,
                }
            }
            newest_first.truncate(max);
            newest_first.reverse();
            newest_first
        }
    };
    let skipped = if latest_missed.is_some() {
        missed_count().saturating_sub(caught_up.len())
    } else {
        0
    };
    let watermark = on_time.last().copied().or(latest_missed);
    let mut enqueue = caught_up;
    enqueue.extend(on_time);
    Plan {
        enqueue,
        skipped,
        watermark,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn secs(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    fn every_second() -> CronSchedule {
        CronSchedule::parse("* * * * * *", Tz::UTC).unwrap()
    }

    fn run(catch_up: CatchUp, watermark: u64, now_ms: u64) -> Plan {
        plan(
            &every_second(),
            catch_up,
            Duration::from_millis(1500),
            secs(watermark),
            UNIX_EPOCH + Duration::from_millis(now_ms),
        )
    }

    #[test]
    fn on_time_ticks_run_under_every_policy() {
        for policy in [CatchUp::Skip, CatchUp::RunOnce, CatchUp::RunEach { max: 5 }] {
            let p = run(policy, 100, 101_020);
            assert_eq!(p.enqueue, [secs(101)], "{policy:?}");
            assert_eq!(p.watermark, Some(secs(101)));
            assert_eq!(p.skipped, 0);
        }
    }

    #[test]
    fn nothing_due_records_nothing() {
        let p = run(CatchUp::RunOnce, 100, 100_900);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn a_gap_follows_the_policy() {
        // Down from 100 to 110.2: ticks 101..=108 are missed (older than 1.5 s), 109 and 110
        // are within the grace.
        let skip = run(CatchUp::Skip, 100, 110_200);
        assert_eq!(skip.enqueue, [secs(109), secs(110)]);
        assert_eq!(skip.skipped, 8);
        assert_eq!(skip.watermark, Some(secs(110)));

        let once = run(CatchUp::RunOnce, 100, 110_200);
        assert_eq!(once.enqueue, [secs(108), secs(109), secs(110)]);
        assert_eq!(once.skipped, 7);

        let each = run(CatchUp::RunEach { max: 3 }, 100, 110_200);
        assert_eq!(
            each.enqueue,
            [secs(106), secs(107), secs(108), secs(109), secs(110)]
        );
        assert_eq!(each.skipped, 5);

        let all = run(CatchUp::RunEach { max: 100 }, 100, 110_200);
        assert_eq!(all.enqueue, (101..=110).map(secs).collect::<Vec<_>>());
        assert_eq!(all.skipped, 0);
    }

    #[test]
    fn only_missed_ticks_still_move_the_watermark() {
        let hourly = CronSchedule::parse("0 * * * *", Tz::UTC).unwrap();
        let p = plan(
            &hourly,
            CatchUp::Skip,
            Duration::from_secs(60),
            secs(0),
            secs(3 * 3600 + 600),
        );
        assert!(p.enqueue.is_empty());
        assert_eq!(p.skipped, 3);
        assert_eq!(p.watermark, Some(secs(3 * 3600)));
    }

    #[test]
    fn a_long_outage_is_bounded() {
        // A per-second schedule down for a day: the plan stays small.
        let each = run(CatchUp::RunEach { max: 10 }, 0, 86_400_000);
        assert_eq!(each.enqueue.len(), 10 + 2);
        assert_eq!(each.skipped, COUNT_LIMIT - 10);
    }

    #[test]
    fn names_are_checked() {
        #[derive(serde::Serialize)]
        struct Nothing;
        impl crate::Job for Nothing {
            const NAME: &'static str = "nothing";
        }
        impl<'de> serde::Deserialize<'de> for Nothing {
            fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                Ok(Nothing)
            }
        }
        for bad in ["", "has space", "dots.are.not", &"x".repeat(41)] {
            let error = Schedule::utc(bad, "* * * * *", || Nothing).unwrap_err();
            assert!(matches!(error, ScheduleError::Name(_)), "{bad:?}");
        }
        assert!(Schedule::utc("nightly_report-2", "0 3 * * *", || Nothing).is_ok());
    }
}
