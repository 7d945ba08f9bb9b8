//! Connecting to RabbitMQ speaks: a closed port or an unknown host fails within the connect
//! timeout with an error naming the host, the port and the cause, and every failed try is
//! logged at WARN with the URL, its password hidden.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longshore::amqp::AmqpBroker;

/// Captures the `tracing` output of this test binary.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Captured {
    static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            tracing_subscriber::fmt()
                .with_env_filter("warn")
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .init();
            captured
        })
        .clone()
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

#[tokio::test]
async fn a_closed_port_fails_within_the_timeout_naming_host_port_and_cause() {
    let logs = capture_logs();
    let port = closed_port();
    let url = format!("amqp://guest:hunter2@127.0.0.1:{port}/%2f");
    let started = Instant::now();
    let error = AmqpBroker::builder(url.as_str())
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect_err("nothing listens there");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "bounded: {took:?}");
    let text = error.to_string();
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("within 2s"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("refused"), "the cause: {text}");
    assert!(!text.contains("hunter2"), "{text}");
    let logged = logs.text();
    assert!(
        logged.contains("cannot connect to RabbitMQ yet")
            && logged.contains(&format!("127.0.0.1:{port}")),
        "each try is logged at WARN: {logged}"
    );
    assert!(!logged.contains("hunter2"), "{logged}");
}

#[tokio::test]
async fn an_unknown_host_fails_within_the_timeout_naming_it() {
    let started = Instant::now();
    let error = AmqpBroker::builder("amqp://guest:guest@no-such-host.invalid:5672/%2f")
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect_err("no such host");
    assert!(started.elapsed() < Duration::from_secs(8), "bounded");
    let text = error.to_string();
    assert!(text.contains("no-such-host.invalid:5672"), "{text}");
}
