//! Worker processes for tests that need real signals or a real crash.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A worker process (the `signal_worker` binary), its stdout read line by line and its
/// stderr kept (and echoed) for checks such as "nothing panicked".
pub struct WorkerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: std::thread::JoinHandle<()>,
}

impl WorkerProcess {
    /// Starts `exe` with `args` (tests pass `env!("CARGO_BIN_EXE_signal_worker")`).
    pub fn start(exe: &str, args: &[String]) -> Self {
        Self::start_with_env(exe, args, &[])
    }

    /// Starts `exe` with `args` and extra environment variables.
    pub fn start_with_env(exe: &str, args: &[String], env: &[(&str, String)]) -> Self {
        let mut child = Command::new(exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start signal_worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let kept = Arc::clone(&stderr);
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut kept = kept.lock().expect("not poisoned");
                kept.push_str(&line);
                kept.push('\n');
            }
        });
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            lines,
            stderr,
            stderr_reader,
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("not poisoned").clone()
    }

    /// Waits for a line containing `needle` (the report, or one of the worker's log lines).
    pub fn expect_line(&self, needle: &str, timeout: Duration) -> String {
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

    /// Sends a signal by name (`TERM`, `INT`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (killing it after `timeout`) and returns its exit
    /// status with everything it wrote to stderr.
    pub fn wait_with_stderr(self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let stderr = Arc::clone(&self.stderr);
        let (status, reader) = self.exit(timeout);
        let _ = reader.join();
        let text = stderr.lock().expect("not poisoned").clone();
        (status, text)
    }

    /// Waits for the process to exit, killing it after `timeout`.
    pub fn wait(self, timeout: Duration) -> std::process::ExitStatus {
        self.exit(timeout).0
    }

    fn exit(
        mut self,
        timeout: Duration,
    ) -> (std::process::ExitStatus, std::thread::JoinHandle<()>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the worker") {
                return (status, self.stderr_reader);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the worker did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
