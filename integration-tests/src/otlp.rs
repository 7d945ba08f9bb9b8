//! A real OTLP/HTTP receiver for tests: an HTTP server on 127.0.0.1 that decodes the
//! protobuf exports of `/v1/traces` and `/v1/metrics` with the `opentelemetry-proto` types
//! and keeps what it got. It runs on its own thread, so it outlives any one test's runtime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message as _;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// OTLP span kinds, as the protobuf numbers them.
pub mod kind {
    /// `SPAN_KIND_INTERNAL`.
    pub const INTERNAL: i32 = 1;
    /// `SPAN_KIND_PRODUCER`.
    pub const PRODUCER: i32 = 4;
    /// `SPAN_KIND_CONSUMER`.
    pub const CONSUMER: i32 = 5;
}

/// OTLP status code `STATUS_CODE_ERROR`.
pub const STATUS_ERROR: i32 = 2;

/// One exported span, flattened.
#[derive(Clone, Debug)]
pub struct Span {
    /// Trace id bytes.
    pub trace_id: Vec<u8>,
    /// Span id bytes.
    pub span_id: Vec<u8>,
    /// Parent span id bytes (empty for a root).
    pub parent_span_id: Vec<u8>,
    /// The span name.
    pub name: String,
    /// The span kind (see [`kind`]).
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: HashMap<String, String>,
    /// Status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    /// Status message.
    pub status_message: String,
    /// Event names, in order.
    pub events: Vec<String>,
    /// The `service.name` of the resource that exported it.
    pub service: String,
}

impl Span {
    /// An attribute's value as text.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One data point of a sum or gauge, or the count of a histogram point.
#[derive(Clone, Debug)]
pub struct Point {
    /// The metric name.
    pub metric: String,
    /// The point's attributes, values as text.
    pub attributes: HashMap<String, String>,
    /// The value (the count, for a histogram).
    pub value: f64,
    /// When the point was taken, in nanoseconds since the Unix epoch.
    pub time: u64,
}

#[derive(Default)]
struct Received {
    /// Keep only counts (benchmarks): the exporter's work is the same, the receiver's
    /// nearly nothing.
    discard: bool,
    spans: Vec<Span>,
    points: Vec<Point>,
    requests: usize,
    bytes: usize,
}

/// The running receiver; export to [`OtlpReceiver::endpoint`].
#[derive(Clone)]
pub struct OtlpReceiver {
    address: SocketAddr,
    received: Arc<Mutex<Received>>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free port of 127.0.0.1.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts a receiver that answers every export but only counts requests and bytes
    /// (for benchmarks, where decoding would compete with the worker for the CPU).
    pub fn start_discarding() -> Self {
        Self::start_with(true)
    }

    fn start_with(discard: bool) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.set_nonblocking(true).expect("non-blocking");
        let address = listener.local_addr().expect("local address");
        let received = Arc::new(Mutex::new(Received {
            discard,
            ..Received::default()
        }));
        let store = Arc::clone(&received);
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                runtime.block_on(serve(listener, store));
            })
            .expect("receiver thread");
        Self { address, received }
    }

    /// The base URL to give `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.lock().spans.clone()
    }

    /// Every metric point received so far.
    pub fn points(&self) -> Vec<Point> {
        self.lock().points.clone()
    }

    /// How many export requests arrived.
    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    /// How many body bytes arrived.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn serve(listener: std::net::TcpListener, store: Arc<Mutex<Received>>) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            // Keep-alive: the exporter's client reuses its connection.
            while let Some((path, body)) = read_request(&mut read).await {
                let status = match decode(&path, &body, &store) {
                    Ok(()) => "200 OK",
                    Err(error) => {
                        eprintln!("otlp receiver: {path}: {error}");
                        "400 Bad Request"
                    }
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
                );
                if write.write_all(response.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// Reads one request: its path and body. `None` at the end of the connection.
async fn read_request<R: AsyncBufReadExt + AsyncReadExt + Unpin>(
    read: &mut R,
) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    if read.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut length = 0;
    loop {
        line.clear();
        read.read_line(&mut line).await.ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    read.read_exact(&mut body).await.ok()?;
    Some((path, body))
}

fn decode(path: &str, body: &[u8], store: &Mutex<Received>) -> Result<(), String> {
    let mut received = store.lock().unwrap_or_else(PoisonError::into_inner);
    received.requests += 1;
    received.bytes += body.len();
    if received.discard {
        return Ok(());
    }
    match path {
        "/v1/traces" => {
            let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
            for resource_spans in request.resource_spans {
                let service = resource_spans
                    .resource
                    .as_ref()
                    .and_then(|resource| {
                        text_attributes(&resource.attributes).remove("service.name")
                    })
                    .unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        let status = span.status.clone().unwrap_or_default();
                        received.spans.push(Span {
                            trace_id: span.trace_id,
                            span_id: span.span_id,
                            parent_span_id: span.parent_span_id,
                            name: span.name,
                            kind: span.kind,
                            attributes: text_attributes(&span.attributes),
                            status_code: status.code,
                            status_message: status.message,
                            events: span.events.into_iter().map(|event| event.name).collect(),
                            service: service.clone(),
                        });
                    }
                }
            }
            Ok(())
        }
        "/v1/metrics" => {
            let request = ExportMetricsServiceRequest::decode(body).map_err(|e| e.to_string())?;
            for resource_metrics in request.resource_metrics {
                for scope in resource_metrics.scope_metrics {
                    for metric in scope.metrics {
                        let name = metric.name.clone();
                        let points = match metric.data {
                            Some(metric::Data::Sum(sum)) => number_points(&name, sum.data_points),
                            Some(metric::Data::Gauge(gauge)) => {
                                number_points(&name, gauge.data_points)
                            }
                            Some(metric::Data::Histogram(histogram)) => histogram
                                .data_points
                                .into_iter()
                                .map(|point| Point {
                                    metric: name.clone(),
                                    attributes: text_attributes(&point.attributes),
                                    value: point.count as f64,
                                    time: point.time_unix_nano,
                                })
                                .collect(),
                            _ => Vec::new(),
                        };
                        received.points.extend(points);
                    }
                }
            }
            Ok(())
        }
        other => Err(format!("unexpected path {other}")),
    }
}

fn number_points(
    name: &str,
    points: Vec<opentelemetry_proto::tonic::metrics::v1::NumberDataPoint>,
) -> Vec<Point> {
    points
        .into_iter()
        .map(|point| Point {
            metric: name.to_owned(),
            attributes: text_attributes(&point.attributes),
            value: match point.value {
                Some(number_data_point::Value::AsInt(n)) => n as f64,
                Some(number_data_point::Value::AsDouble(x)) => x,
                None => f64::NAN,
            },
            time: point.time_unix_nano,
        })
        .collect()
}

fn text_attributes(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(x)) => x.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
