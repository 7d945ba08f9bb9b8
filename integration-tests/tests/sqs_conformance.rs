//! The conformance suite on an SQS emulator (`LONGSHORE_SQS_ENDPOINT`, default LocalStack on
//! 127.0.0.1:4566).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use integration_tests::harness::{Harness, Timing, sqs_broker};
use longshore::Broker;

async fn sqs() -> Harness {
    Harness {
        broker: Arc::new(sqs_broker().await),
        // Visibility timeouts are whole seconds, and LocalStack's timers tick once a second.
        timing: Timing {
            visibility: Duration::from_secs(2),
            slack: Duration::from_millis(1500),
        },
    }
}

integration_tests::conformance_suite!(sqs());
integration_tests::lease_suite!(sqs());

/// Another replica: a client of its own.
fn another_sqs(_: &Harness) -> BoxFuture<'static, Arc<dyn Broker>> {
    Box::pin(async { Arc::new(sqs_broker().await) as Arc<dyn Broker> })
}

integration_tests::schedule_suite!(sqs(), another_sqs);
