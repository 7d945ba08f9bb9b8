//! longshore's cross-crate and real-broker tests.
//!
//! [`conformance`] holds the behaviour every broker shares, written once; each file in
//! `tests/` runs it against one broker (memory, RabbitMQ, SQS) with the suite macros.

pub mod browser;
pub mod chaos;
pub mod cli;
pub mod conformance;
pub mod harness;
pub mod otlp;
pub mod process;
pub mod rabbit_node;
pub mod report;
pub mod sse;
