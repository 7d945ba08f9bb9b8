//! The job status suite on the in-memory store.

use integration_tests::conformance::status::StatusHarness;
use longshore::status::{JobStatuses, MemoryStatusStore};

fn memory() -> StatusHarness {
    StatusHarness::new(|| async { JobStatuses::new(MemoryStatusStore::new()) })
}

integration_tests::status_suite!(memory());
