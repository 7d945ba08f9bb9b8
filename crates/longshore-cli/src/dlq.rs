//! `longshore dlq list|show|redrive|purge QUEUE`: dead letters, the same on every broker.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use longshore::dead_letters::{DeadLetter, DeadLetters, Filter, GroupBy, Redrive};
use longshore::{Broker, QueueName};

use crate::output::{self, Failure};

/// The most dead letters read to list, show or group, unless `--limit` says.
const READ_AT_MOST: usize = 10_000;

/// `longshore dlq`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Dead letters grouped by reason (or job), with counts, oldest and newest, a sample id.
    List(ListArgs),
    /// One dead letter: its body, headers and reason.
    Show(ShowArgs),
    /// Moves dead letters back to the work queue (each confirmed there before it leaves the
    /// dead-letter queue), with filters, a rate and a dry run.
    Redrive(RedriveArgs),
    /// Deletes every dead letter of a queue (asks first).
    Purge(PurgeArgs),
}

/// Grouping for `dlq list`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum By {
    /// By reason.
    Reason,
    /// By job name.
    Job,
}

/// `longshore dlq list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The work queue whose dead letters to read.
    pub queue: String,
    /// Group by reason or job.
    #[arg(long, value_enum, default_value = "reason")]
    pub group_by: By,
    /// Read at most this many dead letters.
    #[arg(long)]
    pub limit: Option<usize>,
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `longshore dlq show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The work queue.
    pub queue: String,
    /// The dead letter's id.
    pub id: String,
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `longshore dlq redrive`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The work queue whose dead letters go back to it.
    pub queue: String,
    /// Only this job (may be given more than once).
    #[arg(long = "job")]
    pub jobs: Vec<String>,
    /// Only reasons containing this text.
    #[arg(long)]
    pub reason_contains: Option<String>,
    /// Only this id (may be given more than once).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// At most this many.
    #[arg(long)]
    pub limit: Option<usize>,
    /// At most this many a second.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Move nothing; list what would move.
    #[arg(long)]
    pub dry_run: bool,
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `longshore dlq purge`.
#[derive(Debug, Args)]
pub struct PurgeArgs {
    /// The work queue whose dead letters to delete.
    pub queue: String,
    /// Do not ask.
    #[arg(long)]
    pub yes: bool,
}

fn capability(broker: &Arc<dyn Broker>) -> Result<&dyn DeadLetters, Failure> {
    broker.dead_letters().ok_or_else(|| {
        Failure::failed(format!(
            "the {} broker cannot read its dead letters",
            broker.system()
        ))
    })
}

fn letter_json(letter: &DeadLetter) -> serde_json::Value {
    let body = String::from_utf8_lossy(&letter.message.body);
    serde_json::json!({
        "id": letter.message.id.as_str(),
        "job": letter.message.job.as_str(),
        "reason": letter.reason,
        "attempt": letter.attempt,
        "dead_at": output::when_json(letter.dead_at),
        "from_queue": letter.from_queue.as_ref().map(QueueName::as_str),
        "headers": letter.message.headers,
        "body": serde_json::from_str::<serde_json::Value>(&body).unwrap_or(serde_json::Value::String(body.into_owned())),
    })
}

pub(crate) async fn run(
    command: DlqCommand,
    broker: &Arc<dyn Broker>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let dead = capability(broker)?;
    match command {
        DlqCommand::List(args) => list(dead, args, out).await,
        DlqCommand::Show(args) => show(dead, args, out).await,
        DlqCommand::Redrive(args) => redrive(dead, args, out).await,
        DlqCommand::Purge(args) => purge(dead, args, out).await,
    }
}

async fn list(dead: &dyn DeadLetters, args: ListArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let queue = QueueName::new(&args.queue);
    let letters = dead
        .browse(&queue, args.limit.unwrap_or(READ_AT_MOST))
        .await?;
    let by = match args.group_by {
        By::Reason => GroupBy::Reason,
        By::Job => GroupBy::Job,
    };
    let groups = longshore::dead_letters::group(&letters, by);
    if args.json {
        let groups: Vec<serde_json::Value> = groups
            .iter()
            .map(|g| {
                serde_json::json!({
                    "key": g.key, "count": g.count, "oldest": output::when_json(g.oldest),
                    "newest": output::when_json(g.newest), "sample": g.sample.as_str(),
                })
            })
            .collect();
        return output::json(
            out,
            &serde_json::json!({ "queue": queue.as_str(), "dead_letters": letters.len(), "groups": groups }),
        );
    }
    let mut table = output::table(&[
        if matches!(by, GroupBy::Job) {
            "JOB"
        } else {
            "REASON"
        },
        "COUNT",
        "OLDEST (UTC)",
        "NEWEST (UTC)",
        "SAMPLE ID",
    ]);
    for group in &groups {
        table.add_row(vec![
            group.key.clone(),
            group.count.to_string(),
            output::when(group.oldest),
            output::when(group.newest),
            group.sample.to_string(),
        ]);
    }
    output::print(out, &table)?;
    writeln!(
        out,
        "{} dead letters of `{queue}` in {} groups",
        letters.len(),
        groups.len()
    )
    .map_err(Failure::io)
}

async fn show(dead: &dyn DeadLetters, args: ShowArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let queue = QueueName::new(&args.queue);
    let letters = dead.browse(&queue, READ_AT_MOST).await?;
    let letter = letters
        .iter()
        .find(|letter| letter.message.id.as_str() == args.id)
        .ok_or_else(|| {
            Failure::not_found(format!(
                "no dead letter `{}` in the dead-letter queue of `{queue}`",
                args.id
            ))
        })?;
    let json = letter_json(letter);
    if args.json {
        return output::json(out, &json);
    }
    let pretty = serde_json::to_string_pretty(&json).map_err(|e| Failure::failed(e.to_string()))?;
    writeln!(out, "{pretty}").map_err(Failure::io)
}

async fn redrive(
    dead: &dyn DeadLetters,
    args: RedriveArgs,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let queue = QueueName::new(&args.queue);
    let mut filter = Filter::all();
    for job in &args.jobs {
        filter = filter.job(job.as_str());
    }
    if let Some(text) = &args.reason_contains {
        filter = filter.reason_contains(text.as_str());
    }
    for id in &args.ids {
        filter = filter.id(id.as_str());
    }
    let mut plan = Redrive::new(filter).dry_run(args.dry_run);
    if let Some(limit) = args.limit {
        plan = plan.limit(limit);
    }
    if let Some(rate) = args.rate {
        if rate <= 0.0 {
            return Err(Failure::usage("--rate must be above 0"));
        }
        plan = plan.rate(rate);
    }
    let bar = if std::io::stderr().is_terminal() && !args.json {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
        bar
    } else {
        ProgressBar::hidden()
    };
    let verb = if args.dry_run { "would move" } else { "moved" };
    let report = dead
        .redrive(&queue, &plan, &|report| {
            bar.set_message(format!(
                "looked at {}, {verb} {}",
                report.examined,
                if args.dry_run {
                    report.matched
                } else {
                    report.moved
                }
            ));
            bar.tick();
        })
        .await?;
    bar.finish_and_clear();
    if args.json {
        return output::json(
            out,
            &serde_json::json!({
                "queue": queue.as_str(), "dry_run": args.dry_run, "examined": report.examined,
                "matched": report.matched, "moved": report.moved,
                "ids": report.ids.iter().map(|id| id.as_str()).collect::<Vec<_>>(),
            }),
        );
    }
    if args.dry_run {
        for id in &report.ids {
            writeln!(out, "would move {id}").map_err(Failure::io)?;
        }
        writeln!(
            out,
            "dry run: {} of {} dead letters of `{queue}` would move back; nothing moved",
            report.matched, report.examined
        )
        .map_err(Failure::io)
    } else {
        writeln!(
            out,
            "moved {} of {} dead letters back to `{queue}`",
            report.moved, report.examined
        )
        .map_err(Failure::io)
    }
}

async fn purge(
    dead: &dyn DeadLetters,
    args: PurgeArgs,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let queue = QueueName::new(&args.queue);
    if !args.yes {
        let dlq = dead.dead_letter_queue(&queue)?;
        if !std::io::stdin().is_terminal() {
            return Err(Failure::usage(format!(
                "purging `{dlq}` deletes every dead letter; confirm with --yes"
            )));
        }
        eprint!("delete every dead letter in `{dlq}`? type the queue name `{queue}` to confirm: ");
        let mut answer = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut answer)
            .map_err(Failure::io)?;
        if answer.trim() != queue.as_str() {
            return Err(Failure::failed("not confirmed; nothing deleted"));
        }
    }
    let purged = dead.purge(&queue).await?;
    writeln!(out, "deleted {purged} dead letters of `{queue}`").map_err(Failure::io)
}
