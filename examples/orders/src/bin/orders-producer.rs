//! The example producer: a `checkout` span (standing in for the web request that takes an
//! order) enqueues `ORDERS` orders; each enqueue is a `send` span whose context travels in
//! the message headers, so Jaeger shows checkout → send → process → the job's own spans.

use longshore::{Producer, QueueOptions};
use longshore_example_orders::{FulfilOrder, broker_url, number, queue, setting, statuses};
use tracing::Instrument;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = longshore::otel::init()?;
    let broker = longshore::connect(broker_url()).await?;
    let queue = queue();
    broker
        .declare(&queue.as_str().into(), &QueueOptions::default())
        .await?;
    let mut producer = Producer::new(broker, queue.as_str()).with_telemetry(telemetry.hooks());
    let statuses = statuses().await?;
    if let Some(statuses) = &statuses {
        producer = producer.with_status(statuses.clone());
    }
    let status_api = setting("LONGSHORE_STATUS_PUBLIC", "http://localhost:8081");
    let orders = number("ORDERS", 10)?;
    for order in 1..=orders {
        let job = FulfilOrder {
            order,
            items: vec!["anchor".into(); (order % 3 + 1) as usize],
            cents: 1_250 * u64::from(order),
        };
        let id = producer
            .enqueue(&job)
            .instrument(tracing::info_span!("checkout", order))
            .await?;
        tracing::info!(order, %id, %queue, "order enqueued");
        if statuses.is_some() {
            println!("order {order}: job {id}; watch it: curl -N {status_api}/jobs/{id}/events");
        }
    }
    telemetry.shutdown();
    Ok(())
}
