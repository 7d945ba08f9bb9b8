//! The `longshore` command: operate longshore queues on any broker `longshore::connect`
//! takes (`--url` or `LONGSHORE_URL`): queue depths, enqueue, dead letters (list, show,
//! redrive, purge), job status, cron schedules, the policy check, and the dashboard.
//!
//! Exit codes: `0` done; `1` failed (the message says what to do); `2` wrong usage; `3` not
//! found (a job, a dead letter); `4` the check found problems. `--json` prints JSON for
//! scripts.

mod check;
mod dlq;
mod enqueue;
mod jobs;
mod output;
mod queues;
mod schedules;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use longshore::Broker;

pub use output::Failure;

/// The `longshore` command line.
#[derive(Debug, Parser)]
#[command(
    name = "longshore",
    version,
    about = "Operate longshore queues: depths, enqueue, dead letters, job status, schedules, checks, the dashboard"
)]
pub struct Cli {
    /// The broker: `amqp://user:pass@host:5672/vhost`, `sqs://` (AWS settings from the
    /// environment), an SQS queue URL, or `memory://`.
    #[arg(long, env = "LONGSHORE_URL", global = true, hide_env_values = true)]
    pub url: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Messages per queue: ready, in flight, delayed, dead-lettered.
    Queues(queues::QueuesArgs),
    /// Enqueues a job by name with a JSON body; prints its id.
    Enqueue(enqueue::EnqueueArgs),
    /// Dead letters: list (grouped), show, redrive, purge.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// A job's status (from the status store), or cancel it.
    Jobs(jobs::JobsArgs),
    /// Cron schedules the broker holds.
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    /// Checks a queue against a worker's retry policy and timeouts.
    Check(check::CheckArgs),
    /// Serves the dashboard (queues, dead letters, jobs, schedules) without a worker.
    Dashboard(DashboardArgs),
}

/// `longshore dashboard`.
#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8088")]
    pub listen: String,
    /// The queues to show (all the broker can list when none is named).
    #[arg(long = "queue")]
    pub queues: Vec<String>,
    /// The token that allows actions (redrive, purge, cancel); read-only without one.
    #[arg(long, env = "LONGSHORE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The job status store, for job lookups.
    #[arg(long, env = "LONGSHORE_STATUS_URL", hide_env_values = true)]
    pub status_url: Option<String>,
}

/// Connects to the broker `url` names, or says how to name one.
pub async fn connect(url: Option<&str>) -> Result<Arc<dyn Broker>, Failure> {
    let url = url.ok_or_else(|| {
        Failure::usage(
            "name the broker with --url or LONGSHORE_URL (amqp://user:pass@host:5672/%2f, sqs://, memory://)",
        )
    })?;
    let connecting = longshore::connect(url);
    match tokio::time::timeout(Duration::from_secs(60), connecting).await {
        Ok(Ok(broker)) => Ok(broker),
        Ok(Err(error)) => Err(Failure::failed(error.to_string())),
        Err(_) => Err(Failure::failed(format!(
            "could not connect to {} within 60 s",
            longshore::BrokerUrl::new(url)
        ))),
    }
}

/// Runs `cli`, writing results to `out` (messages about failures go to stderr); the exit
/// code. `broker` replaces the connection `--url` would make (for tests on a memory broker).
pub async fn run(cli: Cli, out: &mut dyn Write, broker: Option<Arc<dyn Broker>>) -> ExitCode {
    match execute(cli, out, broker).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

/// Runs `cli` like [`run`], returning the failure (its message and exit code) instead of
/// printing it.
pub async fn execute(
    cli: Cli,
    out: &mut dyn Write,
    broker: Option<Arc<dyn Broker>>,
) -> Result<(), Failure> {
    match cli.command {
        Command::Jobs(args) => jobs::run(args, out).await,
        command => {
            let broker = match broker {
                Some(broker) => broker,
                None => connect(cli.url.as_deref()).await?,
            };
            dispatch(command, &broker, out).await
        }
    }
}

async fn dispatch(
    command: Command,
    broker: &Arc<dyn Broker>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    match command {
        Command::Queues(args) => queues::run(args, broker, out).await,
        Command::Enqueue(args) => enqueue::run(args, broker, out).await,
        Command::Dlq(command) => dlq::run(command, broker, out).await,
        Command::Schedules(command) => schedules::run(command, broker, out).await,
        Command::Check(args) => check::run(args, broker, out).await,
        Command::Dashboard(args) => dashboard(args, broker, out).await,
        Command::Jobs(_) => unreachable!("jobs need no broker and run before connecting"),
    }
}

async fn dashboard(
    args: DashboardArgs,
    broker: &Arc<dyn Broker>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let statuses = match &args.status_url {
        Some(url) => Some(
            longshore::status_store::connect(url)
                .await
                .map_err(|e| Failure::failed(e.to_string()))?,
        ),
        None => None,
    };
    let mut dashboard = longshore::http::Dashboard::new(Arc::clone(broker))
        .queues(args.queues.iter().map(String::as_str));
    if let Some(token) = args.admin_token {
        dashboard = dashboard.admin_token(token);
    }
    if let Some(statuses) = statuses {
        dashboard = dashboard.statuses(statuses);
    }
    let server = longshore::http::serve(args.listen.as_str(), dashboard.router())
        .await
        .map_err(|error| Failure::failed(format!("cannot listen on {}: {error}", args.listen)))?;
    writeln!(
        out,
        "dashboard on http://{}/ (Ctrl-C stops it)",
        server.local_addr()
    )
    .map_err(Failure::io)?;
    out.flush().map_err(Failure::io)?;
    tokio::signal::ctrl_c().await.map_err(Failure::io)?;
    Ok(())
}
