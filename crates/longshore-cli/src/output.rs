//! Output for people (tables) and scripts (`--json`), and failures with exit codes.

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use comfy_table::{Table, presets};

/// Why a command did not do what it was asked, with the exit code scripts see.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Failed (exit 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }

    /// Wrong usage (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }

    /// Not found (exit 3).
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: 3,
            message: message.into(),
        }
    }

    /// The check found problems (exit 4).
    pub fn problems(message: impl Into<String>) -> Self {
        Self {
            code: 4,
            message: message.into(),
        }
    }

    /// Writing the output failed.
    #[allow(
        clippy::needless_pass_by_value,
        reason = "used as `map_err(Failure::io)`"
    )]
    pub fn io(error: std::io::Error) -> Self {
        Self::failed(format!("cannot write the output: {error}"))
    }

    /// The exit code.
    pub fn code(&self) -> u8 {
        self.code
    }

    /// What went wrong, and what to do.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prints the message on stderr and gives the exit code.
    pub fn report(self) -> ExitCode {
        if !self.message.is_empty() {
            eprintln!("longshore: {}", self.message);
        }
        ExitCode::from(self.code)
    }
}

impl From<longshore::BrokerError> for Failure {
    fn from(error: longshore::BrokerError) -> Self {
        Failure::failed(error.to_string())
    }
}

/// A table with a header row, in the plain style terminals and logs both read.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_header(header.to_vec());
    table
}

/// Writes `value` as one line of JSON.
pub(crate) fn json(out: &mut dyn Write, value: &serde_json::Value) -> Result<(), Failure> {
    writeln!(out, "{value}").map_err(Failure::io)
}

/// Writes `table`.
pub(crate) fn print(out: &mut dyn Write, table: &Table) -> Result<(), Failure> {
    writeln!(out, "{table}").map_err(Failure::io)
}

/// A time as people read it (UTC, seconds).
pub(crate) fn when(time: Option<SystemTime>) -> String {
    time.map_or_else(
        || "-".to_owned(),
        |time| {
            chrono::DateTime::<chrono::Utc>::from(time)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        },
    )
}

/// A time as scripts read it (RFC 3339), or `null`.
pub(crate) fn when_json(time: Option<SystemTime>) -> serde_json::Value {
    time.map_or(serde_json::Value::Null, |time| {
        serde_json::Value::from(
            chrono::DateTime::<chrono::Utc>::from(time)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        )
    })
}

/// A count the broker may not know.
pub(crate) fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |n| n.to_string())
}
