//! `longshore::connect` speaks when the URL or the endpoint is wrong: a mistyped URL never
//! shows its password, an unknown scheme lists the schemes this build takes, and SQS at an
//! endpoint nothing answers fails at connect (not at the first declare), naming the
//! endpoint and the cause. RabbitMQ's side is `amqp_connect.rs`.

use std::time::{Duration, Instant};

use longshore::sqs::SqsBroker;

#[tokio::test]
async fn a_mistyped_url_never_shows_its_password() {
    for url in [
        "amqps//guest:hunter2@rabbit.internal/prod",
        "amqp:/guest:hunter2@rabbit.internal",
        "guest:hunter2@rabbit.internal:5672",
        "amqp://guest:hunter2@rabbit-a,amqp://guest:hunter2@rabbit-b",
    ] {
        let Err(error) = longshore::connect(url).await else {
            panic!("`{url}` is not a URL longshore connects to");
        };
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains("hunter2"), "{url}: {shown}");
        }
    }
}

#[tokio::test]
async fn an_unknown_scheme_lists_the_schemes_this_build_takes() {
    let error = match longshore::connect("redis://127.0.0.1:6379").await {
        Ok(_) => panic!("redis:// is not a broker"),
        Err(error) => error.to_string(),
    };
    for scheme in ["memory://", "amqp://", "amqps://", "sqs://"] {
        assert!(error.contains(scheme), "names {scheme}: {error}");
    }
    assert!(
        !error.contains("enable the"),
        "both features are on here; nothing to enable: {error}"
    );
    assert!(
        error.contains("redis://"),
        "names what it was given: {error}"
    );
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

#[tokio::test]
async fn sqs_at_an_unreachable_endpoint_fails_at_connect_naming_it_and_the_cause() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let started = Instant::now();
    let error = SqsBroker::builder("sqs://")
        .endpoint_url(&endpoint)
        .region("eu-west-1")
        .static_credentials("test", "s3cret-key")
        .connect()
        .await
        .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "bounded: {:?}",
        started.elapsed()
    );
    let text = error.to_string();
    assert!(text.contains(&endpoint), "names the endpoint: {text}");
    assert!(text.contains("eu-west-1"), "names the region: {text}");
    assert!(
        text.to_lowercase().contains("refused"),
        "names the cause, not only `dispatch failure`: {text}"
    );
    assert!(!format!("{text}{error:?}").contains("s3cret-key"), "{text}");
}

#[tokio::test]
async fn sqs_at_an_unknown_host_fails_at_connect_naming_it() {
    let endpoint = "http://no-such-host.invalid:4566";
    let error = SqsBroker::builder("sqs://")
        .endpoint_url(endpoint)
        .region("us-east-1")
        .static_credentials("test", "test")
        .connect()
        .await
        .expect_err("no such host");
    let text = error.to_string();
    assert!(text.contains(endpoint), "{text}");
    assert!(
        text.contains("no-such-host.invalid") && text.contains("cannot reach SQS"),
        "{text}"
    );
}
