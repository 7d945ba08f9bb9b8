//! RabbitMQ outages on a node of the test's own: after `stop_app`/`start_app`, a full node
//! stop held down, and connections killed with `rabbitmqctl close_all_connections`, each
//! worker has exactly one connection and one consumer, every job runs without stopping the
//! workers, and jobs run twice at most as many as were running at the fault.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::harness::{Behaviour, Probe, Recorder, Running, eventually, probe};
use integration_tests::process::WorkerProcess;
use integration_tests::rabbit_node::RabbitNode;
use longshore::amqp::AmqpBroker;
use longshore::{Broker, Producer, QueueName, QueueOptions, RetryPolicy, Worker};

const CONCURRENCY: usize = 8;
const PREFETCH: u16 = 16;

async fn broker(node: &RabbitNode) -> AmqpBroker {
    AmqpBroker::builder(node.url())
        .connect_timeout(Duration::from_secs(20))
        .connect()
        .await
        .expect("connect to the test's node")
}

fn worker(broker: AmqpBroker, queue: &QueueName, recorder: &Arc<Recorder>) -> Running {
    Running::start(
        Worker::builder(broker, queue.clone())
            .dependency_arc(Arc::clone(recorder))
            .handler(probe)
            .concurrency(CONCURRENCY)
            .prefetch(PREFETCH)
            .retry_policy(RetryPolicy::exponential(
                Duration::from_millis(20),
                Duration::from_millis(100),
                5,
            )),
    )
}

/// Waits until the node lists `connections` connections and `consumers` consumers of the
/// queue, and holds nothing unacked or ready: nothing is stuck.
async fn settled(node: &RabbitNode, queue: &QueueName, connections: usize, consumers: usize) {
    eventually(
        Duration::from_secs(90),
        &format!("{connections} connections, {consumers} consumers, an empty queue"),
        || async {
            let seen = (
                node.connections(),
                node.consumers(queue.as_str()),
                node.queue_counts(queue.as_str()),
            );
            if seen == (connections, consumers, (0, 0)) {
                Ok(())
            } else {
                Err(format!(
                    "connections {}, consumers {}, (ready, unacked) {:?}",
                    seen.0, seen.1, seen.2
                ))
            }
        },
    )
    .await;
}

/// Enqueues `count` jobs of 60 ms from `first` (at least 7 s of work over both workers), and
/// waits until a few run.
async fn wave(producer: &Producer, recorder: &Recorder, first: u32, count: u32) {
    let before = recorder.total_runs();
    // Pipelined, so the whole wave is queued long before its 7 s of work is done: enqueued
    // one by one (a confirm round trip each) it could take longer than the work.
    let probes: Vec<Probe> = (first..first + count)
        .map(|key| Probe {
            key,
            behaviour: Behaviour::Sleep(60),
        })
        .collect();
    for answer in producer.enqueue_many(&probes).await {
        answer.expect("enqueue");
    }
    eventually(Duration::from_secs(30), "the wave to start", || async {
        if recorder.total_runs() > before + CONCURRENCY {
            Ok(())
        } else {
            Err(format!("{} runs", recorder.total_runs()))
        }
    })
    .await;
}

/// Every key below `upto` ran; returns how many keys ran more than once.
async fn all_ran(recorder: &Recorder, upto: u32) -> usize {
    eventually(Duration::from_secs(120), "every job to run", || async {
        let done: HashSet<u32> = (0..upto)
            .filter(|k| !recorder.runs(*k).is_empty())
            .collect();
        if done.len() == upto as usize {
            Ok(())
        } else {
            Err(format!("{} of {upto} ran", done.len()))
        }
    })
    .await;
    (0..upto).filter(|k| recorder.runs(*k).len() > 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_each_outage_every_worker_has_one_connection_and_consumer_and_every_job_runs() {
    integration_tests::harness::log_to_test_output();
    let node = RabbitNode::start("outages");
    let producer_broker = broker(&node).await;
    let queue = QueueName::new("outages");
    producer_broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare");
    let producer = Producer::new(producer_broker.clone(), queue.clone());
    let recorder = Arc::new(Recorder::default());
    let workers = [
        worker(broker(&node).await, &queue, &recorder),
        worker(broker(&node).await, &queue, &recorder),
    ];
    // The producer's connection and one per worker; one consumer per worker.
    let (connections, consumers) = (3, 2);
    const WAVE: u32 = 2_000;
    let mut enqueued = 0;
    let mut duplicates = 0;
    let faults: [(&str, &dyn Fn()); 3] = [
        ("stop_app/start_app", &|| {
            node.stop_app();
            std::thread::sleep(Duration::from_secs(2));
            node.start_app();
        }),
        ("a full node stop held down for 10 s", &|| {
            node.stop();
            std::thread::sleep(Duration::from_secs(10));
            node.start_again();
        }),
        ("close_all_connections", &|| node.close_all_connections()),
    ];
    for (name, fault) in faults {
        wave(&producer, &recorder, enqueued, WAVE).await;
        enqueued += WAVE;
        let before_fault = recorder.total_runs();
        assert!(
            before_fault < enqueued as usize,
            "the fault must land mid-flow, yet all {enqueued} jobs ran before {name}"
        );
        tokio::task::block_in_place(fault);
        let twice = all_ran(&recorder, enqueued).await - duplicates;
        duplicates += twice;
        // Only deliveries RabbitMQ still counted unacknowledged when the connection died
        // run again: the jobs running, and acks written just before it died (AMQP does not
        // confirm acks), at most the prefetch of each worker.
        let unacked = 2 * usize::from(PREFETCH);
        assert!(
            twice <= unacked,
            "after {name}: {twice} jobs ran twice, more than the {unacked} deliveries unacked"
        );
        settled(&node, &queue, connections, consumers).await;
        for running in &workers {
            assert!(
                running.health.is_alive(),
                "the worker kept running through {name}"
            );
        }
    }
    for running in workers {
        let report = running.stop().await;
        assert_eq!(report.stats.in_flight, 0, "{report:?}");
        assert_eq!(report.stats.dead_lettered, 0, "{report:?}");
    }
}

/// Deliveries lapin had buffered (prefetched, not yet started) when the connection died are
/// dropped, never started: with one job at a time and 20 prefetched, a killed connection
/// repeats the running job (and at most one whose ack was lost), not the buffered ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_buffered_from_a_dead_connection_are_never_started() {
    let node = RabbitNode::start("buffered");
    let broker = broker(&node).await;
    let queue = QueueName::new("buffered");
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare");
    let producer = Producer::new(broker.clone(), queue.clone());
    const JOBS: u32 = 60;
    for key in 0..JOBS {
        producer
            .enqueue(&Probe {
                key,
                behaviour: Behaviour::Sleep(100),
            })
            .await
            .expect("enqueue");
    }
    let recorder = Arc::new(Recorder::default());
    let running = Running::start(
        Worker::builder(broker.clone(), queue.clone())
            .dependency_arc(Arc::clone(&recorder))
            .handler(probe)
            .concurrency(1)
            .prefetch(20),
    );
    eventually(Duration::from_secs(30), "a few jobs to run", || async {
        if recorder.total_runs() >= 5 {
            Ok(())
        } else {
            Err(format!("{}", recorder.total_runs()))
        }
    })
    .await;
    tokio::task::block_in_place(|| node.close_all_connections());
    let twice = all_ran(&recorder, JOBS).await;
    assert!(
        twice <= 2,
        "{twice} jobs ran twice: buffered deliveries of the dead connection started"
    );
    running.stop().await;
}

#[test]
fn sigterm_after_a_reconnect_exits_cleanly_without_a_panic() {
    let node = RabbitNode::start("sigterm");
    let queue = QueueName::new("sigterm");
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(async {
            broker(&node)
                .await
                .declare(&queue, &QueueOptions::default())
                .await
        })
        .expect("declare");
    let args = [
        "sleep".to_owned(),
        "40".to_owned(),
        "4".to_owned(),
        node.url(),
        queue.to_string(),
    ];
    let process = WorkerProcess::start(env!("CARGO_BIN_EXE_signal_worker"), &args);
    process.expect_line("jobs running", Duration::from_secs(30));
    node.close_all_connections();
    process.expect_line("reconnected to RabbitMQ", Duration::from_secs(30));
    process.signal("TERM");
    let (status, stderr) = process.wait_with_stderr(Duration::from_secs(90));
    assert!(status.success(), "exit 0: {status:?}");
    assert!(
        !stderr.contains("panicked"),
        "nothing panics at shutdown: {stderr}"
    );
}
