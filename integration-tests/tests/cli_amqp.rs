//! The `longshore` binary on RabbitMQ: dead letters of three kinds listed, grouped and
//! shown; a dry run and a filtered redrive; the redrive rate; a redrive killed halfway.

// The redrive tests nest deep futures (clippy computes their layouts).
#![recursion_limit = "256"]

use std::time::Duration;

use integration_tests::cli::{self, Runner};
use integration_tests::harness::{amqp_url, rabbitmq_harness};

fn runner() -> Runner {
    Runner::Binary {
        url: amqp_url(),
        env: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_grouped_and_shown() {
    cli::dead_letters_are_listed_grouped_and_shown(&rabbitmq_harness().await, &runner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_redrive_moves_exactly_the_matching_ones() {
    let h = rabbitmq_harness().await;
    cli::a_filtered_redrive_moves_exactly_the_matching_ones(&h, &runner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redrive_rate_is_honoured() {
    cli::the_redrive_rate_is_honoured(&rabbitmq_harness().await, &runner()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_killed_halfway_loses_nothing() {
    // A killed command's connection closes: RabbitMQ requeues what it held at once.
    let h = rabbitmq_harness().await;
    cli::a_redrive_killed_halfway_loses_nothing(&h, &runner(), Duration::from_secs(30)).await;
}
