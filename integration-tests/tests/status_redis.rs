//! The job status suite on a real Redis (`LONGSHORE_REDIS_URL`, default the local server).

use integration_tests::conformance::status::StatusHarness;
use integration_tests::harness::redis_status_store;
use longshore::status::JobStatuses;

fn redis() -> StatusHarness {
    StatusHarness::new(|| async { JobStatuses::new(redis_status_store().await) })
}

integration_tests::status_suite!(redis());
