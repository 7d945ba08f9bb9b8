//! The `longshore` command on the memory broker, in process: dead letters of three kinds
//! listed, grouped and shown; a dry run and a filtered redrive; the redrive rate; the
//! policy check.

// The redrive tests nest deep futures (clippy computes their layouts).
#![recursion_limit = "256"]

use std::time::Duration;

use integration_tests::cli::{self, Runner};
use integration_tests::harness::{Harness, memory_harness};
use longshore::{QueueName, QueueOptions};

fn runner(h: &Harness) -> Runner {
    Runner::InProcess(h.broker.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_grouped_and_shown() {
    let h = memory_harness();
    cli::dead_letters_are_listed_grouped_and_shown(&h, &runner(&h)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_redrive_moves_exactly_the_matching_ones() {
    let h = memory_harness();
    cli::a_filtered_redrive_moves_exactly_the_matching_ones(&h, &runner(&h)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redrive_rate_is_honoured() {
    let h = memory_harness();
    cli::the_redrive_rate_is_honoured(&h, &runner(&h)).await;
}

#[tokio::test]
async fn check_finds_a_visibility_timeout_below_the_job_timeout() {
    let h = memory_harness();
    let queue = QueueName::new("cli-check");
    h.broker
        .declare(
            &queue,
            &QueueOptions::default().visibility_timeout(Duration::from_secs(30)),
        )
        .await
        .expect("declare");
    let runner = runner(&h);
    let warned = runner
        .run(&[
            "check",
            "cli-check",
            "--max-attempts",
            "3",
            "--job-timeout",
            "5m",
        ])
        .await
        .ok();
    assert!(
        warned
            .stdout
            .contains("visibility timeout (30s) is below the job timeout (300s)"),
        "{warned:?}"
    );
    let strict = runner
        .run(&["check", "cli-check", "--job-timeout", "5m", "--strict"])
        .await;
    assert_eq!(strict.code, 4, "{strict:?}");
    let missing = runner.run(&["check", "no-such-queue"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stderr.contains("no-such-queue"), "{missing:?}");
}

#[tokio::test]
async fn enqueue_queues_and_bad_input_answer_clearly() {
    let h = memory_harness();
    let queue = QueueName::new("cli-enqueue");
    h.broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare");
    let runner = runner(&h);
    let id = runner
        .run(&[
            "enqueue",
            "cli-enqueue",
            "report",
            "--json",
            r#"{"n":1}"#,
            "--header",
            "tenant=acme",
        ])
        .await
        .ok()
        .stdout;
    assert!(!id.trim().is_empty(), "prints the job id");
    runner
        .run(&["enqueue", "cli-enqueue", "report", "--delay", "10m"])
        .await
        .ok();
    let depths = runner
        .run(&["queues", "cli-enqueue", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(
        (depths["ready"].as_u64(), depths["delayed"].as_u64()),
        (Some(1), Some(1)),
        "{depths}"
    );
    let table = runner.run(&["queues", "cli-enqueue"]).await.ok().stdout;
    assert!(
        table.contains("READY") && table.contains("cli-enqueue"),
        "{table}"
    );

    let not_json = runner
        .run(&["enqueue", "cli-enqueue", "report", "--json", "{oops"])
        .await;
    assert_eq!(not_json.code, 2, "{not_json:?}");
    assert!(
        not_json.stderr.contains("--json is not JSON"),
        "{not_json:?}"
    );
    let bad_time = runner
        .run(&["enqueue", "cli-enqueue", "report", "--at", "tomorrow"])
        .await;
    assert_eq!(bad_time.code, 2, "{bad_time:?}");
    assert!(bad_time.stderr.contains("RFC 3339"), "{bad_time:?}");
    let no_status = runner.run(&["jobs", "some-id"]).await;
    assert_eq!(no_status.code, 2, "{no_status:?}");
    assert!(
        no_status.stderr.contains("LONGSHORE_STATUS_URL"),
        "{no_status:?}"
    );
}
