//! Graceful and immediate shutdown of a worker process by real signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    fn start(mode: &str, jobs: u32, concurrency: usize) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_signal_worker"))
            .args([mode, &jobs.to_string(), &concurrency.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start signal_worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// Waits for a line containing `needle` (the report, or one of the worker's log lines).
    fn expect_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!("no `{needle}` line from the worker within {timeout:?}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the worker") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the worker did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn sigterm_finishes_in_flight_jobs_and_leaves_the_rest_queued() {
    let worker = Worker::start("sleep", 20, 4);
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
    let worker = Worker::start("sleep", 3, 3);
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
    let worker = Worker::start("hang", 5, 2);
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
