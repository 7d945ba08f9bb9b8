//! The chaos suite: `N` jobs into a queue worked by two worker processes, faults injected
//! while they drain (workers killed with SIGKILL, stopped with SIGTERM under load, the
//! RabbitMQ node's app stopped and started, the whole node restarted), then every job
//! accounted for: completed at least once, or dead-lettered with a reason. It prints jobs
//! in, completed, duplicates, dead-lettered, lost, how long each fault held work up, and
//! the drain time.
//!
//! `scripts/chaos` runs it at full size (`LONGSHORE_CHAOS_JOBS`, 20,000 by default, every
//! fault); `scripts/test` runs a smoke run (a few hundred jobs, one kill and one restart).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longshore::{Broker, Dep, Job, JobError, Producer, QueueName};
use serde::{Deserialize, Serialize};

/// A chaos job: number `n`; `fail` ones fail for good (they must end dead-lettered).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Chaos {
    /// Which job.
    pub n: u32,
    /// Fails permanently.
    pub fail: bool,
    /// Takes this long instead of the worker's job time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
}

impl Job for Chaos {
    const NAME: &'static str = "chaos";
}

/// Logs of a chaos worker process: to stderr (stdout carries `done <n>`), plain text,
/// filtered by `RUST_LOG` (default `info`).
pub fn init_worker_logs() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(longshore::log_filter(
            &std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )))
        .init();
}

/// The handler: takes the given time, then prints `done <n>` (or fails for good).
pub async fn chaos(job: Chaos, work: Dep<Duration>) -> Result<(), JobError> {
    tokio::time::sleep(job.ms.map_or(*work, Duration::from_millis)).await;
    if job.fail {
        return Err(JobError::permanent("chaos: this job fails for good"));
    }
    println!("done {}", job.n);
    Ok(())
}

/// Every how many jobs one fails for good.
pub const FAIL_EVERY: u32 = 97;

/// A worker process.
struct ChaosWorker {
    child: Child,
}

/// The two worker processes, and how to start more like them.
pub struct Crew {
    workers: Vec<ChaosWorker>,
    exe: String,
    url: String,
    queue: QueueName,
    env: Vec<(&'static str, String)>,
    job_ms: u64,
    /// Every `done <n>` any of them printed, with when.
    done: Arc<Mutex<Vec<(u32, Instant)>>>,
    log: std::path::PathBuf,
}

impl Crew {
    /// Kills worker `index` with SIGKILL and starts another in its place.
    pub fn kill(&mut self, index: usize) {
        self.workers.remove(index).kill();
        let fresh = ChaosWorker::start(self);
        self.workers.insert(index, fresh);
    }

    /// Stops worker `index` with SIGTERM (it finishes its running jobs) and starts another.
    pub fn terminate(&mut self, index: usize) {
        self.workers.remove(index).terminate();
        let fresh = ChaosWorker::start(self);
        self.workers.insert(index, fresh);
    }

    fn printed(&self) -> usize {
        self.done.lock().expect("not poisoned").len()
    }
}

impl ChaosWorker {
    /// Starts `chaos_worker` (built next to the test) on `url` and `queue`, and waits until
    /// it connected.
    fn start(crew: &Crew) -> Self {
        let (url, queue, env, done, log) =
            (&crew.url, &crew.queue, &crew.env, &crew.done, &crew.log);
        let exe = &crew.exe;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the workers' log");
        let mut child = Command::new(exe)
            .args([
                url.as_str(),
                queue.as_str(),
                "8",
                "16",
                &crew.job_ms.to_string(),
            ])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start chaos_worker");
        let stdout = child.stdout.take().expect("piped");
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let lines = Arc::clone(done);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line == "ready" {
                    let _ = ready_tx.send(());
                } else if let Some(n) = line.strip_prefix("done ").and_then(|n| n.parse().ok()) {
                    lines
                        .lock()
                        .expect("not poisoned")
                        .push((n, Instant::now()));
                }
            }
        });
        ready
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "chaos_worker did not connect within 60 s; see {}",
                    log.display()
                )
            });
        Self { child }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("a worker did not stop within 60 s of SIGTERM");
    }
}

impl Drop for ChaosWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fault the suite injects.
pub struct Fault<'a> {
    /// What it is, for the table.
    pub name: &'static str,
    /// How many jobs it may run twice at most (the jobs the affected workers held).
    pub duplicate_bound: usize,
    /// Injects it (and restarts what it stopped).
    pub inject: Box<dyn Fn(&mut Crew) + 'a>,
    /// What the broker says, printed when work does not resume (connections, consumers,
    /// messages ready and unacknowledged).
    pub diagnose: Option<Box<dyn Fn() -> String + 'a>>,
}

/// One fault's figures.
pub struct FaultFigures {
    /// The fault.
    pub name: &'static str,
    /// Jobs completed when it struck.
    pub at_job: usize,
    /// From the fault until the next job completed.
    pub resumed_after: Duration,
}

/// The suite's figures.
pub struct Figures {
    /// What ran where.
    pub title: String,
    /// Jobs enqueued.
    pub jobs: u32,
    /// Jobs that completed at least once.
    pub completed: usize,
    /// Extra completions.
    pub duplicates: usize,
    /// The bound on duplicates (jobs the faults could catch running or unacked).
    pub duplicate_bound: usize,
    /// Jobs dead-lettered with a reason.
    pub dead_lettered: usize,
    /// Jobs neither completed nor dead-lettered.
    pub lost: usize,
    /// Each fault.
    pub faults: Vec<FaultFigures>,
    /// From the first job until every job was accounted for.
    pub drain: Duration,
}

impl Figures {
    /// The table the suite prints.
    pub fn table(&self) -> String {
        let mut out = format!(
            "\n{}\n\n| fault | struck after job | work resumed after |\n| --- | ---: | ---: |\n",
            self.title
        );
        for fault in &self.faults {
            out.push_str(&format!(
                "| {} | {} | {:.2} s |\n",
                fault.name,
                fault.at_job,
                fault.resumed_after.as_secs_f64()
            ));
        }
        out.push_str(&format!(
            "\n| jobs in | completed | dead-lettered (with a reason) | lost | duplicates (bound) | drain time |\n\
             | ---: | ---: | ---: | ---: | ---: | ---: |\n\
             | {} | {} | {} | {} | {} ({}) | {:.1} s |\n",
            self.jobs,
            self.completed,
            self.dead_lettered,
            self.lost,
            self.duplicates,
            self.duplicate_bound,
            self.drain.as_secs_f64()
        ));
        out
    }
}

/// Where the suite runs.
pub struct Setup {
    /// What ran where, for the table.
    pub title: String,
    /// The test's own connection (to enqueue and read dead letters).
    pub broker: Arc<dyn Broker>,
    /// The workers' broker URL.
    pub url: String,
    /// The workers' extra environment.
    pub env: Vec<(&'static str, String)>,
    /// The queue (declared, with a dead-letter queue).
    pub queue: QueueName,
    /// Jobs to enqueue.
    pub jobs: u32,
    /// How long each job takes.
    pub job_ms: u64,
    /// The `chaos_worker` binary (`env!("CARGO_BIN_EXE_chaos_worker")` in a test).
    pub worker_exe: String,
}

/// Jobs enqueued after each fault.
const AFTER_EACH_FAULT: u32 = 50;

/// Enqueues chaos jobs `numbers`, 64 at a time; every `FAIL_EVERY`th fails for good.
async fn enqueue(producer: &Producer, numbers: std::ops::Range<u32>) {
    let mut enqueues = Vec::new();
    for n in numbers {
        let producer = producer.clone();
        enqueues.push(async move {
            producer
                .enqueue(&Chaos {
                    n,
                    fail: n % FAIL_EVERY == FAIL_EVERY - 1,
                    ms: None,
                })
                .await
                .expect("enqueue")
        });
        if enqueues.len() == 64 {
            futures_util::future::join_all(enqueues.drain(..)).await;
        }
    }
    futures_util::future::join_all(enqueues).await;
}

/// Runs the suite: enqueues the jobs, starts two workers, injects each fault once an even
/// share of the jobs has completed, and accounts for every job.
pub async fn run(setup: Setup, faults: Vec<Fault<'_>>) -> Figures {
    let Setup {
        title,
        broker,
        url,
        env,
        queue,
        jobs,
        job_ms,
        worker_exe,
    } = setup;
    let log = std::env::temp_dir().join(format!(
        "longshore-chaos-{}-{queue}.log",
        std::process::id()
    ));
    let producer = Producer::new(Arc::clone(&broker), queue.clone());
    // Most jobs go in first; a few follow each fault, so there is always work after it to
    // show that the workers resumed (a fault that takes seconds could otherwise outlast
    // the queue).
    let after_each = AFTER_EACH_FAULT.min(jobs / (faults.len() as u32 + 1));
    let first = jobs - after_each * faults.len() as u32;
    enqueue(&producer, 0..first).await;
    let expected_dead = (0..jobs)
        .filter(|n| n % FAIL_EVERY == FAIL_EVERY - 1)
        .count();

    let started = Instant::now();
    let mut crew = Crew {
        workers: Vec::new(),
        exe: worker_exe,
        url,
        queue: queue.clone(),
        env,
        job_ms,
        done: Arc::default(),
        log: log.clone(),
    };
    for _ in 0..2 {
        let worker = ChaosWorker::start(&crew);
        crew.workers.push(worker);
    }
    let mut figures = Vec::new();
    let mut bound = 0;
    let share = first as usize / (faults.len() + 1);
    for (index, fault) in faults.iter().enumerate() {
        let at = share * (index + 1);
        let deadline = Instant::now() + Duration::from_secs(300);
        while crew.printed() < at {
            assert!(
                Instant::now() < deadline,
                "no progress towards job {at} before `{}`",
                fault.name
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let struck = Instant::now();
        let before = crew.printed();
        (fault.inject)(&mut crew);
        bound += fault.duplicate_bound;
        // Work resumed: a job completed after the fault was injected and its restarts done.
        let injected = Instant::now();
        let next = first + after_each * index as u32;
        enqueue(&producer, next..next + after_each).await;
        let deadline = Instant::now() + Duration::from_secs(300);
        let resumed = loop {
            let first_after = crew
                .done
                .lock()
                .expect("not poisoned")
                .iter()
                .skip(before)
                .map(|(_, at)| *at)
                .find(|at| *at > injected);
            if let Some(at) = first_after {
                break at;
            }
            if Instant::now() >= deadline {
                let broker = fault
                    .diagnose
                    .as_ref()
                    .map(|diagnose| diagnose())
                    .unwrap_or_default();
                panic!(
                    "work did not resume within 300 s of `{}` ({} of {jobs} jobs done); the workers' log is {}\n{broker}",
                    fault.name,
                    crew.printed(),
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        figures.push(FaultFigures {
            name: fault.name,
            at_job: before,
            resumed_after: resumed.saturating_duration_since(struck),
        });
    }

    // Every job accounted for: completed, or in the dead-letter queue with a reason.
    let dead_letters = broker
        .dead_letters()
        .expect("the broker reads its dead letters");
    let all: BTreeSet<u32> = (0..jobs).collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    let (completed, dead, drain) = loop {
        let completed: BTreeSet<u32> = crew
            .done
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(n, _)| *n)
            .collect();
        let mut dead = BTreeSet::new();
        if completed.len() + expected_dead >= jobs as usize {
            for letter in dead_letters
                .browse(&queue, jobs as usize)
                .await
                .expect("browse")
            {
                let n = serde_json::from_slice::<Chaos>(&letter.message.body).map(|c| c.n);
                if let (Ok(n), Some(_)) = (n, letter.reason.as_deref().filter(|r| !r.is_empty())) {
                    dead.insert(n);
                }
            }
        }
        if completed.union(&dead).count() == all.len() || Instant::now() >= deadline {
            break (completed, dead, started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let lines = crew.printed();
    let accounted: BTreeSet<u32> = completed.union(&dead).copied().collect();
    drop(crew);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log_text.contains("panicked"),
        "a worker panicked; see {}",
        log.display()
    );
    Figures {
        title,
        jobs,
        completed: completed.len(),
        duplicates: lines - completed.len(),
        duplicate_bound: bound,
        dead_lettered: dead.len(),
        lost: all.difference(&accounted).count(),
        faults: figures,
        drain,
    }
}
