//! Cron expressions in a time zone: parsing (with [croner]) and the ticks between two
//! instants, daylight-saving transitions included.

use std::str::FromStr as _;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

use super::ScheduleError;

/// A parsed cron expression and the time zone its fields are read in.
///
/// Five fields (`minute hour day-of-month month day-of-week`, as in crontab), or six with
/// seconds first; names (`MON-FRI`, `JAN`), ranges, lists, steps, `L`, `W` and `#`, and the
/// nicknames `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
///
/// Daylight-saving time, as [OCPS](https://github.com/open-source-cron/ocps) says: a tick
/// whose wall-clock time falls in a spring-forward gap runs at the first instant after the
/// gap; a tick at a fixed time in a fall-back overlap runs once, at the first of the two
/// instants; an interval (`*` or `*/n` in the hour field) keeps running through both.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    cron: Cron,
    time_zone: Tz,
    expression: String,
}

impl CronSchedule {
    /// Parses `expression`, read in `time_zone`.
    pub fn parse(expression: &str, time_zone: Tz) -> Result<Self, ScheduleError> {
        let parser = CronParser::builder().seconds(Seconds::Optional).build();
        let cron = match expression.trim() {
            nickname if nickname.starts_with('@') => Cron::from_str(nickname),
            fields => parser.parse(fields),
        }
        .map_err(|error| ScheduleError::Cron {
            expression: expression.to_owned(),
            problem: error.to_string(),
        })?;
        Ok(Self {
            cron,
            time_zone,
            expression: expression.to_owned(),
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone its fields are read in.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// The first tick strictly after `after`, or `None` if the expression never matches again.
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        self.occurrence(after, Direction::Next, false)
    }

    /// The ticks `t` with `after < t <= until`, oldest first.
    pub fn ticks(&self, after: SystemTime, until: SystemTime) -> impl Iterator<Item = SystemTime> {
        let mut cursor = after;
        std::iter::from_fn(move || {
            let next = self.next_after(cursor)?;
            if next > until {
                return None;
            }
            cursor = next;
            Some(next)
        })
    }

    /// The latest tick strictly before `before`.
    pub fn previous_before(&self, before: SystemTime) -> Option<SystemTime> {
        self.occurrence(before, Direction::Previous, false)
    }

    /// The latest tick at or before `at`, if any in the last `within`.
    pub fn latest_at_or_before(&self, at: SystemTime, within: Duration) -> Option<SystemTime> {
        let previous = self.occurrence(at, Direction::Previous, true)?;
        (at.duration_since(previous).unwrap_or_default() <= within).then_some(previous)
    }

    /// The tick nearest `from` in `direction` (`from` itself too when `inclusive`), found in
    /// the schedule's time zone.
    fn occurrence(
        &self,
        from: SystemTime,
        direction: Direction,
        inclusive: bool,
    ) -> Option<SystemTime> {
        let local = DateTime::<Utc>::from(from).with_timezone(&self.time_zone);
        let found = match direction {
            Direction::Next => self.cron.find_next_occurrence(&local, inclusive),
            Direction::Previous => self.cron.find_previous_occurrence(&local, inclusive),
        };
        found
            .ok()
            .map(|tick| SystemTime::from(tick.with_timezone(&Utc)))
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Next,
    Previous,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> SystemTime {
        SystemTime::from(Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap())
    }

    fn local(tz: Tz, t: SystemTime) -> String {
        DateTime::<Utc>::from(t)
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    }

    fn ticks(schedule: &CronSchedule, after: SystemTime, until: SystemTime) -> Vec<String> {
        schedule
            .ticks(after, until)
            .map(|t| local(schedule.time_zone(), t))
            .collect()
    }

    #[test]
    fn five_fields_in_utc_by_default_semantics() {
        let s = CronSchedule::parse("0 9 * * MON-FRI", Tz::UTC).unwrap();
        // Friday 2026-11-20 to Tuesday 2026-11-24.
        assert_eq!(
            ticks(&s, utc(2026, 11, 20, 0, 0, 0), utc(2026, 11, 24, 23, 0, 0)),
            [
                "2026-11-20 09:00:00 UTC",
                "2026-11-23 09:00:00 UTC",
                "2026-11-24 09:00:00 UTC"
            ]
        );
    }

    #[test]
    fn six_fields_have_seconds_and_nicknames_work() {
        let s = CronSchedule::parse("*/20 * * * * *", Tz::UTC).unwrap();
        let start = utc(2026, 1, 1, 0, 0, 0);
        assert_eq!(s.ticks(start, start + Duration::from_secs(60)).count(), 3);
        let daily = CronSchedule::parse("@daily", Tz::UTC).unwrap();
        assert_eq!(daily.next_after(start), Some(utc(2026, 1, 2, 0, 0, 0)));
    }

    #[test]
    fn a_tick_is_strictly_after_the_start() {
        let s = CronSchedule::parse("0 * * * *", Tz::UTC).unwrap();
        let on_tick = utc(2026, 1, 1, 5, 0, 0);
        assert_eq!(s.next_after(on_tick), Some(utc(2026, 1, 1, 6, 0, 0)));
        assert_eq!(s.ticks(on_tick, on_tick).count(), 0);
        assert_eq!(
            s.latest_at_or_before(on_tick, Duration::from_secs(1)),
            Some(on_tick)
        );
    }

    #[test]
    fn bad_expressions_are_clear_errors() {
        for bad in ["", "61 * * * *", "* * *", "0 9 * * FUNDAY", "a b c d e"] {
            let error = CronSchedule::parse(bad, Tz::UTC).unwrap_err().to_string();
            assert!(error.contains("cron expression"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn spring_forward_gap_runs_the_missing_time_once_at_the_end_of_the_gap() {
        // Europe/Berlin jumps from 02:00 CET to 03:00 CEST on 2026-03-29.
        let berlin = Tz::Europe__Berlin;
        let s = CronSchedule::parse("30 2 * * *", berlin).unwrap();
        assert_eq!(
            ticks(&s, utc(2026, 3, 27, 12, 0, 0), utc(2026, 3, 30, 12, 0, 0)),
            [
                "2026-03-28 02:30:00 CET",
                "2026-03-29 03:00:00 CEST",
                "2026-03-30 02:30:00 CEST"
            ]
        );
        // A daily job outside the gap keeps its wall-clock time: 23 h apart across the change.
        let nine = CronSchedule::parse("0 9 * * *", berlin).unwrap();
        let around: Vec<_> = nine
            .ticks(utc(2026, 3, 28, 0, 0, 0), utc(2026, 3, 30, 0, 0, 0))
            .collect();
        assert_eq!(around.len(), 2);
        assert_eq!(
            around[1].duration_since(around[0]).unwrap(),
            Duration::from_secs(23 * 3600)
        );
    }

    #[test]
    fn fall_back_overlap_runs_a_fixed_time_once_and_an_interval_through_both_hours() {
        // America/New_York falls back from 02:00 EDT to 01:00 EST on 2026-11-01.
        let ny = Tz::America__New_York;
        let fixed = CronSchedule::parse("30 1 * * *", ny).unwrap();
        assert_eq!(
            ticks(
                &fixed,
                utc(2026, 10, 31, 12, 0, 0),
                utc(2026, 11, 2, 12, 0, 0)
            ),
            ["2026-11-01 01:30:00 EDT", "2026-11-02 01:30:00 EST"]
        );
        let half_hourly = CronSchedule::parse("*/30 * * * *", ny).unwrap();
        assert_eq!(
            ticks(
                &half_hourly,
                utc(2026, 11, 1, 4, 45, 0),
                utc(2026, 11, 1, 7, 15, 0)
            ),
            [
                "2026-11-01 01:00:00 EDT",
                "2026-11-01 01:30:00 EDT",
                "2026-11-01 01:00:00 EST",
                "2026-11-01 01:30:00 EST",
                "2026-11-01 02:00:00 EST"
            ]
        );
    }

    #[test]
    fn southern_hemisphere_and_half_hour_zones() {
        // Australia/Adelaide (+10:30 / +9:30) leaves DST on 2026-04-05 at 03:00 local.
        let adelaide = Tz::Australia__Adelaide;
        let s = CronSchedule::parse("0 9 * * *", adelaide).unwrap();
        let days: Vec<_> = s
            .ticks(utc(2026, 4, 3, 0, 0, 0), utc(2026, 4, 6, 12, 0, 0))
            .collect();
        assert_eq!(
            days.iter().map(|t| local(adelaide, *t)).collect::<Vec<_>>(),
            [
                "2026-04-04 09:00:00 ACDT",
                "2026-04-05 09:00:00 ACST",
                "2026-04-06 09:00:00 ACST"
            ]
        );
        assert_eq!(
            days[1].duration_since(days[0]).unwrap(),
            Duration::from_secs(25 * 3600)
        );
    }
}
