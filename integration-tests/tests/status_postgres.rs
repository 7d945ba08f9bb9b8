//! The job status suite on a real PostgreSQL (`LONGSHORE_POSTGRES_URL`, default the local
//! server's `test` database).

use integration_tests::conformance::status::StatusHarness;
use integration_tests::harness::postgres_status_store;
use longshore::status::JobStatuses;

fn postgres() -> StatusHarness {
    StatusHarness::new(|| async { JobStatuses::new(postgres_status_store().await) })
}

integration_tests::status_suite!(postgres());
