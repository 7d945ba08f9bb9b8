//! `amqps://`: a RabbitMQ node of the test's own with a TLS listener whose certificate a
//! CA made by the test signed. Trusting that CA (`tls_ca_pem`), a job goes through; without
//! it, connecting fails with an error that names the certificate and what to do.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::conformance::await_worker;
use integration_tests::harness::{Behaviour, Harness, Probe, Recorder, Running, probe};
use integration_tests::rabbit_node::RabbitNode;
use longshore::amqp::AmqpBroker;
use longshore::{Broker, Producer, QueueName, QueueOptions, Worker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_the_servers_ca_runs_jobs_and_an_untrusted_certificate_is_a_clear_error() {
    let (node, tls) = RabbitNode::start_tls("tls");
    let url = format!("amqps://guest:guest@localhost:{}/%2f", tls.port);

    let untrusted = AmqpBroker::builder(url.as_str())
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .expect_err("the test's CA is not trusted by default");
    let text = untrusted.to_string();
    assert!(
        text.contains(&format!("localhost:{}", tls.port)),
        "names the node: {text}"
    );
    assert!(
        text.to_lowercase().contains("certificate") && text.contains("tls_ca_pem"),
        "names the certificate and what to do: {text}"
    );

    let broker = AmqpBroker::builder(url.as_str())
        .tls_ca_pem(tls.ca_pem.clone())
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect over TLS, trusting the test's CA");
    let broker: Arc<dyn Broker> = Arc::new(broker);
    let queue = QueueName::new("longshore-test-tls");
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare over TLS");
    Producer::new(Arc::clone(&broker), queue.clone())
        .enqueue(&Probe {
            key: 1,
            behaviour: Behaviour::Succeed,
        })
        .await
        .expect("enqueue over TLS");
    let recorder = Arc::new(Recorder::default());
    let worker = Running::start(
        Worker::builder(Arc::clone(&broker), queue.clone())
            .dependency_arc(Arc::clone(&recorder))
            .handler(probe),
    );
    let h = Harness {
        broker: Arc::clone(&broker),
        timing: integration_tests::harness::SQS_TIMING,
    };
    await_worker(&h, &worker, "the job over TLS", |s| s.succeeded == 1).await;
    worker.stop().await;
    assert_eq!(recorder.runs(1).len(), 1);
    drop(node);
}
