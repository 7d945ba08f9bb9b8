//! [`LogFields`]: how the stdout log writes fields. Like `tracing_subscriber`'s default
//! (`name=value`, the `message` first and bare), but it leaves out the span fields that only
//! OpenTelemetry reads (`otel.*`, and the messaging conventions a log reader does not need),
//! so the job span a worker opens for every job costs the log little: its `otel.name` is
//! never even formatted. A job's log lines still show its queue, message id, job name and
//! attempt.

use std::fmt::{self, Debug};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

/// The stdout log's field formatter (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogFields;

/// Whether a field is for OpenTelemetry only, not for the log.
fn is_for_traces_only(name: &str) -> bool {
    name.starts_with("otel.")
        || name.starts_with("log.")
        || matches!(
            name,
            "messaging.system" | "messaging.operation.type" | "messaging.message.body.size"
        )
}

impl<'writer> FormatFields<'writer> for LogFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            written: false,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        self.format_fields(Writer::new(&mut added), fields)?;
        if !added.is_empty() {
            if !current.fields.is_empty() {
                current.fields.push(' ');
            }
            current.fields.push_str(&added);
        }
        Ok(())
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    written: bool,
    result: fmt::Result,
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        let name = field.name();
        if self.result.is_err() || is_for_traces_only(name) {
            return;
        }
        if self.written {
            self.result = self.writer.write_char(' ');
        }
        self.written = true;
        self.result = self.result.and_then(|()| {
            if name == "message" {
                write!(self.writer, "{value:?}")
            } else {
                write!(
                    self.writer,
                    "{}={value:?}",
                    name.strip_prefix("r#").unwrap_or(name)
                )
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::LogFields;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn job_lines_keep_what_a_reader_needs_and_leave_out_trace_only_fields() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .fmt_fields(LogFields)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "process",
                otel.name = %format_args!("process {}", "orders"),
                otel.kind = "consumer",
                otel.status_description = tracing::field::Empty,
                messaging.system = "rabbitmq",
                messaging.destination.name = "orders",
                messaging.message.id = "m-1",
                messaging.message.body.size = 12_usize,
                longshore.job.name = "resize",
                longshore.job.attempt = 2_u32,
            );
            let _entered = span.enter();
            tracing::info!(card = "visa", "charged {}", 42);
            span.record("otel.status_description", "boom");
            tracing::warn!("after a record");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains(
                "process{messaging.destination.name=\"orders\" messaging.message.id=\"m-1\" \
                 longshore.job.name=\"resize\" longshore.job.attempt=2}"
            ),
            "{text}"
        );
        assert!(lines[0].ends_with("charged 42 card=\"visa\""), "{text}");
        assert!(!text.contains("otel."), "{text}");
        assert!(!text.contains("messaging.system"), "{text}");
        assert!(
            !text.contains("  "),
            "no gap where a field was left out: {text}"
        );
        assert!(lines[1].contains("longshore.job.attempt=2}"), "{text}");
    }
}
