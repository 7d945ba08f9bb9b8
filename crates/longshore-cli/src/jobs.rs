//! `longshore jobs ID` and `longshore jobs cancel ID`: job status from the status store.

use std::io::Write;

use clap::{Args, Subcommand};
use longshore::MessageId;
use longshore::status::{CancelOutcome, JobStatus, JobStatuses};

use crate::output::{self, Failure};

/// `longshore jobs`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct JobsArgs {
    /// The job store: `redis://…`, `postgres://…`.
    #[arg(
        long,
        env = "LONGSHORE_STATUS_URL",
        global = true,
        hide_env_values = true
    )]
    pub status_url: Option<String>,
    /// JSON for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// The job's id: prints its status.
    pub id: Option<String>,
    /// Or an action.
    #[command(subcommand)]
    pub action: Option<JobsAction>,
}

/// Actions on a job.
#[derive(Debug, Subcommand)]
pub enum JobsAction {
    /// Asks for a job's cancellation.
    Cancel {
        /// The job's id.
        id: String,
    },
}

async fn statuses(url: Option<&str>) -> Result<JobStatuses, Failure> {
    let url = url.ok_or_else(|| Failure::usage("name the job status store with --status-url or LONGSHORE_STATUS_URL (redis://…, postgres://…)"))?;
    longshore::status_store::connect(url)
        .await
        .map_err(|e| Failure::failed(e.to_string()))
}

fn print(out: &mut dyn Write, status: &JobStatus, json: bool) -> Result<(), Failure> {
    if json {
        let value = serde_json::to_value(status).map_err(|e| Failure::failed(e.to_string()))?;
        return output::json(out, &value);
    }
    let mut table = output::table(&["FIELD", "VALUE"]);
    let progress = status.progress.as_ref().map_or_else(
        || "-".to_owned(),
        |p| format!("{:.0}% {}", p.fraction * 100.0, p.message),
    );
    for (field, value) in [
        ("id", status.id.to_string()),
        ("job", status.job.to_string()),
        ("queue", status.queue.to_string()),
        ("state", status.state.as_str().to_owned()),
        ("attempt", status.attempt.to_string()),
        ("progress", progress),
        ("error", status.error.clone().unwrap_or_else(|| "-".into())),
        (
            "worker",
            status.worker.clone().unwrap_or_else(|| "-".into()),
        ),
        ("enqueued", output::when(Some(status.enqueued_at))),
        ("due", output::when(status.due_at)),
        ("started", output::when(status.started_at)),
        ("finished", output::when(status.finished_at)),
        ("cancel requested", status.cancel_requested.to_string()),
        (
            "result",
            status
                .result
                .as_ref()
                .map_or_else(|| "-".into(), ToString::to_string),
        ),
    ] {
        table.add_row(vec![field.to_owned(), value]);
    }
    output::print(out, &table)
}

pub(crate) async fn run(args: JobsArgs, out: &mut dyn Write) -> Result<(), Failure> {
    let statuses = statuses(args.status_url.as_deref()).await?;
    match (args.action, args.id) {
        (Some(JobsAction::Cancel { id }), _) => match statuses
            .cancel(&MessageId::from(id.clone()))
            .await
            .map_err(|e| Failure::failed(e.to_string()))?
        {
            CancelOutcome::Requested(status) => print(out, &status, args.json),
            CancelOutcome::Finished(status) => {
                print(out, &status, args.json)?;
                Err(Failure::failed(format!(
                    "job `{id}` had finished already ({}); nothing to cancel",
                    status.state.as_str()
                )))
            }
            CancelOutcome::NotFound => Err(Failure::not_found(format!(
                "no job `{id}` is known to the status store"
            ))),
        },
        (None, Some(id)) => match statuses
            .get(&MessageId::from(id.clone()))
            .await
            .map_err(|e| Failure::failed(e.to_string()))?
        {
            Some(status) => print(out, &status, args.json),
            None => Err(Failure::not_found(format!(
                "no job `{id}` is known to the status store (never enqueued with a status, or expired)"
            ))),
        },
        (None, None) => Err(Failure::usage(
            "name a job: longshore jobs <ID>, or longshore jobs cancel <ID>",
        )),
    }
}
