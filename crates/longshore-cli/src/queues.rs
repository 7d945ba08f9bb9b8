//! `longshore queues [QUEUE…] [--watch]`: messages per queue by state.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use longshore::{Broker, QueueName, QueueStats};

use crate::output::{self, Failure};

/// `longshore queues`.
#[derive(Debug, Args)]
pub struct QueuesArgs {
    /// The queues (all the broker can list when none is named; RabbitMQ cannot list
    /// queues over AMQP, so name them there).
    pub queues: Vec<String>,
    /// Print again every `--every`, with rates.
    #[arg(long)]
    pub watch: bool,
    /// How often `--watch` prints.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub every: Duration,
    /// JSON lines for scripts.
    #[arg(long)]
    pub json: bool,
}

/// The queues to show: those named, or all the broker lists.
pub(crate) async fn names(
    broker: &Arc<dyn Broker>,
    named: &[String],
) -> Result<Vec<QueueName>, Failure> {
    if !named.is_empty() {
        return Ok(named.iter().map(QueueName::new).collect());
    }
    match broker.list_queues().await? {
        Some(names) => Ok(names),
        None => Err(Failure::usage(format!(
            "the {} broker cannot list its queues: name them (longshore queues orders billing)",
            broker.system()
        ))),
    }
}

pub(crate) async fn run(
    args: QueuesArgs,
    broker: &Arc<dyn Broker>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let names = names(broker, &args.queues).await?;
    let mut previous: Option<(Instant, Vec<QueueStats>)> = None;
    loop {
        let mut all = Vec::new();
        for name in &names {
            all.push(broker.stats(name).await?);
        }
        let now = Instant::now();
        let rates = previous.as_ref().map(|(at, before)| {
            let seconds = now.duration_since(*at).as_secs_f64().max(0.001);
            before
                .iter()
                .zip(&all)
                .map(|(a, b)| {
                    let processed = (a.ready + a.delayed.unwrap_or(0)) as f64
                        - (b.ready + b.delayed.unwrap_or(0)) as f64;
                    let dead =
                        b.dead_lettered.unwrap_or(0) as f64 - a.dead_lettered.unwrap_or(0) as f64;
                    (processed / seconds, dead / seconds)
                })
                .collect::<Vec<_>>()
        });
        if args.json {
            for (index, (name, stats)) in names.iter().zip(&all).enumerate() {
                let mut line = serde_json::json!({
                    "queue": name.as_str(),
                    "ready": stats.ready,
                    "in_flight": stats.in_flight,
                    "delayed": stats.delayed,
                    "dead_lettered": stats.dead_lettered,
                });
                if let Some(rates) = &rates {
                    line["drained_per_second"] = serde_json::json!(rates[index].0);
                    line["dead_lettered_per_second"] = serde_json::json!(rates[index].1);
                }
                output::json(out, &line)?;
            }
        } else {
            let mut header = vec!["QUEUE", "READY", "IN FLIGHT", "DELAYED", "DEAD-LETTERED"];
            if rates.is_some() {
                header.extend(["DRAINED/S", "DEAD/S"]);
            }
            let mut table = output::table(&header);
            for (index, (name, stats)) in names.iter().zip(&all).enumerate() {
                let mut row = vec![
                    name.to_string(),
                    stats.ready.to_string(),
                    output::count(stats.in_flight),
                    output::count(stats.delayed),
                    output::count(stats.dead_lettered),
                ];
                if let Some(rates) = &rates {
                    row.push(format!("{:.1}", rates[index].0));
                    row.push(format!("{:.1}", rates[index].1));
                }
                table.add_row(row);
            }
            if args.watch {
                write!(out, "\x1b[2J\x1b[H").map_err(Failure::io)?;
            }
            output::print(out, &table)?;
        }
        out.flush().map_err(Failure::io)?;
        if !args.watch {
            return Ok(());
        }
        previous = Some((now, all));
        tokio::time::sleep(args.every).await;
    }
}
