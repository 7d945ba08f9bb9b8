//! Graceful and immediate shutdown of a worker process by real signals.

use std::time::{Duration, Instant};

use integration_tests::process::WorkerProcess;

fn start(mode: &str, jobs: u32, concurrency: usize) -> WorkerProcess {
    let args = [mode.to_owned(), jobs.to_string(), concurrency.to_string()];
    WorkerProcess::start(env!("CARGO_BIN_EXE_signal_worker"), &args)
}

#[test]
fn sigterm_finishes_in_flight_jobs_and_leaves_the_rest_queued() {
    let worker = start("sleep", 20, 4);
    worker.expect_line("jobs running", Duration::from_secs(10));
    worker.signal("TERM");
    let report = worker.expect_line("report ", Duration::from_secs(10));
    assert_eq!(
        report,
        "report succeeded=4 released=0 immediate=false ready=16"
    );
    assert!(
        worker.wait(Duration::from_secs(5)).success(),
        "exit 0 after graceful shutdown"
    );
}

#[test]
fn sigint_works_like_sigterm() {
    let worker = start("sleep", 3, 3);
    worker.expect_line("jobs running", Duration::from_secs(10));
    worker.signal("INT");
    let report = worker.expect_line("report ", Duration::from_secs(10));
    assert_eq!(
        report,
        "report succeeded=3 released=0 immediate=false ready=0"
    );
    assert!(worker.wait(Duration::from_secs(5)).success());
}

#[test]
fn a_second_signal_stops_at_once() {
    let worker = start("hang", 5, 2);
    worker.expect_line("jobs running", Duration::from_secs(10));
    worker.signal("TERM");
    // The jobs hang and the shutdown timeout is 60 s: only the second signal ends it now.
    worker.expect_line("shutdown signal received", Duration::from_secs(5));
    let second = Instant::now();
    worker.signal("TERM");
    let report = worker.expect_line("report ", Duration::from_secs(5));
    assert!(second.elapsed() < Duration::from_secs(5));
    assert_eq!(
        report,
        "report succeeded=0 released=0 immediate=true ready=3"
    );
    assert!(worker.wait(Duration::from_secs(5)).success());
}
