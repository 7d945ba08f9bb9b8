//! Test helpers: unique queue names, waiting for conditions with a deadline, a recording
//! probe job, and a worker running in the background.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use longshore::{
    Broker, Dep, Health, Job, JobContext, JobError, QueueName, Shutdown, Trigger, WorkerBuilder,
    WorkerReport, WorkerStats,
};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

/// How a broker under test keeps time: its leases, and how late its timers may fire.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Visibility timeout for lease tests (brokers that lease deliveries).
    pub visibility: Duration,
    /// How late a broker may deliver after a delay or lease ends (LocalStack ticks once a second).
    pub slack: Duration,
}

/// A broker under test and how it keeps time.
#[derive(Clone)]
pub struct Harness {
    /// The broker.
    pub broker: Arc<dyn Broker>,
    /// Its timing.
    pub timing: Timing,
}

/// RabbitMQ's timing: it does not lease deliveries; TTL expiry takes a few ms per delay level.
pub const RABBITMQ_TIMING: Timing = Timing {
    visibility: Duration::from_secs(1),
    slack: Duration::from_millis(500),
};

/// The SQS emulator's timing: visibility timeouts are whole seconds, and LocalStack's timers
/// tick once a second.
pub const SQS_TIMING: Timing = Timing {
    visibility: Duration::from_secs(2),
    slack: Duration::from_millis(1500),
};

/// The test RabbitMQ (see [`amqp_broker`]).
pub async fn rabbitmq_harness() -> Harness {
    Harness {
        broker: Arc::new(amqp_broker().await),
        timing: RABBITMQ_TIMING,
    }
}

/// The SQS emulator (see [`sqs_broker`]).
pub async fn sqs_harness() -> Harness {
    Harness {
        broker: Arc::new(sqs_broker().await),
        timing: SQS_TIMING,
    }
}

/// The embedded in-memory broker, with a 1 s lease.
pub fn memory_harness() -> Harness {
    Harness {
        broker: Arc::new(longshore::MemoryBroker::new()),
        timing: Timing {
            visibility: Duration::from_secs(1),
            slack: Duration::from_millis(100),
        },
    }
}

/// A queue name no other test (or earlier run) uses.
pub fn unique_queue(purpose: &str) -> QueueName {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    QueueName::new(format!(
        "longshore-test-{purpose}-{}-{n}-{:04x}",
        std::process::id(),
        fastrand::u16(..)
    ))
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `timeout` with
/// `what` and the last state `check` described.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// What a [`Probe`] job does when it runs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Behaviour {
    /// Succeed at once.
    Succeed,
    /// Fail with a retryable error while the attempt is below this number.
    FailUntil(u32),
    /// Fail permanently.
    FailPermanently,
    /// Panic while the attempt is below this number.
    PanicUntil(u32),
    /// Sleep, then succeed.
    Sleep(u64),
    /// Run until the worker cancels the job.
    HangUntilCancelled,
    /// Hang (until cancelled) while the attempt is below this number, then succeed: a job
    /// whose first worker dies mid-run.
    StallUntil(u32),
}

/// The job the conformance suite sends: a key to find it by and what to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    /// Identifies the job in the recorder.
    pub key: u32,
    /// What to do.
    pub behaviour: Behaviour,
}

impl Job for Probe {
    const NAME: &'static str = "probe";
}

/// One run of a probe, as its handler saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// The attempt number from the delivery.
    pub attempt: u32,
    /// The trigger.
    pub trigger: Trigger,
    /// When it started, since the recorder was made.
    pub at: Duration,
}

/// Records probe runs and the peak number running at once.
#[derive(Debug)]
pub struct Recorder {
    start: tokio::time::Instant,
    runs: Mutex<HashMap<u32, Vec<Run>>>,
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            runs: Mutex::default(),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }
}

impl Recorder {
    /// The runs of the probe with `key`.
    pub fn runs(&self, key: u32) -> Vec<Run> {
        self.runs
            .lock()
            .expect("not poisoned")
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// How many runs started, of all probes.
    pub fn total_runs(&self) -> usize {
        self.runs
            .lock()
            .expect("not poisoned")
            .values()
            .map(Vec::len)
            .sum()
    }

    /// The most probes that ever ran at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// How many probes are running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
}

struct RunningGuard<'a>(&'a Recorder);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The probe handler: records the run, then behaves as told.
pub async fn probe(job: Probe, recorder: Dep<Recorder>, ctx: JobContext) -> Result<(), JobError> {
    let now = recorder.running.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = RunningGuard(&recorder);
    recorder.peak.fetch_max(now, Ordering::SeqCst);
    recorder
        .runs
        .lock()
        .expect("not poisoned")
        .entry(job.key)
        .or_default()
        .push(Run {
            attempt: ctx.attempt.get(),
            trigger: ctx.trigger.clone(),
            at: recorder.start.elapsed(),
        });
    let attempt = ctx.attempt.get();
    match job.behaviour {
        Behaviour::Succeed => Ok(()),
        Behaviour::FailUntil(n) if attempt < n => {
            Err(JobError::retryable(format!("flaky on attempt {attempt}")))
        }
        Behaviour::FailUntil(_) => Ok(()),
        Behaviour::FailPermanently => Err(JobError::permanent("this input can never work")),
        Behaviour::PanicUntil(n) if attempt < n => {
            panic!("probe {} panicked on attempt {attempt}", job.key)
        }
        Behaviour::PanicUntil(_) => Ok(()),
        Behaviour::Sleep(ms) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(())
        }
        Behaviour::HangUntilCancelled => {
            ctx.cancelled().await;
            Err(JobError::retryable("cancelled"))
        }
        Behaviour::StallUntil(n) if attempt < n => {
            ctx.cancelled().await;
            Err(JobError::retryable("cancelled"))
        }
        Behaviour::StallUntil(_) => Ok(()),
    }
}

/// A worker running in a background task.
pub struct Running {
    /// Stops it.
    pub shutdown: Shutdown,
    /// Its counters.
    pub stats: Arc<WorkerStats>,
    /// Its liveness and readiness.
    pub health: Health,
    handle: JoinHandle<Result<WorkerReport, longshore::WorkerError>>,
}

impl Running {
    /// Builds the worker and starts it.
    pub fn start(builder: WorkerBuilder) -> Self {
        let worker = builder.build().expect("the test worker builds");
        let shutdown = worker.shutdown_handle();
        let stats = worker.stats();
        let health = worker.health();
        let handle = tokio::spawn(worker.run_until_stopped());
        Self {
            shutdown,
            stats,
            health,
            handle,
        }
    }

    /// Stops it gracefully and returns its report.
    pub async fn stop(self) -> WorkerReport {
        self.shutdown.shutdown();
        self.join().await
    }

    /// Waits for it to end and returns its report.
    pub async fn join(self) -> WorkerReport {
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the worker stops within 60 s")
            .expect("the worker task does not panic")
            .expect("the worker runs without error")
    }
}

/// The RabbitMQ URL tests use: `LONGSHORE_AMQP_URL`, or the local broker.
pub fn amqp_url() -> String {
    std::env::var("LONGSHORE_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Connects to the test RabbitMQ, or fails saying how to start it.
pub async fn amqp_broker() -> longshore::amqp::AmqpBroker {
    let url = amqp_url();
    match tokio::time::timeout(
        Duration::from_secs(10),
        longshore::amqp::AmqpBroker::connect(url.as_str()),
    )
    .await
    {
        Ok(Ok(broker)) => broker,
        Ok(Err(error)) => panic!(
            "RabbitMQ is not reachable at {}: {error}. Start it with `rabbitmq-server -detached` \
             (or run `scripts/test`, which starts it), or set LONGSHORE_AMQP_URL",
            longshore::BrokerUrl::new(url)
        ),
        Err(_) => panic!(
            "connecting to RabbitMQ at {} took over 10 s",
            longshore::BrokerUrl::new(url)
        ),
    }
}

/// A plain lapin channel on the test RabbitMQ, for tests that act as "someone else".
pub async fn raw_amqp_channel() -> (lapin::Connection, lapin::Channel) {
    let connection = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|error| {
            panic!("RabbitMQ is not reachable: {error}. Start it with `rabbitmq-server -detached` or run `scripts/test`")
        });
    let channel = connection.create_channel().await.expect("open a channel");
    (connection, channel)
}

/// The SQS emulator tests use: `LONGSHORE_SQS_ENDPOINT`, or LocalStack on 127.0.0.1:4566.
pub fn sqs_endpoint() -> String {
    std::env::var("LONGSHORE_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

/// Connects to the SQS emulator, or fails saying how to start it.
pub async fn sqs_broker() -> longshore::sqs::SqsBroker {
    let endpoint = sqs_endpoint();
    let broker = longshore::sqs::SqsBroker::builder("sqs://")
        .endpoint_url(endpoint.clone())
        .region("us-east-1")
        .static_credentials("test", "test")
        .connect()
        .await
        .expect("an SQS client");
    let probe = unique_queue("reach");
    match tokio::time::timeout(
        Duration::from_secs(10),
        longshore::Broker::stats(&broker, &probe),
    )
    .await
    {
        Ok(Err(longshore::BrokerError::QueueNotFound { .. })) => broker,
        Ok(other) => panic!(
            "the SQS emulator at {endpoint} does not answer ({other:?}); run `scripts/test`, which \
             installs and starts LocalStack, or set LONGSHORE_SQS_ENDPOINT"
        ),
        Err(_) => {
            panic!("the SQS emulator at {endpoint} did not answer within 10 s; run `scripts/test`")
        }
    }
}

/// A plain aws-sdk-sqs client on the emulator, for tests that act as "someone else".
pub async fn raw_sqs_client() -> aws_sdk_sqs::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(sqs_endpoint())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .load()
        .await;
    aws_sdk_sqs::Client::new(&config)
}

/// Environment for a worker process talking to the SQS emulator.
pub fn sqs_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", sqs_endpoint()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
    ]
}

/// `GET path` on a plain HTTP/1.1 server: the status code and the body.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .unwrap_or_else(|error| panic!("connect to {address}: {error}"));
    let request = format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the server answers within 10 s")
    .expect("read the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sends `tracing` output to the test's captured output, filtered by `RUST_LOG`.
pub fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The PostgreSQL tests use: `LONGSHORE_POSTGRES_URL`, or the local server's `test` database.
pub fn postgres_url() -> String {
    std::env::var("LONGSHORE_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// The Redis tests use: `LONGSHORE_REDIS_URL`, or the local server's database 0.
pub fn redis_url() -> String {
    std::env::var("LONGSHORE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A PostgreSQL status store (schema created), or a failure saying how to start one.
pub async fn postgres_status_store() -> longshore_status::PostgresStatusStore {
    match tokio::time::timeout(
        Duration::from_secs(15),
        longshore_status::PostgresStatusStore::connect(&postgres_url()),
    )
    .await
    {
        Ok(Ok(store)) => store,
        Ok(Err(error)) => panic!(
            "PostgreSQL is not reachable at {}: {error}. Start it with `pg_ctlcluster <version> main start` \
             (or run `scripts/test`, which starts it), or set LONGSHORE_POSTGRES_URL",
            postgres_url()
        ),
        Err(_) => panic!(
            "connecting to PostgreSQL at {} took over 15 s",
            postgres_url()
        ),
    }
}

/// A Redis status store under a prefix of its own, or a failure saying how to start Redis.
pub async fn redis_status_store() -> longshore_status::RedisStatusStore {
    static N: AtomicU64 = AtomicU64::new(0);
    let prefix = format!(
        "longshore-test-{}-{}-{:04x}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        fastrand::u16(..)
    );
    match tokio::time::timeout(
        Duration::from_secs(15),
        longshore_status::RedisStatusStore::connect(&redis_url()),
    )
    .await
    {
        Ok(Ok(store)) => store.prefix(prefix),
        Ok(Err(error)) => panic!(
            "Redis is not reachable at {}: {error}. Start it with `redis-server --daemonize yes` \
             (or run `scripts/test`, which starts it), or set LONGSHORE_REDIS_URL",
            redis_url()
        ),
        Err(_) => panic!("connecting to Redis at {} took over 15 s", redis_url()),
    }
}
