//! Cron schedules and delayed jobs, on the embedded broker: no services needed.
//!
//! Two replicas of one worker run the same schedules, as two containers would: a
//! `heartbeat` every two seconds and a weekday `morning-report` at 09:00 Paris time. Each
//! tick is enqueued once, by whichever replica holds the schedule's lease; when that replica
//! stops, the other takes over and no tick is lost or doubled. A job enqueued with
//! `enqueue_in` runs no sooner than its delay. Each run prints its trigger.
//!
//! Run with `cargo run --example schedules`; it stops by itself after about eight seconds.
//! On RabbitMQ or SQS, only the broker line changes.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use longshore::schedule::{CatchUp, Schedule, Tz};
use longshore::{
    Broker, Dep, Job, JobContext, JobError, MemoryBroker, Producer, QueueOptions, Trigger, Worker,
};
use serde::{Deserialize, Serialize};

/// A periodic health check of some downstream system.
#[derive(Serialize, Deserialize)]
struct Heartbeat {
    target: String,
}

impl Job for Heartbeat {
    const NAME: &'static str = "heartbeat";
}

/// The weekday morning report.
#[derive(Serialize, Deserialize)]
struct MorningReport;

impl Job for MorningReport {
    const NAME: &'static str = "morning_report";
}

/// A reminder sent a little later.
#[derive(Serialize, Deserialize)]
struct Reminder {
    to: String,
}

impl Job for Reminder {
    const NAME: &'static str = "reminder";
}

/// When the example started, to print times relative to it.
struct Started(Instant);

/// Which replica runs the job (a process-wide dependency).
struct ReplicaName(&'static str);

fn describe(ctx: &JobContext) -> String {
    match &ctx.trigger {
        Trigger::Schedule { name, tick } => {
            let tick = tick
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            format!("schedule `{name}`, tick at unix {tick}")
        }
        other => format!("{other:?}"),
    }
}

async fn heartbeat(
    job: Heartbeat,
    ctx: JobContext,
    started: Dep<Started>,
    replica: Dep<ReplicaName>,
) -> Result<(), JobError> {
    println!(
        "{:>5.1}s  [{}] heartbeat of {} ({})",
        started.0.elapsed().as_secs_f32(),
        replica.0,
        job.target,
        describe(&ctx)
    );
    Ok(())
}

async fn morning_report(_: MorningReport, ctx: JobContext) -> Result<(), JobError> {
    println!("morning report ({})", describe(&ctx));
    Ok(())
}

async fn reminder(
    job: Reminder,
    ctx: JobContext,
    started: Dep<Started>,
    replica: Dep<ReplicaName>,
) -> Result<(), JobError> {
    let waited = SystemTime::now()
        .duration_since(ctx.enqueued_at)
        .unwrap_or_default();
    println!(
        "{:>5.1}s  [{}] reminder to {} after {:.1}s ({})",
        started.0.elapsed().as_secs_f32(),
        replica.0,
        job.to,
        waited.as_secs_f32(),
        describe(&ctx)
    );
    Ok(())
}

/// One replica: the same handlers and schedules in every replica.
fn replica(broker: Arc<dyn Broker>, name: &'static str, started: Instant) -> Worker {
    let weekdays = Schedule::new(
        "morning-report",
        "0 9 * * MON-FRI",
        Tz::Europe__Paris,
        || MorningReport,
    )
    .expect("a valid schedule")
    // A replica coming back after a weekend outage runs the missed report once, not three times.
    .catch_up(CatchUp::RunOnce);
    Worker::builder(broker, "maintenance")
        .dependency(Started(started))
        .dependency(ReplicaName(name))
        .handler(heartbeat)
        .handler(morning_report)
        .handler(reminder)
        // Six fields: seconds first. Five fields are minute-level, as in crontab.
        .schedule("heartbeat", "*/2 * * * * *", Tz::UTC, || Heartbeat {
            target: "payments-api".into(),
        })
        .add_schedule(weekdays)
        .build()
        .expect("the worker builds")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new());
    broker
        .declare(&"maintenance".into(), &QueueOptions::default())
        .await?;

    let first = replica(Arc::clone(&broker), "replica-a", started);
    let second = replica(Arc::clone(&broker), "replica-b", started);
    let (stop_first, stop_second) = (first.shutdown_handle(), second.shutdown_handle());
    let (first, second) = (tokio::spawn(first.run()), tokio::spawn(second.run()));

    Producer::new(Arc::clone(&broker), "maintenance")
        .enqueue_in(&Reminder { to: "ops".into() }, Duration::from_secs(3))
        .await?;
    println!("enqueued a reminder due in 3 s; heartbeats every 2 s from whichever replica leads");

    tokio::time::sleep(Duration::from_secs(4)).await;
    println!("stopping replica-a: replica-b takes the schedules over");
    stop_first.shutdown();
    first.await??;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop_second.shutdown();
    let report = second.await??;
    println!("done: replica-b ran {} jobs", report.stats.succeeded);
    Ok(())
}
