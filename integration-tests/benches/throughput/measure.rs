//! Where a run's time went: CPU seconds per process from `/proc`, and `perf record` control.

/// With `BENCH_PERF_CONTROL=<fifo>` (`perf record --control fifo:<fifo> -D -1`), profiles
/// only the drains.
pub(super) fn perf_control(command: &str) {
    if let Ok(path) = std::env::var("BENCH_PERF_CONTROL") {
        use std::io::Write;
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("the perf control fifo");
        writeln!(fifo, "{command}").expect("write to the perf control fifo");
    }
}

/// CPU seconds used so far by the processes whose names start with each of `names`
/// (Linux `/proc`; zeros elsewhere).
pub(super) fn cpu_seconds(names: &[&str]) -> Vec<f64> {
    let mut totals = vec![0.0; names.len()];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    // Clock ticks per second: 100 on Linux.
    let tick = 100.0;
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let used = fields
            .get(11)
            .zip(fields.get(12))
            .and_then(|(u, s)| Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?))
            .unwrap_or(0.0)
            / tick;
        for (name, total) in names.iter().zip(&mut totals) {
            if comm.starts_with(name) {
                *total += used;
            }
        }
    }
    totals
}

/// The median of `values` (sorted in place): the mean of the two middle ones when their
/// count is even.
pub(super) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}
