//! `longshore enqueue QUEUE JOB --json '{…}' [--delay 10m | --at TIME] [--header k=v]`.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use longshore::{Broker, EnqueueOptions, Producer};

use crate::output::Failure;

/// `longshore enqueue`.
#[derive(Debug, Args)]
pub struct EnqueueArgs {
    /// The queue.
    pub queue: String,
    /// The job name (its handler's `Job::NAME`).
    pub job: String,
    /// The job as JSON.
    #[arg(long = "json", default_value = "{}")]
    pub body: String,
    /// Run it no sooner than this from now (`90s`, `10m`, `2h`).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "at")]
    pub delay: Option<Duration>,
    /// Run it no sooner than this time (RFC 3339: `2026-12-24T18:00:00Z`).
    #[arg(long)]
    pub at: Option<String>,
    /// A header for the job's context (`tenant=acme`); may be given more than once.
    #[arg(long = "header", value_parser = header)]
    pub headers: Vec<(String, String)>,
}

fn header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not name=value"))?;
    Ok((name.trim().to_owned(), value.to_owned()))
}

pub(crate) async fn run(
    args: EnqueueArgs,
    broker: &Arc<dyn Broker>,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let body: serde_json::Value = serde_json::from_str(&args.body)
        .map_err(|error| Failure::usage(format!("--json is not JSON ({error}): {}", args.body)))?;
    let mut options = EnqueueOptions::default().manual();
    for (name, value) in args.headers {
        options = options.header(name, value);
    }
    let delay = match (&args.at, args.delay) {
        (Some(at), _) => {
            let at = chrono::DateTime::parse_from_rfc3339(at).map_err(|error| {
                Failure::usage(format!(
                    "--at `{at}` is not an RFC 3339 time ({error}), e.g. 2026-12-24T18:00:00Z"
                ))
            })?;
            let at = SystemTime::from(at.with_timezone(&chrono::Utc));
            Some(at.duration_since(SystemTime::now()).unwrap_or_default())
        }
        (None, delay) => delay,
    };
    if let Some(delay) = delay {
        options = options.delay(delay);
    }
    let producer = Producer::new(Arc::clone(broker), args.queue.as_str());
    let id = producer
        .enqueue_json(args.job.as_str(), &body, options)
        .await
        .map_err(|error| Failure::failed(error.to_string()))?;
    writeln!(out, "{id}").map_err(Failure::io)
}
