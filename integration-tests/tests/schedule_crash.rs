//! A schedule's lease holder killed with SIGKILL: another replica takes over, and every tick
//! from before the kill to well after it runs — none skipped, at most the one tick the
//! holder may have enqueued without recording it run twice (the documented limit).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use integration_tests::conformance::declared_queue;
use integration_tests::conformance::schedules::{Ticks, drain_ticks, millis, replica_worker};
use integration_tests::harness::{
    Harness, amqp_broker, amqp_url, eventually, rabbitmq_harness, sqs_broker, sqs_env, sqs_harness,
};
use integration_tests::process::WorkerProcess;
use longshore::Broker;
use longshore::schedule::ScheduleKey;

async fn holder_killed(h: Harness, replica: Arc<dyn Broker>, url: &str, env: &[(&str, String)]) {
    let queue = declared_queue(&h, "cron-kill").await;
    let process = WorkerProcess::start_with_env(
        env!("CARGO_BIN_EXE_schedule_replica"),
        &[url.to_owned(), queue.to_string()],
        env,
    );
    // Alone, the process takes the lease.
    process.expect_line("tick enqueued", Duration::from_secs(30));
    let ticks = Arc::new(Ticks::default());
    let standby = replica_worker(&h, replica, &queue, &ticks);
    process.expect_line("tick enqueued", Duration::from_secs(5));
    process.expect_line("tick enqueued", Duration::from_secs(5));
    let killed_at = SystemTime::now();
    process.signal("KILL");
    assert!(!process.wait(Duration::from_secs(5)).success());

    // The standby takes over once the broker frees the lease: at once on RabbitMQ (the
    // connection closed), after the 30 s visibility lease on SQS.
    let until = millis(killed_at) + 3_000;
    eventually(
        Duration::from_secs(90),
        "ticks well after the kill",
        || async {
            let last = ticks.snapshot().keys().next_back().copied().unwrap_or(0);
            if last >= until {
                Ok(())
            } else {
                Err(format!("last tick run: {last}, waiting for {until}"))
            }
        },
    )
    .await;
    standby.stop().await;

    // Enqueued but not run yet (the stopping worker handed its prefetch back) counts too.
    let mut runs = ticks.snapshot();
    for tick in drain_ticks(&h, &queue).await {
        *runs.entry(tick).or_default() += 1;
    }
    let all: Vec<u64> = runs.keys().copied().collect();
    for pair in all.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "no tick skipped: {all:?}");
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.len() <= 1 && twice.iter().all(|(_, n)| **n == 2),
        "at most the tick in flight at the kill runs twice: {twice:?}"
    );
    assert!(*all.first().expect("ticks") < millis(killed_at), "{all:?}");
    h.broker
        .schedules()
        .expect("the broker holds schedules")
        .delete(&ScheduleKey {
            queue: queue.clone(),
            name: "every-second".into(),
        })
        .await
        .expect("delete the schedule");
    h.broker.delete(&queue).await.expect("delete the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_on_rabbitmq_is_replaced_without_losing_ticks() {
    let h = rabbitmq_harness().await;
    let replica: Arc<dyn Broker> = Arc::new(amqp_broker().await);
    holder_killed(h, replica, &amqp_url(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_on_sqs_is_replaced_without_losing_ticks() {
    let h = sqs_harness().await;
    let replica: Arc<dyn Broker> = Arc::new(sqs_broker().await);
    holder_killed(h, replica, "sqs://", &sqs_env()).await;
}
