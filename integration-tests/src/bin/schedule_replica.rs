//! A scheduler replica for the crash tests: runs the tests' every-second schedule on a queue
//! until it is stopped or killed, logging each tick it enqueues to stdout.
//!
//! Usage: `schedule_replica <broker url> <queue>` (the queue exists already).

use longshore::schedule::Scheduler;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_target(false)
        .init();
    let args: Vec<String> = std::env::args().collect();
    let [_, url, queue] = args.as_slice() else {
        return Err("usage: schedule_replica <broker url> <queue>".into());
    };
    let broker = longshore::connect(url.as_str()).await?;
    Scheduler::new(broker, queue.as_str())
        .schedule(integration_tests::conformance::schedules::every_second())?
        .run()
        .await;
    Ok(())
}
