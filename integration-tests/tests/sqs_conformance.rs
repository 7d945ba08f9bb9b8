//! The conformance suite on an SQS emulator (`LONGSHORE_SQS_ENDPOINT`, default LocalStack on
//! 127.0.0.1:4566).

use std::sync::Arc;
use std::time::Duration;

use integration_tests::harness::{Harness, Timing, sqs_broker};

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
