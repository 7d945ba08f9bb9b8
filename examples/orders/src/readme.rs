//! The README's broker, telemetry, status and dashboard snippets, compiled with the
//! features this package enables (a test checks that the README quotes them from here).
//! They are not run here: the integration tests cover what they do against real brokers.

use longshore::amqp::{AmqpBroker, QueueType};
use longshore::sqs::SqsBroker;
use longshore::{JobError, Worker};

use crate::FulfilOrder;

async fn fulfil(_order: FulfilOrder) -> Result<(), JobError> {
    Ok(())
}

/// RabbitMQ by URL, and with settings.
#[allow(unused_variables, reason = "the snippet shows both ways")]
pub async fn rabbitmq(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    // --- README: RabbitMQ ---
    let broker = longshore::connect("amqp://app:secret@rabbit:5672/%2f").await?; // password never logged
    // or, with settings:
    let broker = AmqpBroker::builder(url)
        .queue_type(QueueType::Quorum) // default: classic
        .dead_letter_exchange("billing", "billing-dlx", None) // a queue someone else declared
        .connect_timeout(std::time::Duration::from_secs(10)) // default: 30 s, then a clear error
        .connect()
        .await?;
    let worker = Worker::builder(broker, "billing").handler(fulfil).build()?;
    // --- end ---
    drop(worker);
    Ok(())
}

/// SQS by URL, and with settings.
pub async fn sqs() -> Result<(), Box<dyn std::error::Error>> {
    // --- README: SQS ---
    // Region, credentials and endpoint from the standard AWS chain (env, profiles, AWS_ENDPOINT_URL):
    let broker = longshore::connect("sqs://").await?;
    let worker = Worker::builder(broker, "billing") // a name, sqs://billing, or
        .handler(fulfil) // https://sqs.eu-west-1.amazonaws.com/123456789012/billing
        .build()?;
    // or, with settings:
    let broker = SqsBroker::builder("sqs://")
        .max_receive_count(10) // the redrive policy of queues longshore declares
        .endpoint_url("http://127.0.0.1:4566") // LocalStack, instead of AWS_ENDPOINT_URL
        .connect()
        .await?;
    // --- end ---
    drop((worker, broker));
    Ok(())
}

/// A worker and a producer with OpenTelemetry.
pub async fn telemetry(
    broker: std::sync::Arc<dyn longshore::Broker>,
) -> Result<(), Box<dyn std::error::Error>> {
    // --- README: Telemetry ---
    let telemetry = longshore::otel::init()?; // logs, traces, metrics from OTEL_* env
    let producer =
        longshore::Producer::new(broker.clone(), "orders").with_telemetry(telemetry.hooks()); // its `send` spans become the jobs' parents
    let metrics = longshore::http::Metrics::new(); // Prometheus, per job type
    let worker = Worker::builder(broker, "orders")
        .telemetry(telemetry.hooks()) // continue the producer's trace, count jobs
        .telemetry(metrics.hooks())
        .handler(fulfil)
        .build()?;
    // /healthz, /readyz and /metrics for the container platform and Prometheus
    let probes = longshore::http::probes(vec![worker.health()], Some(metrics));
    let _probes = longshore::http::serve("0.0.0.0:8080", probes).await?;
    worker.run().await?;
    telemetry.shutdown(); // flush what is buffered
    // --- end ---
    drop(producer);
    Ok(())
}

/// Job status for a frontend: tracked on enqueue, moved by the worker, served over HTTP.
pub async fn status_for_frontends(
    broker: std::sync::Arc<dyn longshore::Broker>,
) -> Result<(), Box<dyn std::error::Error>> {
    // --- README: Job status ---
    let statuses = longshore::status_store::connect("redis://127.0.0.1:6379/0").await?;

    // In the web app: enqueue, answer with the id at once, let the page follow the job.
    let producer =
        longshore::Producer::new(broker.clone(), "reports").with_status(statuses.clone());
    let id = producer
        .enqueue(&FulfilOrder {
            order: 7,
            items: vec![],
            cents: 990,
        })
        .await?;
    let api = axum::Router::new().nest("/api", longshore::http::router(statuses.clone()));
    // GET /api/jobs/{id}, GET /api/jobs/{id}/events (SSE), POST /api/jobs/{id}/cancel

    // In the worker: the same statuses; the handler reports progress and a small result.
    let worker = Worker::builder(broker, "reports")
        .status(statuses)
        .handler(
            |order: FulfilOrder, ctx: longshore::JobContext| async move {
                ctx.progress(0.4, "resized 4 of 10");
                ctx.set_result(&serde_json::json!({ "charged": order.cents }))?;
                Ok::<_, JobError>(())
            },
        )
        .build()?;
    // --- end ---
    drop((id, api, worker));
    Ok(())
}

/// The dashboard on the worker's listener, beside the probes.
pub async fn dashboard(
    broker: std::sync::Arc<dyn longshore::Broker>,
    statuses: longshore::status::JobStatuses,
) -> Result<(), Box<dyn std::error::Error>> {
    // --- README: Dashboard ---
    let dashboard = longshore::http::Dashboard::new(broker.clone())
        .statuses(statuses.clone()) // job lookup
        .admin_token(std::env::var("LONGSHORE_ADMIN_TOKEN").unwrap_or_default());
    let worker = Worker::builder(broker, "orders")
        .telemetry(dashboard.failure_hooks()) // recent failures on the page
        .handler(fulfil)
        .build()?;
    let page = dashboard.workers(vec![worker.health()]).router();
    let probes = longshore::http::probes(vec![worker.health()], None);
    let _http = longshore::http::serve("0.0.0.0:8080", probes.merge(page)).await?;
    worker.run().await?;
    // --- end ---
    Ok(())
}
