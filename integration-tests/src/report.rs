//! The job of the end-to-end status tests: reports progress step by step, and can fail or
//! hang on its first attempt.

use std::time::Duration;

use longshore::{Job, JobContext, JobError};
use serde::{Deserialize, Serialize};

/// Make a report in `steps` steps of `pause_ms`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Steps, each a progress report.
    pub steps: u32,
    /// The pause after each step.
    pub pause_ms: u64,
    /// Fail (retryably) on the first attempt, after its steps.
    pub fail_first: bool,
    /// Hang on the first attempt (until cancelled), after its steps: a worker killed mid-job.
    pub hang_first: bool,
}

impl Job for Report {
    const NAME: &'static str = "report";
}

/// The handler.
pub async fn report(job: Report, ctx: JobContext) -> Result<(), JobError> {
    for step in 1..=job.steps {
        tokio::time::sleep(Duration::from_millis(job.pause_ms)).await;
        ctx.progress(
            f64::from(step) / f64::from(job.steps),
            format!("step {step} of {} (attempt {})", job.steps, ctx.attempt),
        );
    }
    tokio::time::sleep(Duration::from_millis(job.pause_ms)).await;
    if ctx.attempt.get() == 1 && job.hang_first {
        println!("job hanging");
        ctx.cancelled().await;
        return Err(JobError::retryable("stopped"));
    }
    if ctx.attempt.get() == 1 && job.fail_first {
        return Err(JobError::retryable("the printer is out of paper"));
    }
    ctx.set_result(&serde_json::json!({ "pages": job.steps }))?;
    Ok(())
}
