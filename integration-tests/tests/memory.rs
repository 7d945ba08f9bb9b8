//! The conformance suite on the embedded in-memory broker.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::harness::{Harness, Timing};
use longshore::MemoryBroker;

async fn memory() -> Harness {
    Harness {
        broker: Arc::new(MemoryBroker::new()),
        timing: Timing {
            visibility: Duration::from_millis(300),
            slack: Duration::from_millis(100),
        },
    }
}

integration_tests::conformance_suite!(memory());
integration_tests::lease_suite!(memory());
integration_tests::schedule_suite!(
    memory(),
    integration_tests::conformance::schedules::same_broker
);
