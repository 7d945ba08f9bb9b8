//! The `longshore` command under test, on every broker: in process on the memory broker, as
//! the built binary (`target/<profile>/longshore`, which `scripts/test` builds) on RabbitMQ
//! and SQS, so a test can kill it.
//!
//! The dead letters the tests operate on are of the three kinds a team meets: a job no
//! worker had a handler for (a new job type during a rolling deploy), a permanent failure,
//! and a job that ran out of attempts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use longshore::{
    Broker, EnqueueOptions, Job, JobError, MessageId, Producer, QueueName, QueueOptions,
    RetryPolicy, Worker,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::conformance::{declared_queue, enqueue};
use crate::harness::{Behaviour, Harness, Probe, Recorder, Running, eventually, probe};

/// How a test runs the command.
#[derive(Clone)]
pub enum Runner {
    /// `longshore_cli::execute` in this process, on this broker.
    InProcess(Arc<dyn Broker>),
    /// The binary, with `--url` and extra environment.
    Binary {
        /// The broker URL.
        url: String,
        /// Environment (SQS endpoint and credentials).
        env: Vec<(&'static str, String)>,
    },
}

/// What a run of the command did.
#[derive(Debug)]
pub struct Output {
    /// The exit code.
    pub code: u8,
    /// What it printed on stdout.
    pub stdout: String,
    /// Its failure message (stderr).
    pub stderr: String,
}

impl Output {
    /// Stdout as JSON, or a panic showing what it printed.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|error| panic!("not JSON ({error}): {self:?}"))
    }

    /// Panics unless it exited 0.
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }
}

/// The built `longshore` binary, next to this test.
pub fn binary() -> PathBuf {
    let path = std::env::current_exe()
        .expect("the test's path")
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join("longshore");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p longshore-cli` (scripts/test does)",
        path.display()
    );
    path
}

impl Runner {
    /// Runs `longshore ARGS…`.
    pub async fn run(&self, args: &[&str]) -> Output {
        match self {
            Runner::InProcess(broker) => {
                let cli = longshore_cli::Cli::try_parse_from(
                    std::iter::once("longshore").chain(args.iter().copied()),
                )
                .unwrap_or_else(|error| panic!("bad arguments {args:?}: {error}"));
                let mut stdout = Vec::new();
                let result =
                    longshore_cli::execute(cli, &mut stdout, Some(Arc::clone(broker))).await;
                let stdout = String::from_utf8(stdout).expect("UTF-8 output");
                match result {
                    Ok(()) => Output {
                        code: 0,
                        stdout,
                        stderr: String::new(),
                    },
                    Err(failure) => Output {
                        code: failure.code(),
                        stdout,
                        stderr: failure.message().to_owned(),
                    },
                }
            }
            Runner::Binary { .. } => {
                let command = self.command(args);
                let output = tokio::task::spawn_blocking(move || {
                    let mut command = command;
                    command.output()
                })
                .await
                .expect("join")
                .expect("the longshore binary runs");
                Output {
                    code: output.status.code().map_or(255, |c| c as u8),
                    stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                    stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                }
            }
        }
    }

    /// The binary's command line for `args` (binary runners only).
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let Runner::Binary { url, env } = self else {
            panic!("only the binary runs as a process");
        };
        let mut command = std::process::Command::new(binary());
        command
            .args(args)
            .env("LONGSHORE_URL", url)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        command
    }
}

/// A job type the first worker has no handler for: its messages are dead-lettered as
/// unknown, and come back once a worker has it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportV2 {
    /// Which report.
    pub n: u32,
}

impl Job for ReportV2 {
    const NAME: &'static str = "report_v2";
}

/// Dead letters of three kinds on one queue: `unknown` unknown-job, `permanent` permanent
/// failures, `exhausted` out of attempts (2).
pub struct DeadLetters {
    /// The work queue.
    pub queue: QueueName,
    /// The ids of the unknown jobs.
    pub unknown: Vec<MessageId>,
    /// How many failed permanently.
    pub permanent: usize,
    /// How many ran out of attempts.
    pub exhausted: usize,
}

impl DeadLetters {
    /// All of them.
    pub fn total(&self) -> usize {
        self.unknown.len() + self.permanent + self.exhausted
    }
}

/// How many dead letters `queue` has, by the command (`dlq list --json`).
pub async fn dead_letter_count(runner: &Runner, queue: &QueueName) -> u64 {
    let listed = runner
        .run(&["dlq", "list", queue.as_str(), "--json"])
        .await
        .ok();
    listed.json()["dead_letters"].as_u64().expect("a count")
}

/// Makes the dead letters: enqueues the jobs, runs a worker that knows only `probe` (two
/// attempts) until all are dead-lettered, stops it.
pub async fn make_dead_letters(
    h: &Harness,
    runner: &Runner,
    purpose: &str,
    unknown: u32,
    permanent: u32,
    exhausted: u32,
) -> DeadLetters {
    let queue = declared_queue(h, purpose).await;
    let producer = Producer::new(Arc::clone(&h.broker), queue.clone());
    let mut ids = Vec::new();
    for n in 0..unknown {
        ids.push(
            producer
                .enqueue_with(&ReportV2 { n }, EnqueueOptions::default())
                .await
                .expect("enqueue"),
        );
    }
    let mut probes = Vec::new();
    for key in 0..permanent {
        probes.push(Probe {
            key,
            behaviour: Behaviour::FailPermanently,
        });
    }
    for key in 0..exhausted {
        probes.push(Probe {
            key: 1000 + key,
            behaviour: Behaviour::FailUntil(99),
        });
    }
    enqueue(h, &queue, probes).await;
    let worker = Running::start(
        Worker::builder(Arc::clone(&h.broker), queue.clone())
            .dependency_arc(Arc::new(Recorder::default()))
            .handler(probe)
            .retry_policy(RetryPolicy::exponential(
                Duration::from_millis(50),
                Duration::from_millis(100),
                2,
            ))
            .queue_options(QueueOptions::default().visibility_timeout(h.timing.visibility)),
    );
    let total = u64::from(unknown + permanent + exhausted);
    eventually(
        Duration::from_secs(60),
        &format!("{total} dead letters in `{queue}`"),
        || async {
            let stats = worker.stats.snapshot();
            if stats.dead_lettered == total {
                Ok(())
            } else {
                Err(format!("{stats:?}"))
            }
        },
    )
    .await;
    worker.stop().await;
    eventually(
        Duration::from_secs(30),
        "the dead-letter queue to show them all",
        || async {
            match dead_letter_count(runner, &queue).await {
                n if n == total => Ok(()),
                n => Err(format!("{n} listed")),
            }
        },
    )
    .await;
    DeadLetters {
        queue,
        unknown: ids,
        permanent: permanent as usize,
        exhausted: exhausted as usize,
    }
}

/// The groups `dlq list --json` printed: key → count.
pub fn groups(listed: &Value) -> BTreeMap<String, u64> {
    listed["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            (
                g["key"].as_str().expect("a key").to_owned(),
                g["count"].as_u64().expect("a count"),
            )
        })
        .collect()
}

/// The handler a newer worker has for [`ReportV2`]: records the ids it ran.
pub async fn report_v2(
    _job: ReportV2,
    seen: longshore::Dep<std::sync::Mutex<Vec<MessageId>>>,
    ctx: longshore::JobContext,
) -> Result<(), JobError> {
    seen.lock().expect("not poisoned").push(ctx.id.clone());
    Ok(())
}

/// A worker that has the [`ReportV2`] handler, and what it ran.
pub fn newer_worker(
    h: &Harness,
    queue: &QueueName,
) -> (Running, Arc<std::sync::Mutex<Vec<MessageId>>>) {
    let seen: Arc<std::sync::Mutex<Vec<MessageId>>> = Arc::default();
    let worker = Running::start(
        Worker::builder(Arc::clone(&h.broker), queue.clone())
            .dependency_arc(Arc::clone(&seen))
            .dependency_arc(Arc::new(Recorder::default()))
            .handler(probe)
            .handler(report_v2)
            .queue_options(QueueOptions::default().visibility_timeout(h.timing.visibility)),
    );
    (worker, seen)
}

/// Dead letters of three kinds are listed, grouped by reason and by job, and shown one by
/// one with body, headers and reason.
pub async fn dead_letters_are_listed_grouped_and_shown(h: &Harness, runner: &Runner) {
    let dead = make_dead_letters(h, runner, "cli-list", 3, 2, 4).await;
    let queue = dead.queue.as_str();
    let listed = runner
        .run(&["dlq", "list", queue, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(listed["dead_letters"], 9, "{listed}");
    let by_reason = groups(&listed);
    assert_eq!(by_reason.len(), 3, "three reasons: {by_reason:?}");
    let count_of = |needle: &str| {
        by_reason
            .iter()
            .filter(|(reason, _)| reason.contains(needle))
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    assert_eq!(count_of("unknown job `report_v2`"), 3, "{by_reason:?}");
    assert_eq!(count_of("this input can never work"), 2, "{by_reason:?}");
    assert_eq!(count_of("flaky on attempt 2"), 4, "{by_reason:?}");

    let by_job = runner
        .run(&["dlq", "list", queue, "--group-by", "job", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        groups(&by_job),
        BTreeMap::from([("probe".to_owned(), 6), ("report_v2".to_owned(), 3)])
    );

    let table = runner.run(&["dlq", "list", queue]).await.ok().stdout;
    assert!(
        table.contains("REASON") && table.contains("COUNT"),
        "{table}"
    );
    assert!(table.contains("9 dead letters of"), "{table}");

    let id = dead.unknown[0].to_string();
    let shown = runner
        .run(&["dlq", "show", queue, &id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["job"], "report_v2");
    assert_eq!(shown["body"], serde_json::json!({ "n": 0 }));
    assert!(
        shown["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no handler is registered")),
        "{shown}"
    );
    let missing = runner.run(&["dlq", "show", queue, "no-such-id"]).await;
    assert_eq!(missing.code, 3, "not found: {missing:?}");
    assert!(
        missing.stderr.contains("no dead letter `no-such-id`"),
        "{missing:?}"
    );
}

/// `--dry-run` lists what would move and moves nothing; a filtered redrive moves exactly
/// the matching dead letters (the others stay), and they then succeed on a worker that has
/// their handler.
pub async fn a_filtered_redrive_moves_exactly_the_matching_ones(h: &Harness, runner: &Runner) {
    let dead = make_dead_letters(h, runner, "cli-redrive", 3, 2, 2).await;
    let queue = dead.queue.as_str();

    let dry = runner
        .run(&[
            "dlq",
            "redrive",
            queue,
            "--job",
            "report_v2",
            "--dry-run",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(
        (dry["matched"].as_u64(), dry["moved"].as_u64()),
        (Some(3), Some(0)),
        "{dry}"
    );
    assert_eq!(
        dead_letter_count(runner, &dead.queue).await,
        7,
        "a dry run moves nothing"
    );
    let stats = h.broker.stats(&dead.queue).await.expect("stats");
    assert_eq!(stats.ready, 0, "nothing reached the work queue: {stats:?}");

    let moved = runner
        .run(&["dlq", "redrive", queue, "--job", "report_v2", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(moved["moved"].as_u64(), Some(3), "{moved}");
    let mut moved_ids: Vec<String> = moved["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect();
    moved_ids.sort();
    let mut expected: Vec<String> = dead.unknown.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(moved_ids, expected);
    let left = runner
        .run(&["dlq", "list", queue, "--group-by", "job", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        groups(&left),
        BTreeMap::from([("probe".to_owned(), 4)]),
        "the others stay"
    );

    let (worker, seen) = newer_worker(h, &dead.queue);
    eventually(
        Duration::from_secs(30),
        "the redriven jobs to succeed",
        || async {
            let stats = worker.stats.snapshot();
            if stats.succeeded == 3 {
                Ok(())
            } else {
                Err(format!("{stats:?}"))
            }
        },
    )
    .await;
    let report = worker.stop().await;
    let mut ran: Vec<String> = seen
        .lock()
        .expect("not poisoned")
        .iter()
        .map(ToString::to_string)
        .collect();
    ran.sort();
    assert_eq!(
        ran, expected,
        "each redriven job ran once, under its own id"
    );
    assert_eq!(report.stats.dead_lettered, 0, "{:?}", report.stats);

    let by_reason = runner
        .run(&[
            "dlq",
            "redrive",
            queue,
            "--reason-contains",
            "never work",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(by_reason["moved"].as_u64(), Some(2), "{by_reason}");
    assert_eq!(dead_letter_count(runner, &dead.queue).await, 2);
}

/// `--rate` spaces moves: 6 dead letters at 4 a second take at least 1.25 s.
pub async fn the_redrive_rate_is_honoured(h: &Harness, runner: &Runner) {
    let dead = make_dead_letters(h, runner, "cli-rate", 6, 0, 0).await;
    let started = std::time::Instant::now();
    let moved = runner
        .run(&[
            "dlq",
            "redrive",
            dead.queue.as_str(),
            "--rate",
            "4",
            "--json",
        ])
        .await
        .ok()
        .json();
    let took = started.elapsed();
    assert_eq!(moved["moved"].as_u64(), Some(6), "{moved}");
    assert!(
        took >= Duration::from_millis(1250),
        "6 moves at 4/s need 1.25 s at least; took {took:?}"
    );
    let bad = runner
        .run(&["dlq", "redrive", dead.queue.as_str(), "--rate", "0"])
        .await;
    assert_eq!(bad.code, 2, "{bad:?}");
}

/// A redrive killed halfway (SIGKILL) loses nothing: every dead letter is either still in
/// the dead-letter queue or on the work queue (at worst both: a duplicate). `settle` is how
/// long the broker may hide what the killed command had received (SQS: its 120 s hold).
pub async fn a_redrive_killed_halfway_loses_nothing(
    h: &Harness,
    runner: &Runner,
    settle: Duration,
) {
    let dead = make_dead_letters(h, runner, "cli-kill", 40, 0, 0).await;
    let mut child = runner
        .command(&["dlq", "redrive", dead.queue.as_str(), "--rate", "10"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the longshore binary starts");
    eventually(
        Duration::from_secs(30),
        "a few dead letters to move",
        || async {
            let stats = h
                .broker
                .stats(&dead.queue)
                .await
                .map_err(|e| e.to_string())?;
            if stats.ready + stats.in_flight.unwrap_or(0) >= 5 {
                Ok(())
            } else {
                Err(format!("{stats:?}"))
            }
        },
    )
    .await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");

    let remaining = dead_letter_count(runner, &dead.queue).await;
    assert!(
        remaining > 0 && remaining < 40,
        "killed halfway: {remaining} left"
    );
    let (worker, seen) = newer_worker(h, &dead.queue);
    let all: std::collections::BTreeSet<String> =
        dead.unknown.iter().map(ToString::to_string).collect();
    let listed = |value: Value| -> std::collections::BTreeSet<String> {
        value["ids"]
            .as_array()
            .map_or_else(Default::default, |ids| {
                ids.iter()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect()
            })
    };
    eventually(settle, "every job back or still dead-lettered", || async {
        let still = listed(
            runner
                .run(&["dlq", "redrive", dead.queue.as_str(), "--dry-run", "--json"])
                .await
                .ok()
                .json(),
        );
        let ran: std::collections::BTreeSet<String> = seen
            .lock()
            .expect("not poisoned")
            .iter()
            .map(ToString::to_string)
            .collect();
        let found: std::collections::BTreeSet<String> = still.union(&ran).cloned().collect();
        if found == all {
            Ok(())
        } else {
            Err(format!(
                "{} of {} found ({} ran, {} still dead-lettered)",
                found.len(),
                all.len(),
                ran.len(),
                still.len()
            ))
        }
    })
    .await;
    worker.stop().await;
}

/// `check` finds a queue that dead-letters before the retry policy's last attempt (an
/// error: exit 4) and a visibility timeout below the job timeout (a note; exit 4 with
/// `--strict`).
pub async fn check_finds_policies_that_disagree(runner: &Runner, queue: &QueueName) {
    let found = runner
        .run(&[
            "check",
            queue.as_str(),
            "--max-attempts",
            "5",
            "--job-timeout",
            "5m",
        ])
        .await;
    assert_eq!(found.code, 4, "{found:?}");
    assert!(
        found
            .stdout
            .contains("after 3 deliveries, but jobs may take 5 attempts"),
        "{found:?}"
    );
    assert!(
        found
            .stdout
            .contains("visibility timeout (30s) is below the job timeout (300s)"),
        "{found:?}"
    );
    let fine = runner
        .run(&[
            "check",
            queue.as_str(),
            "--max-attempts",
            "3",
            "--job-timeout",
            "20s",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(fine["findings"], serde_json::json!([]), "{fine}");
    let warned = runner
        .run(&[
            "check",
            queue.as_str(),
            "--max-attempts",
            "3",
            "--job-timeout",
            "5m",
            "--strict",
        ])
        .await;
    assert_eq!(warned.code, 4, "--strict fails on a note: {warned:?}");
}
