//! `longshore check QUEUE`: the queue against a worker's retry policy and timeouts.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use longshore::check::{Expectations, Severity};
use longshore::{Broker, QueueName};

use crate::output::{self, Failure};

/// `longshore check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The queue.
    pub queue: String,
    /// The most attempts a job takes (the worker's retry policy).
    #[arg(long, default_value_t = 5)]
    pub max_attempts: u32,
    /// The longest a job runs (the worker's job timeout).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub job_timeout: Duration,
    /// Notes fail the check too.
    #[arg(long)]
    pub strict: bool,
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn run(
    args: CheckArgs,
    broker: &Arc<dyn Broker>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let queue = QueueName::new(&args.queue);
    let expected = Expectations {
        max_attempts: args.max_attempts,
        job_timeout: args.job_timeout,
    };
    let findings = longshore::check::check(&**broker, &queue, &expected).await?;
    if args.json {
        let list: Vec<serde_json::Value> = findings
            .iter()
            .map(|f| serde_json::json!({ "severity": format!("{:?}", f.severity).to_lowercase(), "message": f.message }))
            .collect();
        output::json(
            out,
            &serde_json::json!({ "queue": queue.as_str(), "findings": list }),
        )?;
    } else if findings.is_empty() {
        writeln!(out, "queue `{queue}`: no problems found").map_err(Failure::io)?;
    } else {
        for finding in &findings {
            writeln!(out, "{finding}").map_err(Failure::io)?;
        }
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if errors > 0 || (args.strict && !findings.is_empty()) {
        return Err(Failure::problems(""));
    }
    Ok(())
}
