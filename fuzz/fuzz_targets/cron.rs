//! Cron expressions: parsing any text never panics; a schedule that parses yields
//! occurrences in order, each after the instant asked about.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use longshore_core::schedule::{CronSchedule, Tz};

fuzz_target!(|input: (String, u32, bool)| {
    let (expression, seconds, paris) = input;
    let zone = if paris { Tz::Europe__Paris } else { Tz::UTC };
    let Ok(schedule) = CronSchedule::parse(&expression, zone) else {
        return;
    };
    let after = UNIX_EPOCH + Duration::from_secs(u64::from(seconds));
    if let Some(next) = schedule.next_after(after) {
        assert!(next > after);
        if let Some(previous) = schedule.previous_before(next) {
            assert!(previous < next);
        }
    }
    let mut last = after;
    for tick in schedule.ticks(after, after + Duration::from_secs(3 * 86_400)).take(50) {
        assert!(tick > last);
        last = tick;
    }
});
