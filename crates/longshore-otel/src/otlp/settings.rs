//! Where and how spans are exported, from the standard OpenTelemetry variables: the OTLP
//! exporter's (`OTEL_EXPORTER_OTLP_[TRACES_]{ENDPOINT,HEADERS,TIMEOUT,COMPRESSION}`) and the
//! batch span processor's (`OTEL_BSP_*`), read as `opentelemetry-otlp` and
//! `opentelemetry_sdk` read them.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// The export settings of the span exporter.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The URL spans are posted to (`…/v1/traces`).
    pub(crate) endpoint: String,
    /// Headers sent with every export (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub(crate) headers: HeaderMap,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`, 10 s).
    pub(crate) timeout: Duration,
    /// How long spans wait before they are exported (`OTEL_BSP_SCHEDULE_DELAY`, 5 s).
    pub(crate) schedule_delay: Duration,
    /// Spans kept waiting at most; more are dropped (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048).
    pub(crate) max_queue: usize,
    /// Spans exported in one request at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, 512).
    pub(crate) max_batch: usize,
    /// How long a flush or shutdown waits for the export (`OTEL_BSP_EXPORT_TIMEOUT`, 30 s).
    pub(crate) flush_timeout: Duration,
}

impl Settings {
    /// Reads the variables; `base` (an OTLP/HTTP base URL given in code) takes the place of
    /// the endpoint variables.
    pub(crate) fn from_env(base: Option<&str>) -> Result<Self, String> {
        Self::from_lookup(base, |name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), with the variables `var` gives.
    pub(crate) fn from_lookup(
        base: Option<&str>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let set = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        let either = |name: &str| {
            set(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .or_else(|| set(&format!("OTEL_EXPORTER_OTLP_{name}")))
        };
        let endpoint = match base {
            Some(base) => format!("{}/v1/traces", base.trim_end_matches('/')),
            None => match set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
                Some(url) => url.trim().to_owned(),
                None => format!(
                    "{}/v1/traces",
                    set("OTEL_EXPORTER_OTLP_ENDPOINT")
                        .as_deref()
                        .unwrap_or("http://localhost:4318")
                        .trim()
                        .trim_end_matches('/')
                ),
            },
        };
        let url = reqwest::Url::parse(&endpoint)
            .map_err(|error| format!("the endpoint `{endpoint}` is not a URL: {error}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "the endpoint `{endpoint}` is not http://: spans are exported over plain \
                 OTLP/HTTP (put a collector beside the worker for TLS)"
            ));
        }
        if let Some(compression) = either("COMPRESSION")
            && !compression.trim().eq_ignore_ascii_case("none")
        {
            return Err(format!(
                "OTLP compression `{}` is not supported: unset OTEL_EXPORTER_OTLP_COMPRESSION",
                compression.trim()
            ));
        }
        let millis = |name: &str| -> Result<Option<Duration>, String> {
            match set(name) {
                None => Ok(None),
                Some(value) => value
                    .trim()
                    .parse()
                    .map(|ms| Some(Duration::from_millis(ms)))
                    .map_err(|_| format!("{name}=`{value}` is not a number of milliseconds")),
            }
        };
        let count = |name: &str, default: usize| -> Result<usize, String> {
            match set(name) {
                None => Ok(default),
                Some(value) => match value.trim().parse() {
                    Ok(0) | Err(_) => Err(format!("{name}=`{value}` is not a positive number")),
                    Ok(n) => Ok(n),
                },
            }
        };
        let timeout = match millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")? {
            Some(timeout) => timeout,
            None => millis("OTEL_EXPORTER_OTLP_TIMEOUT")?.unwrap_or(Duration::from_secs(10)),
        };
        let max_queue = count("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?;
        Ok(Self {
            endpoint,
            headers: either("HEADERS").map_or_else(HeaderMap::new, |text| headers(&text)),
            timeout,
            schedule_delay: millis("OTEL_BSP_SCHEDULE_DELAY")?.unwrap_or(Duration::from_secs(5)),
            max_queue,
            max_batch: count("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.min(max_queue),
            flush_timeout: millis("OTEL_BSP_EXPORT_TIMEOUT")?.unwrap_or(Duration::from_secs(30)),
        })
    }
}

/// `key=value` pairs separated by commas, values percent-encoded; pairs that are not
/// valid headers are left out (as `opentelemetry-otlp` does).
fn headers(text: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for pair in text.split(',').map(str::trim) {
        let Some((name, value)) = pair.split_once('=') else {
            continue;
        };
        let value = percent_decoded(value.trim());
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(&value),
        ) && !value.is_empty()
        {
            headers.insert(name, value);
        }
    }
    headers
}

/// `%XX` sequences decoded; the text as it is where they do not decode to UTF-8.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%'
            && let Some(byte) = text
                .get(at + 1..at + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::Settings;

    fn settings(base: Option<&str>, vars: &[(&str, &str)]) -> Result<Settings, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(base, |name| vars.get(name).cloned())
    }

    #[test]
    fn the_endpoint_comes_from_code_then_the_traces_variable_then_the_base_variable() {
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")];
        let traces = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://jaeger:4318/custom",
            ),
        ];
        assert_eq!(
            settings(None, &[]).unwrap().endpoint,
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            settings(None, &base).unwrap().endpoint,
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            settings(None, &traces).unwrap().endpoint,
            "http://jaeger:4318/custom"
        );
        assert_eq!(
            settings(Some("http://127.0.0.1:9/"), &traces)
                .unwrap()
                .endpoint,
            "http://127.0.0.1:9/v1/traces"
        );
    }

    #[test]
    fn batching_and_timeouts_follow_the_variables() {
        let s = settings(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("OTEL_BSP_MAX_QUEUE_SIZE", "300"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000"),
            ],
        )
        .unwrap();
        assert_eq!(s.timeout, Duration::from_millis(2500));
        assert_eq!(s.schedule_delay, Duration::from_millis(100));
        assert_eq!((s.max_queue, s.max_batch), (300, 300));
        let s = settings(None, &[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "7")]).unwrap();
        assert_eq!(s.timeout, Duration::from_millis(7));
        let s = settings(None, &[]).unwrap();
        assert_eq!(
            (s.timeout, s.schedule_delay, s.max_queue, s.max_batch),
            (Duration::from_secs(10), Duration::from_secs(5), 2048, 512)
        );
    }

    #[test]
    fn headers_are_read_and_percent_decoded() {
        let s = settings(
            None,
            &[(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "api-key=secret%20one, x-tenant = blue ,bad header=1,empty=",
            )],
        )
        .unwrap();
        assert_eq!(s.headers["api-key"], "secret one");
        assert_eq!(s.headers["x-tenant"], "blue");
        assert_eq!(s.headers.len(), 2);
        let s = settings(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
            ],
        )
        .unwrap();
        assert!(s.headers.get("a").is_none());
        assert_eq!(s.headers["b"], "2");
    }

    #[test]
    fn what_cannot_be_honoured_is_a_clear_error() {
        let cases = [
            (
                vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")],
                "compression `gzip`",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")],
                "is not http://",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector")],
                "is not a URL",
            ),
            (
                vec![("OTEL_BSP_SCHEDULE_DELAY", "soon")],
                "OTEL_BSP_SCHEDULE_DELAY=`soon`",
            ),
            (
                vec![("OTEL_BSP_MAX_QUEUE_SIZE", "0")],
                "not a positive number",
            ),
        ];
        for (vars, expected) in cases {
            let error = settings(None, &vars).unwrap_err();
            assert!(error.contains(expected), "{vars:?}: {error}");
        }
        assert!(settings(None, &[("OTEL_EXPORTER_OTLP_COMPRESSION", "none")]).is_ok());
    }
}
