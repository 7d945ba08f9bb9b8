//! `longshore schedules list QUEUE` and `longshore schedules delete QUEUE NAME`.

use std::io::Write;
use std::sync::Arc;

use clap::{Args, Subcommand};
use longshore::schedule::{ScheduleKey, ScheduleStore};
use longshore::{Broker, QueueName};

use crate::output::{self, Failure};

/// `longshore schedules`.
#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// The schedules whose ticks go to a queue: holder and watermark.
    List(ListArgs),
    /// Deletes what the broker keeps for a schedule removed for good (stop its replicas first).
    Delete(DeleteArgs),
}

/// `longshore schedules list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The queue.
    pub queue: String,
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `longshore schedules delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The queue.
    pub queue: String,
    /// The schedule's name.
    pub name: String,
}

fn store(broker: &Arc<dyn Broker>) -> Result<&dyn ScheduleStore, Failure> {
    broker.schedules().ok_or_else(|| {
        Failure::failed(format!("the {} broker holds no schedules", broker.system()))
    })
}

pub(crate) async fn run(
    command: SchedulesCommand,
    broker: &Arc<dyn Broker>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let store = store(broker)?;
    match command {
        SchedulesCommand::List(args) => {
            let queue = QueueName::new(&args.queue);
            let schedules = store.list(&queue).await?;
            if args.json {
                let list: Vec<serde_json::Value> = schedules
                    .iter()
                    .map(|s| serde_json::json!({ "name": s.name, "held": s.held, "holder": s.holder, "watermark": output::when_json(s.watermark) }))
                    .collect();
                return output::json(
                    out,
                    &serde_json::json!({ "queue": queue.as_str(), "schedules": list }),
                );
            }
            let mut table = output::table(&[
                "SCHEDULE",
                "HELD",
                "HOLDER (LAST RECORD)",
                "WATERMARK (UTC)",
            ]);
            for schedule in &schedules {
                let held = match schedule.held {
                    Some(true) => "yes",
                    Some(false) => "no",
                    None => "-",
                };
                table.add_row(vec![
                    schedule.name.clone(),
                    held.to_owned(),
                    schedule.holder.clone().unwrap_or_else(|| "-".into()),
                    output::when(schedule.watermark),
                ]);
            }
            output::print(out, &table)
        }
        SchedulesCommand::Delete(args) => {
            let key = ScheduleKey {
                queue: QueueName::new(&args.queue),
                name: args.name.clone(),
            };
            store.delete(&key).await?;
            writeln!(out, "deleted the lease and watermark of {key}").map_err(Failure::io)
        }
    }
}
