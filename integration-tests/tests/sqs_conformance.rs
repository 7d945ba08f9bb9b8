//! The conformance suite on an SQS emulator (`LONGSHORE_SQS_ENDPOINT`, default LocalStack on
//! 127.0.0.1:4566).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use integration_tests::harness::{Harness, sqs_broker, sqs_harness};
use longshore::Broker;

async fn sqs() -> Harness {
    sqs_harness().await
}

integration_tests::conformance_suite!(sqs());
integration_tests::lease_suite!(sqs());

/// Another replica: a client of its own.
fn another_sqs(_: &Harness) -> BoxFuture<'static, Arc<dyn Broker>> {
    Box::pin(async { Arc::new(sqs_broker().await) as Arc<dyn Broker> })
}

integration_tests::schedule_suite!(sqs(), another_sqs);
