use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks, SpanProcessor};
use prost::Message;

use super::{Batch, EncodedResource, OtlpSpans, Settings, encode};

fn at(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn context(trace: u128, span: u64, remote: bool, state: &str) -> SpanContext {
    SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        remote,
        state.parse::<TraceState>().expect("a trace state"),
    )
}

/// Spans with every kind of field a span can have, and the scopes they come from.
fn spans() -> Vec<SpanData> {
    let plain = InstrumentationScope::builder("longshore").build();
    let versioned = InstrumentationScope::builder("other")
        .with_version("1.2.3")
        .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
        .with_attributes([KeyValue::new("scope.attr", true)])
        .build();
    let attributes = vec![
        KeyValue::new("a.string", "text"),
        KeyValue::new("an.empty.string", ""),
        KeyValue::new("a.long.string", "x".repeat(300)),
        KeyValue::new("an.int", -42_i64),
        KeyValue::new("a.zero", 0_i64),
        KeyValue::new("a.float", 0.25_f64),
        KeyValue::new("a.bool", false),
        KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
        KeyValue::new("ints", Value::Array(Array::I64(vec![1, -1, i64::MAX]))),
        KeyValue::new("floats", Value::Array(Array::F64(vec![1.5]))),
        KeyValue::new(
            "strings",
            Value::Array(Array::String(vec![StringValue::from("a"), "".into()])),
        ),
    ];
    let mut events = SpanEvents::default();
    events.events = vec![
        Event::new("retry", at(1_500), vec![KeyValue::new("attempt", 2_i64)], 1),
        Event::new("bare", at(1_600), Vec::new(), 0),
    ];
    events.dropped_count = 3;
    let mut links = SpanLinks::default();
    links.links = vec![Link::new(
        context(7, 8, true, "vendor=value"),
        vec![KeyValue::new("link.attr", "l")],
        2,
    )];
    links.dropped_count = 1;
    let span = |name: &'static str,
                parent: u64,
                remote: bool,
                kind: SpanKind,
                status: Status,
                scope: &InstrumentationScope| SpanData {
        span_context: context(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10, 0x11, false, ""),
        parent_span_id: SpanId::from(parent),
        parent_span_is_remote: remote,
        span_kind: kind,
        name: Cow::Borrowed(name),
        start_time: at(1_000),
        end_time: at(2_000),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status,
        instrumentation_scope: scope.clone(),
    };
    let mut full = span(
        "process jobs",
        0x22,
        true,
        SpanKind::Consumer,
        Status::error("it failed"),
        &plain,
    );
    full.span_context = context(9, 10, false, "k1=v1,k2=v2");
    full.attributes = attributes;
    full.dropped_attributes_count = 4;
    full.events = events;
    full.links = links;
    vec![
        full,
        span("root", 0, false, SpanKind::Internal, Status::Unset, &plain),
        span(
            "ok",
            0x33,
            false,
            SpanKind::Producer,
            Status::Ok,
            &versioned,
        ),
        span(
            "server",
            0x44,
            false,
            SpanKind::Server,
            Status::Unset,
            &plain,
        ),
        span(
            "client",
            0x55,
            false,
            SpanKind::Client,
            Status::Unset,
            &versioned,
        ),
        span("", 0, false, SpanKind::Internal, Status::Unset, &plain),
    ]
}

fn resource() -> Resource {
    Resource::builder_empty()
        .with_schema_url(
            [
                KeyValue::new("service.name", "longshore-test"),
                KeyValue::new("host.cores", 2_i64),
            ],
            "https://opentelemetry.io/schemas/1.26.0",
        )
        .build()
}

fn encoded(resource: &Resource) -> EncodedResource {
    let mut encoded = EncodedResource::default();
    encode::resource(&mut encoded.body, resource);
    encode::schema_url(&mut encoded.schema_url, resource.schema_url());
    encoded
}

/// What `opentelemetry-proto` makes of the same spans (what the OTLP exporter sends).
fn expected(spans: Vec<SpanData>, resource: &Resource) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: group_spans_by_resource_and_scope(
            spans,
            &ResourceAttributesWithSchema::from(resource),
        ),
    }
}

#[test]
fn spans_are_written_as_the_otlp_exporter_writes_them() {
    let resource = resource();
    let mut batch = Batch::default();
    for span in spans() {
        let mut bytes = Vec::new();
        encode::span(&mut bytes, &span);
        batch.push(&span.instrumentation_scope, &bytes);
    }
    let request = ExportTraceServiceRequest::decode(batch.request(&encoded(&resource)).as_slice())
        .expect("a request that decodes");
    assert_eq!(request, expected(spans(), &resource));
    assert_eq!(request.resource_spans[0].scope_spans.len(), 2);
}

#[test]
fn a_resource_without_attributes_or_schema_is_written_too() {
    let resource = Resource::builder_empty().build();
    let span = spans().remove(1);
    let mut batch = Batch::default();
    let mut bytes = Vec::new();
    encode::span(&mut bytes, &span);
    batch.push(&span.instrumentation_scope, &bytes);
    let request =
        ExportTraceServiceRequest::decode(batch.request(&encoded(&resource)).as_slice()).unwrap();
    assert_eq!(request, expected(vec![span], &resource));
}

/// A collector on a local port that answers `status` and keeps each request's spans and
/// headers.
struct Collector {
    url: String,
    requests: Arc<Kept>,
    /// While `true`, requests get no answer (the exporter waits).
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl Collector {
    fn start(status: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::default();
        let held: Arc<(Mutex<bool>, Condvar)> = Arc::default();
        let (kept, hold) = (Arc::clone(&requests), Arc::clone(&held));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (kept, hold) = (Arc::clone(&kept), Arc::clone(&hold));
                std::thread::spawn(move || serve(stream, status, &kept, &hold));
            }
        });
        Self {
            url,
            requests,
            held,
        }
    }

    fn hold(&self, held: bool) {
        *self.held.0.lock().unwrap() = held;
        self.held.1.notify_all();
    }

    fn requests(&self) -> Vec<(ExportTraceServiceRequest, Vec<String>)> {
        self.requests.lock().unwrap().clone()
    }

    fn span_names(&self) -> Vec<String> {
        self.requests()
            .iter()
            .flat_map(|(request, _)| &request.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect()
    }
}

type Kept = Mutex<Vec<(ExportTraceServiceRequest, Vec<String>)>>;

/// Answers HTTP/1.1 requests on one connection until it closes.
fn serve(stream: std::net::TcpStream, status: &str, kept: &Kept, hold: &(Mutex<bool>, Condvar)) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end().to_owned();
            if line.is_empty() {
                break;
            }
            headers.push(line.to_ascii_lowercase());
        }
        let length: usize = headers
            .iter()
            .find_map(|h| h.strip_prefix("content-length:"))
            .map_or(0, |n| n.trim().parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("protobuf");
        kept.lock().unwrap().push((request, headers));
        drop(
            hold.1
                .wait_while(hold.0.lock().unwrap(), |held| *held)
                .unwrap(),
        );
        write!(writer, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").unwrap();
    }
}

fn settings(collector: &Collector, max_queue: usize, max_batch: usize) -> Settings {
    let mut settings = Settings::from_lookup(Some(&collector.url), |name| {
        (name == "OTEL_EXPORTER_OTLP_HEADERS").then(|| "x-api-key=k%201".to_owned())
    })
    .unwrap();
    settings.max_queue = max_queue;
    settings.max_batch = max_batch;
    settings.schedule_delay = Duration::from_secs(60);
    settings
}

fn named(name: &str) -> SpanData {
    let mut span = spans().remove(1);
    span.name = Cow::Owned(name.to_owned());
    span
}

#[test]
fn full_batches_are_posted_at_once_and_the_rest_on_flush() {
    let collector = Collector::start("200 OK");
    let mut processor = OtlpSpans::start(settings(&collector, 100, 4)).unwrap();
    // One resource: its attributes are a hash map, iterated in an order of its own.
    let resource = resource();
    processor.set_resource(&resource);
    for n in 0..10 {
        processor.on_end(named(&format!("span {n}")));
    }
    // The first two batches of four went without a flush (the schedule delay is a minute).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while collector.requests().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "full batches were not posted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    processor.force_flush().expect("the flush exports");
    let requests = collector.requests();
    let sizes: Vec<usize> = requests
        .iter()
        .map(|(r, _)| r.resource_spans[0].scope_spans[0].spans.len())
        .collect();
    assert_eq!(sizes, [4, 4, 2]);
    let names: Vec<String> = (0..10).map(|n| format!("span {n}")).collect();
    assert_eq!(collector.span_names(), names);
    let (first, headers) = &requests[0];
    assert!(
        headers.contains(&"x-api-key: k 1".to_owned()),
        "{headers:?}"
    );
    assert!(headers.contains(&"content-type: application/x-protobuf".to_owned()));
    assert_eq!(
        first.resource_spans[0].resource,
        expected(vec![named("x")], &resource).resource_spans[0].resource
    );
    processor.shutdown().expect("shuts down");
    assert!(
        processor.shutdown().is_err(),
        "a second shutdown is refused"
    );
    processor.on_end(named("after shutdown"));
    assert_eq!(collector.span_names().len(), 10);
}

#[test]
fn spans_beyond_the_queue_are_dropped_not_waited_for() {
    let collector = Collector::start("200 OK");
    collector.hold(true);
    let processor = OtlpSpans::start(settings(&collector, 5, 5)).unwrap();
    // While the collector does not answer, one batch of five is being posted at most and
    // five more spans wait: the rest are dropped, and the spans' ends did not wait.
    for n in 0..50 {
        processor.on_end(named(&format!("span {n}")));
    }
    collector.hold(false);
    processor.shutdown().expect("shuts down");
    let exported = collector.span_names().len();
    assert!(
        (5..=10).contains(&exported),
        "{exported} spans were exported"
    );
}

#[test]
fn a_collector_that_refuses_fails_the_flush_with_its_answer() {
    let collector = Collector::start("503 Service Unavailable");
    let processor = OtlpSpans::start(settings(&collector, 100, 10)).unwrap();
    processor.on_end(named("refused"));
    let error = processor.force_flush().unwrap_err().to_string();
    assert!(error.contains("503"), "{error}");
    // Nothing is left waiting: the next flush has nothing to send.
    processor.force_flush().expect("nothing to export");
    processor.shutdown().unwrap();
}

#[test]
fn an_unreachable_collector_fails_the_flush_and_the_processor_goes_on() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings =
        Settings::from_lookup(Some(&format!("http://127.0.0.1:{port}")), |_| None).unwrap();
    settings.timeout = Duration::from_secs(2);
    let processor = OtlpSpans::start(settings).unwrap();
    processor.on_end(named("lost"));
    let error = processor.force_flush().unwrap_err().to_string();
    assert!(error.contains("cannot post spans"), "{error}");
    processor.on_end(named("also lost"));
    assert!(processor.force_flush().is_err());
    processor.shutdown().expect("nothing is left to export");
}
