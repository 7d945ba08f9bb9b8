//! [`Scheduler`]: runs schedules in a replica: takes each schedule's lease when it is free,
//! and while holding it enqueues the due ticks and records them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::lease::{RENEW_EVERY, ScheduleKey, ScheduleLease};
use super::{Schedule, ScheduleError};
use crate::broker::{Broker, IntoBroker};
use crate::message::{Message, headers, unix_millis};
use crate::names::{MessageId, QueueName};
use crate::producer::send_traced;
use crate::runtime::Shutdown;
use crate::telemetry::Telemetry;

/// Runs cron schedules whose ticks are enqueued on one queue. Run it in every replica: each
/// tick is enqueued once (see [`crate::schedule`] for how, and the limits).
///
/// A [`Worker`](crate::Worker) with schedules (`WorkerBuilder::schedule`) runs one itself;
/// build one by hand for a process that only schedules.
pub struct Scheduler {
    broker: Arc<dyn Broker>,
    queue: QueueName,
    schedules: Vec<Schedule>,
    standby_poll: Duration,
    telemetry: Option<Arc<dyn Telemetry>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("system", &self.broker.system())
            .field("queue", &self.queue)
            .field("schedules", &self.schedules)
            .finish()
    }
}

/// How a holder's turn ended.
enum Turn {
    /// Shutdown: the lease was released.
    Stopped,
    /// The lease went to the next receiver (SQS) after a record: try again at once.
    PassedOn,
    /// The lease was lost or the broker failed.
    Lost,
}

impl Scheduler {
    /// A scheduler enqueuing ticks on `queue` of `broker`.
    pub fn new(broker: impl IntoBroker, queue: impl Into<QueueName>) -> Self {
        Self {
            broker: broker.into_broker(),
            queue: queue.into(),
            schedules: Vec::new(),
            standby_poll: Duration::from_secs(1),
            telemetry: None,
        }
    }

    /// Adds a schedule; its name must be unique on this queue, and the broker must be able
    /// to hold schedule leases.
    pub fn schedule(mut self, schedule: Schedule) -> Result<Self, ScheduleError> {
        if self.broker.schedules().is_none() {
            return Err(ScheduleError::Unsupported(self.broker.system()));
        }
        if self.schedules.iter().any(|s| s.name == schedule.name) {
            return Err(ScheduleError::Duplicate(schedule.name));
        }
        self.schedules.push(schedule);
        Ok(self)
    }

    /// How often a replica that does not hold a lease tries to take it. Default: 1 s.
    pub fn standby_poll(mut self, every: Duration) -> Self {
        self.standby_poll = every.max(Duration::from_millis(10));
        self
    }

    /// Propagates traces from each tick's `send` span with `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Arc<dyn Telemetry>) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// The schedules.
    pub fn schedules(&self) -> &[Schedule] {
        &self.schedules
    }

    /// Runs until SIGTERM or SIGINT.
    pub async fn run(self) {
        let shutdown = Shutdown::default();
        let signals = tokio::spawn(crate::runtime::listen_for_signals(shutdown.clone()));
        self.run_until_stopped(shutdown).await;
        signals.abort();
    }

    /// Runs until `shutdown` asks it to stop; leases held then are released, so another
    /// replica takes over at once.
    pub async fn run_until_stopped(self, shutdown: Shutdown) {
        let stop = shutdown.graceful.clone();
        let mut running = JoinSet::new();
        for schedule in self.schedules {
            let key = ScheduleKey {
                queue: self.queue.clone(),
                name: schedule.name.clone(),
            };
            tracing::info!(%key, cron = schedule.cron.expression(), time_zone = %schedule.cron.time_zone(), "schedule registered");
            running.spawn(keep(
                Arc::clone(&self.broker),
                self.telemetry.clone(),
                key,
                schedule,
                self.standby_poll,
                stop.clone(),
            ));
        }
        while running.join_next().await.is_some() {}
    }
}

/// One schedule's loop in one replica: stand by, hold the lease when free, repeat.
async fn keep(
    broker: Arc<dyn Broker>,
    telemetry: Option<Arc<dyn Telemetry>>,
    key: ScheduleKey,
    schedule: Schedule,
    standby_poll: Duration,
    stop: CancellationToken,
) {
    let Some(store) = broker.schedules() else {
        // `Scheduler::schedule` refuses schedules on such a broker.
        tracing::error!(%key, "the broker cannot hold schedule leases");
        return;
    };
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let turn = match store.lease(&key).await {
            Ok(Some(lease)) => {
                failures = 0;
                tracing::debug!(%key, "took the lease");
                let sender = Sender {
                    system: broker.system(),
                    telemetry: telemetry.as_deref(),
                };
                hold(&schedule, &key, lease, &stop, sender).await
            }
            Ok(None) => Turn::Lost,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%key, %error, "cannot take the schedule's lease; trying again");
                Turn::Lost
            }
        };
        let wait = match turn {
            Turn::Stopped => return,
            Turn::PassedOn => continue,
            Turn::Lost if failures == 0 => standby_poll,
            Turn::Lost => {
                (standby_poll * 2u32.saturating_pow(failures.min(5))).min(Duration::from_secs(30))
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// How ticks are sent: the broker's system name and the telemetry that traces them.
#[derive(Clone, Copy)]
struct Sender<'a> {
    system: &'static str,
    telemetry: Option<&'a dyn Telemetry>,
}

/// Holds the lease: enqueue due ticks, record them, sleep until the next tick, renew.
async fn hold(
    schedule: &Schedule,
    key: &ScheduleKey,
    mut lease: Box<dyn ScheduleLease>,
    stop: &CancellationToken,
    sender: Sender<'_>,
) -> Turn {
    let mut renewed = tokio::time::Instant::now();
    if lease.watermark().is_none() {
        // First run of this schedule on this broker: start from now.
        if let Err(error) = lease.record(SystemTime::now()).await {
            tracing::warn!(%key, %error, "cannot record the schedule's start");
            return Turn::Lost;
        }
        if !lease.is_held() {
            return Turn::PassedOn;
        }
    }
    loop {
        if !lease.is_held() {
            tracing::info!(%key, "lease lost; standing by");
            return Turn::Lost;
        }
        let now = SystemTime::now();
        let watermark = lease.watermark().unwrap_or(now);
        let plan = schedule.plan(watermark, now);
        if plan.skipped > 0 {
            tracing::warn!(%key, skipped = plan.skipped, catch_up = ?schedule.catch_up, "missed ticks not run");
        }
        let mut last_enqueued = None;
        for tick in &plan.enqueue {
            let message = match tick_message(schedule, *tick) {
                Ok(message) => message,
                Err(error) => {
                    tracing::error!(%key, %error, "the schedule's job does not encode; tick dropped");
                    continue;
                }
            };
            let id = message.id.clone();
            let published = send_traced(
                sender.system,
                sender.telemetry,
                &key.queue,
                message,
                |message| lease.publish(&key.queue, message),
            )
            .await;
            if let Err(error) = published {
                tracing::warn!(%key, %error, message_id = %id, "cannot enqueue a tick");
                // Record what did go out, so the next holder does not enqueue it again.
                if let Some(done) = last_enqueued {
                    let _ = lease.record(done).await;
                }
                return Turn::Lost;
            }
            last_enqueued = Some(*tick);
            tracing::info!(%key, message_id = %id, tick_ms = unix_millis(*tick), "tick enqueued");
        }
        if let Some(watermark) = plan.watermark {
            if let Err(error) = lease.record(watermark).await {
                tracing::warn!(%key, %error, "cannot record the newest tick; the next holder enqueues it again");
                return Turn::Lost;
            }
            if !lease.is_held() {
                return Turn::PassedOn;
            }
        }
        let next = schedule.cron.next_after(SystemTime::now().max(watermark));
        let until_tick = next
            .map(|next| next.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(RENEW_EVERY);
        let until_renew = RENEW_EVERY.saturating_sub(renewed.elapsed());
        tokio::select! {
            () = stop.cancelled() => {
                lease.release().await;
                return Turn::Stopped;
            }
            () = tokio::time::sleep(until_tick.min(until_renew)) => {}
        }
        if renewed.elapsed() >= RENEW_EVERY {
            if let Err(error) = lease.renew().await {
                tracing::warn!(%key, %error, "cannot renew the lease");
                return Turn::Lost;
            }
            renewed = tokio::time::Instant::now();
        }
    }
}

/// The job message for one tick: id and deduplication id `schedule:<name>@<millis>`, and the
/// trigger header the runtime reads into [`Trigger::Schedule`](crate::Trigger).
fn tick_message(schedule: &Schedule, tick: SystemTime) -> Result<Message, serde_json::Error> {
    let trigger = format!("schedule:{}@{}", schedule.name, unix_millis(tick));
    let mut message = Message::new(schedule.job.clone(), (schedule.make)()?);
    message.id = MessageId::from(trigger.clone());
    message.deduplication_id = Some(trigger.clone());
    message
        .headers_mut()
        .insert(headers::TRIGGER.to_owned(), trigger);
    Ok(message)
}
