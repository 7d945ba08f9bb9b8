//! The `longshore` binary on SQS (LocalStack): dead letters of three kinds listed, grouped
//! and shown; a dry run and a filtered redrive; the redrive rate; a redrive killed halfway;
//! the policy check against `maxReceiveCount` and the visibility timeout.

// The redrive tests nest deep futures (clippy computes their layouts).
#![recursion_limit = "256"]

use std::time::Duration;

use integration_tests::cli::{self, Runner};
use integration_tests::harness::{sqs_endpoint, sqs_env, sqs_harness, unique_queue};
use longshore::{Broker, QueueOptions};

fn runner() -> Runner {
    Runner::Binary {
        url: "sqs://".into(),
        env: sqs_env(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_grouped_and_shown() {
    cli::dead_letters_are_listed_grouped_and_shown(&sqs_harness().await, &runner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_redrive_moves_exactly_the_matching_ones() {
    cli::a_filtered_redrive_moves_exactly_the_matching_ones(&sqs_harness().await, &runner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redrive_rate_is_honoured() {
    cli::the_redrive_rate_is_honoured(&sqs_harness().await, &runner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_killed_halfway_loses_nothing() {
    // What the killed command had received stays hidden for its 120 s hold, then is back.
    let h = sqs_harness().await;
    cli::a_redrive_killed_halfway_loses_nothing(&h, &runner(), Duration::from_secs(180)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_policies_that_disagree() {
    let broker = longshore::sqs::SqsBroker::builder("sqs://")
        .endpoint_url(sqs_endpoint())
        .region("us-east-1")
        .static_credentials("test", "test")
        .max_receive_count(3)
        .connect()
        .await
        .expect("an SQS client");
    let queue = unique_queue("cli-check");
    broker
        .declare(
            &queue,
            &QueueOptions::default().visibility_timeout(Duration::from_secs(30)),
        )
        .await
        .expect("declare");
    cli::check_finds_policies_that_disagree(&runner(), &queue).await;
}
