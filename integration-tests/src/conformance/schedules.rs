//! Cron schedules on a broker: replicas enqueue each tick once, downtime is caught up by the
//! schedule's policy, and jobs know which tick they run for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use longshore::schedule::{CatchUp, Schedule, ScheduleKey, Scheduler};
use longshore::{
    Broker, Dep, Job, JobContext, JobError, QueueName, QueueOptions, Shutdown, Trigger, Worker,
};
use serde::{Deserialize, Serialize};

use super::{cleanup, declared_queue};
use crate::harness::{Harness, Running, eventually};

/// Another replica's handle on the broker under test: a broker of its own (its own
/// connections) for RabbitMQ and SQS, the same one for memory.
pub type Replica = fn(&Harness) -> BoxFuture<'static, Arc<dyn Broker>>;

/// The replica of an in-process broker: the same broker.
pub fn same_broker(h: &Harness) -> BoxFuture<'static, Arc<dyn Broker>> {
    let broker = Arc::clone(&h.broker);
    Box::pin(async move { broker })
}

/// The job the test schedules enqueue.
#[derive(Serialize, Deserialize)]
pub struct Tick {
    /// Which test replica's schedule made it (all the same: the replicas share a schedule).
    pub label: String,
}

impl Job for Tick {
    const NAME: &'static str = "tick";
}

/// The runs of scheduled jobs, by tick (Unix ms).
#[derive(Default)]
pub struct Ticks(Mutex<BTreeMap<u64, usize>>);

impl Ticks {
    /// Runs so far, by tick.
    pub fn snapshot(&self) -> BTreeMap<u64, usize> {
        self.0.lock().expect("ticks").clone()
    }
}

async fn on_tick(_job: Tick, ticks: Dep<Ticks>, ctx: JobContext) -> Result<(), JobError> {
    let Trigger::Schedule { name, tick } = &ctx.trigger else {
        return Err(JobError::permanent(format!(
            "a scheduled job ran with trigger {:?}",
            ctx.trigger
        )));
    };
    assert_eq!(name, "every-second", "the trigger names the schedule");
    let ms = millis(*tick);
    *ticks.0.lock().expect("ticks").entry(ms).or_default() += 1;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn millis(at: SystemTime) -> u64 {
    u64::try_from(
        at.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0)
}

/// The tests' schedule: every second, each missed tick run (up to 100).
pub fn every_second() -> Schedule {
    Schedule::utc("every-second", "* * * * * *", || Tick {
        label: "replica".into(),
    })
    .expect("a valid schedule")
    .catch_up(CatchUp::RunEach { max: 100 })
}

/// A replica: a worker for the queue that runs [`every_second`] and records its ticks.
pub fn replica_worker(
    h: &Harness,
    broker: Arc<dyn Broker>,
    queue: &QueueName,
    ticks: &Arc<Ticks>,
) -> Running {
    Running::start(
        Worker::builder(broker, queue.clone())
            // As the queue was declared: SQS refuses to redeclare it with other attributes.
            .queue_options(QueueOptions::default().visibility_timeout(h.timing.visibility))
            .dependency_arc(Arc::clone(ticks))
            .handler(on_tick)
            .add_schedule(every_second())
            .schedule_standby_poll(Duration::from_millis(300)),
    )
}

/// Waits until `at_least` ticks ran.
pub async fn await_ticks(ticks: &Ticks, what: &str, at_least: usize) {
    eventually(Duration::from_secs(30), what, || async {
        let seen = ticks.snapshot();
        if seen.len() >= at_least {
            Ok(())
        } else {
            Err(format!("{} ticks so far", seen.len()))
        }
    })
    .await;
}

/// Three replicas run the same every-second schedule; two of them stop along the way
/// (the first one is the lease holder when it stops). Every tick from the first to the last
/// ran exactly once, none skipped, with the schedule's name and tick in its trigger.
pub async fn three_replicas_enqueue_each_tick_once(h: &Harness, replica: Replica) {
    crate::harness::log_to_test_output();
    let queue = declared_queue(h, "cron").await;
    let ticks = Arc::new(Ticks::default());
    // The first replica alone: it takes the lease.
    let first = replica_worker(h, Arc::clone(&h.broker), &queue, &ticks);
    await_ticks(&ticks, "the first replica's first tick", 1).await;
    let second = replica_worker(h, replica(h).await, &queue, &ticks);
    let third = replica_worker(h, replica(h).await, &queue, &ticks);
    let seen = ticks.snapshot().len();
    await_ticks(&ticks, "three ticks with three replicas", seen + 3).await;
    first.stop().await;
    let seen = ticks.snapshot().len();
    await_ticks(&ticks, "three ticks after the holder stopped", seen + 3).await;
    second.stop().await;
    let seen = ticks.snapshot().len();
    await_ticks(&ticks, "three ticks with the last replica", seen + 3).await;
    third.stop().await;

    // Ticks enqueued but not run yet (a stopping worker hands its prefetched messages back)
    // count as enqueued too.
    let mut runs = ticks.snapshot();
    for tick in drain_ticks(h, &queue).await {
        *runs.entry(tick).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ticks run more than once: {twice:?}");
    let all: Vec<u64> = runs.keys().copied().collect();
    for pair in all.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1000,
            "every second from the first tick to the last enqueued, none skipped: {all:?}"
        );
    }
    assert!(all.len() >= 10, "{all:?}");
    forget_schedule(h, &queue).await;
    cleanup(h, &queue).await;
}

/// Deletes the schedule's lease and watermark; a schedule of that name starts afresh after.
async fn forget_schedule(h: &Harness, queue: &QueueName) {
    let key = ScheduleKey {
        queue: queue.clone(),
        name: "every-second".into(),
    };
    let store = h.broker.schedules().expect("the broker holds schedules");
    store
        .delete(&key)
        .await
        .expect("delete the schedule's state");
    let lease = store
        .lease(&key)
        .await
        .expect("take the lease")
        .expect("nobody holds it");
    assert_eq!(
        lease.watermark(),
        None,
        "the watermark went with the schedule"
    );
    lease.release().await;
    store
        .delete(&key)
        .await
        .expect("delete the schedule's state");
}

/// The ticks on `queue` (from the message ids `schedule:<name>@<ms>`), consumed: until the
/// queue is empty and nothing arrives for a while.
pub async fn drain_ticks(h: &Harness, queue: &QueueName) -> Vec<u64> {
    let mut ticks = Vec::new();
    let mut stream = super::settlement::consumer(h, queue).await;
    loop {
        let quiet = Duration::from_millis(500) + h.timing.slack;
        match tokio::time::timeout(quiet, stream.next()).await {
            Ok(Some(delivery)) => {
                let delivery = delivery.expect("a delivery");
                let id = delivery.message().id.to_string();
                let ms = id
                    .rsplit_once('@')
                    .and_then(|(_, ms)| ms.parse().ok())
                    .unwrap_or_else(|| panic!("a tick's message id names its tick: {id}"));
                ticks.push(ms);
                delivery.ack().await.expect("ack");
            }
            Ok(None) => panic!("the delivery stream ended"),
            Err(_) => {
                let stats = h.broker.stats(queue).await.expect("stats");
                if stats.ready == 0 && stats.in_flight.unwrap_or(0) == 0 {
                    break;
                }
            }
        }
    }
    ticks.sort_unstable();
    ticks
}

async fn run_scheduler(broker: Arc<dyn Broker>, queue: &QueueName, schedule: Schedule) -> Shutdown {
    let shutdown = Shutdown::default();
    let scheduler = Scheduler::new(broker, queue.clone())
        .schedule(schedule)
        .expect("one schedule");
    tokio::spawn(scheduler.run_until_stopped(shutdown.clone()));
    shutdown
}

/// Sleeps until the clock's fraction of a second is `fraction`.
async fn at_fraction(fraction: Duration) {
    let now = millis(SystemTime::now()) % 1000;
    let target = fraction.as_millis() as u64;
    let wait = (target + 1000 - now) % 1000;
    tokio::time::sleep(Duration::from_millis(wait)).await;
}

/// One policy's run: schedule runs, stops for about five ticks, comes back.
async fn downtime(h: &Harness, policy: CatchUp) -> (Vec<u64>, u64, u64) {
    let queue = declared_queue(h, "catch-up").await;
    let schedule = || {
        every_second()
            .catch_up(policy)
            .grace(Duration::from_millis(500))
    };
    let stop = run_scheduler(Arc::clone(&h.broker), &queue, schedule()).await;
    eventually(
        Duration::from_secs(20),
        "two ticks before the downtime",
        || async {
            let ready = h.broker.stats(&queue).await.expect("stats").ready;
            if ready >= 2 {
                Ok(())
            } else {
                Err(format!("{ready} ticks"))
            }
        },
    )
    .await;
    stop.shutdown();
    let before = drain_ticks(h, &queue).await;
    let last_before = *before.last().expect("ticks before the downtime");
    // Back at .750 of a second: the tick of this second is missed (older than the 500 ms
    // grace), the next one is on time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    at_fraction(Duration::from_millis(750)).await;
    let back = SystemTime::now();
    let stop = run_scheduler(Arc::clone(&h.broker), &queue, schedule()).await;
    let first_on_time = millis(back) / 1000 * 1000 + 1000;
    eventually(
        Duration::from_secs(20),
        "an on-time tick after the downtime",
        || async {
            let ready = h.broker.stats(&queue).await.expect("stats").ready;
            // At most 3 caught up plus the on-time one.
            if ready > policy_runs(policy) as u64 {
                Ok(())
            } else {
                Err(format!("{ready} ticks"))
            }
        },
    )
    .await;
    stop.shutdown();
    let after = drain_ticks(h, &queue).await;
    forget_schedule(h, &queue).await;
    cleanup(h, &queue).await;
    assert!(
        after.iter().all(|tick| *tick > last_before),
        "no tick from before the downtime again: {before:?} then {after:?}"
    );
    assert!(
        after.contains(&first_on_time),
        "{after:?} lacks {first_on_time}"
    );
    (after, last_before, first_on_time)
}

fn policy_runs(policy: CatchUp) -> usize {
    match policy {
        CatchUp::Skip => 0,
        CatchUp::RunOnce => 1,
        CatchUp::RunEach { max } => max,
    }
}

/// A scheduler down for about five ticks: on return, `Skip` runs none of them, `RunOnce` the
/// latest, `RunEach { max: 3 }` the latest three; then it goes on with on-time ticks. The
/// watermark came from the broker: the restarted scheduler shares no memory with the first.
pub async fn catch_up_after_downtime_follows_the_policy(h: &Harness) {
    crate::harness::log_to_test_output();
    let policies = [CatchUp::Skip, CatchUp::RunOnce, CatchUp::RunEach { max: 3 }];
    let runs = futures_util::future::join_all(policies.map(|policy| downtime(h, policy))).await;
    for (policy, (after, last_before, first_on_time)) in policies.into_iter().zip(runs) {
        let missed = (last_before + 1000..first_on_time).step_by(1000).count();
        assert!(missed >= 4, "{policy:?}: down for {missed} ticks only");
        let caught_up: Vec<u64> = after
            .iter()
            .copied()
            .filter(|t| *t < first_on_time)
            .collect();
        let expected: Vec<u64> = (1..=policy_runs(policy) as u64)
            .rev()
            .map(|back| first_on_time - back * 1000)
            .collect();
        assert_eq!(
            caught_up, expected,
            "{policy:?}: missed ticks run (down for {missed})"
        );
    }
}

/// Generates the schedule tests for a broker: `$setup` makes the harness, `$replica` another
/// replica's broker ([`Replica`]).
#[macro_export]
macro_rules! schedule_suite {
    ($setup:expr, $replica:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn three_replicas_enqueue_each_tick_once() {
            let harness = $setup.await;
            $crate::conformance::schedules::three_replicas_enqueue_each_tick_once(
                &harness, $replica,
            )
            .await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn catch_up_after_downtime_follows_the_policy() {
            let harness = $setup.await;
            $crate::conformance::schedules::catch_up_after_downtime_follows_the_policy(&harness)
                .await;
        }
    };
}
