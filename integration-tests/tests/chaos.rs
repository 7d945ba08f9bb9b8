//! The chaos suite (`integration_tests::chaos`): jobs drained by two worker processes while
//! faults strike; every job completes or is dead-lettered with a reason, none is lost, and
//! duplicates stay within what the faults caught in flight. RabbitMQ runs on a node of the
//! test's own (so the shared broker is never stopped); SQS on the emulator.
//!
//! By default a smoke run (a few hundred jobs, a kill and a restart); `scripts/chaos` sets
//! `LONGSHORE_CHAOS_FULL=1` and `LONGSHORE_CHAOS_JOBS` for the full run and its figures.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::chaos::{self, Crew, Fault, Setup};
use integration_tests::harness::{sqs_env, sqs_harness, unique_queue};
use integration_tests::rabbit_node::RabbitNode;
use longshore::amqp::AmqpBroker;
use longshore::{Broker, QueueOptions};

/// The suite's runs take turns: each starts processes and nodes that want the machine's two
/// cores to themselves, and their timings are part of the figures.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Jobs a worker holds at most: its prefetch (running or buffered, acks unconfirmed).
const HELD: usize = 16;

fn full() -> bool {
    std::env::var("LONGSHORE_CHAOS_FULL").is_ok_and(|v| v == "1")
}

fn jobs() -> u32 {
    std::env::var("LONGSHORE_CHAOS_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if full() { 20_000 } else { 600 })
}

fn kill(index: usize) -> Fault<'static> {
    Fault {
        name: if index == 0 {
            "SIGKILL worker 1"
        } else {
            "SIGKILL worker 2"
        },
        duplicate_bound: HELD,
        inject: Box::new(move |crew: &mut Crew| crew.kill(index)),
        diagnose: None,
    }
}

fn check(figures: &chaos::Figures) {
    println!("{}", figures.table());
    assert_eq!(figures.lost, 0, "{}", figures.table());
    assert_eq!(
        figures.completed + figures.dead_lettered,
        figures.jobs as usize,
        "{}",
        figures.table()
    );
    assert!(
        figures.duplicates <= figures.duplicate_bound,
        "more duplicates than jobs in flight at the faults: {}",
        figures.table()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_under_faults_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let node = RabbitNode::start("chaos");
    let broker = AmqpBroker::builder(node.url())
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect to the test's node");
    let queue = unique_queue("chaos");
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare");
    let node = &node;
    let mut faults = vec![kill(0)];
    if full() {
        faults.push(kill(1));
        faults.push(Fault {
            name: "SIGTERM worker 1 under load",
            duplicate_bound: 0,
            inject: Box::new(|crew: &mut Crew| crew.terminate(0)),
            diagnose: None,
        });
    }
    faults.push(Fault {
        name: "RabbitMQ stop_app, start_app",
        duplicate_bound: 2 * HELD,
        inject: Box::new(move |_: &mut Crew| {
            node.stop_app();
            node.start_app();
        }),
        diagnose: Some(Box::new(move || node.diagnose())),
    });
    if full() {
        faults.push(Fault {
            name: "RabbitMQ node stopped and started",
            duplicate_bound: 2 * HELD,
            inject: Box::new(move |_: &mut Crew| {
                node.stop();
                node.start_again();
            }),
            diagnose: Some(Box::new(move || node.diagnose())),
        });
    }
    let (jobs, job_ms) = (jobs(), if full() { 5 } else { 10 });
    let figures = chaos::run(
        Setup {
            title: format!(
                "chaos on RabbitMQ (a node of its own): {jobs} jobs of {job_ms} ms, 2 worker processes × concurrency 8, prefetch {HELD}"
            ),
            broker: Arc::new(broker),
            url: node.url(),
            env: Vec::new(),
            queue,
            jobs,
            job_ms,
            worker_exe: env!("CARGO_BIN_EXE_chaos_worker").into(),
        },
        faults,
    )
    .await;
    check(&figures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_under_faults_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let h = sqs_harness().await;
    let queue = unique_queue("chaos");
    // A short visibility timeout: what a killed worker held comes back within seconds.
    h.broker
        .declare(
            &queue,
            &QueueOptions::default().visibility_timeout(Duration::from_secs(2)),
        )
        .await
        .expect("declare");
    let mut faults = vec![kill(0)];
    if full() {
        faults.push(kill(1));
    }
    let jobs = if full() { jobs().min(3_000) } else { 200 };
    let figures = chaos::run(
        Setup {
            title: format!(
                "chaos on SQS (LocalStack): {jobs} jobs of 10 ms, 2 worker processes × concurrency 8"
            ),
            broker: Arc::clone(&h.broker),
            url: "sqs://".into(),
            env: sqs_env(),
            queue,
            jobs,
            job_ms: 10,
            worker_exe: env!("CARGO_BIN_EXE_chaos_worker").into(),
        },
        faults,
    )
    .await;
    check(&figures);
}

/// A three-node RabbitMQ cluster of the test's own, a quorum queue replicated on all three,
/// and one worker connected by the list of the nodes' URLs: the node that leads the queue
/// is stopped mid-run, then (after it is back) the node the worker is connected to. The
/// worker carries on; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_loses_nothing_when_nodes_stop() {
    use integration_tests::harness::{Behaviour, Probe, Recorder, Running, eventually, probe};
    use longshore::amqp::QueueType;
    use longshore::{Producer, Worker};

    const JOB_MS: u64 = 40;
    let _turn = ONE_AT_A_TIME.lock().await;
    let nodes = RabbitNode::cluster("cluster", 3);
    let urls: Vec<String> = nodes.iter().map(RabbitNode::url).collect();
    let connect = |urls: String| async move {
        AmqpBroker::builder(urls)
            .queue_type(QueueType::Quorum)
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await
            .expect("connect to the cluster")
    };
    let broker = connect(urls.join(",")).await;
    let queue = unique_queue("cluster");
    broker
        .declare(&queue, &QueueOptions::default())
        .await
        .expect("declare a quorum queue");
    // Most jobs go in first; 50 follow each fault, so there is work left after it.
    let (first, after_each) = (if full() { 3_000 } else { 600 }, 50);
    let jobs: u32 = first + 2 * after_each;
    let producer = Producer::new(broker.clone(), queue.clone());
    let enqueue = |keys: std::ops::Range<u32>| {
        let producer = producer.clone();
        let nodes = &nodes;
        async move {
            for key in keys {
                let started = std::time::Instant::now();
                loop {
                    let Err(error) = producer
                        .enqueue(&Probe {
                            key,
                            behaviour: Behaviour::Sleep(JOB_MS),
                        })
                        .await
                    else {
                        break;
                    };
                    // A quorum queue refuses publishes while it has no leader; enqueue
                    // itself tries for a minute. An application would try again too.
                    let refused = matches!(
                        &error,
                        longshore::EnqueueError::Broker(longshore::BrokerError::Refused { .. })
                    );
                    if refused && started.elapsed() < Duration::from_secs(240) {
                        continue;
                    }
                    let state: Vec<String> = nodes
                        .iter()
                        .map(|n| format!("{}:\n{}", n.name(), n.diagnose()))
                        .collect();
                    panic!(
                        "enqueue failed after {:?}: {error}\n{}",
                        started.elapsed(),
                        state.join("\n")
                    );
                }
                let waited = started.elapsed();
                if waited > Duration::from_secs(5) {
                    println!(
                        "enqueue of job {key} was refused for {:.1} s during the failover",
                        waited.as_secs_f64()
                    );
                }
            }
        }
    };
    enqueue(0..first).await;
    let recorder = Arc::new(Recorder::default());
    let started = std::time::Instant::now();
    let worker = Running::start(
        Worker::builder(connect(urls.join(",")).await, queue.clone())
            .dependency_arc(Arc::clone(&recorder))
            .handler(probe)
            .concurrency(8)
            .prefetch(16)
            .queue_options(QueueOptions::default()),
    );
    let distinct =
        |recorder: &Recorder| (0..jobs).filter(|k| !recorder.runs(*k).is_empty()).count();
    let mut table = format!(
        "\nthree-node RabbitMQ cluster, a quorum queue, {jobs} jobs of {JOB_MS} ms, one worker (concurrency 8, prefetch 16) given the three URLs\n\n\
         | fault | struck after job | work resumed after |\n| --- | ---: | ---: |\n"
    );
    for (step, fault) in [
        "stop the node that leads the queue",
        "stop the node the worker is connected to",
    ]
    .iter()
    .enumerate()
    {
        // Whom to stop is looked up first (rabbitmqctl takes a second), so the fault
        // strikes at the planned point, under load.
        let victim = if step == 0 {
            let leader = nodes[0].ctl(&[
                "list_queues",
                "--quiet",
                "--no-table-headers",
                "name",
                "leader",
            ]);
            let leader = leader
                .lines()
                .find(|line| line.starts_with(queue.as_str()))
                .and_then(|line| line.split_whitespace().nth(1))
                .unwrap_or_else(|| panic!("no leader listed for {queue}: {leader}"))
                .to_owned();
            nodes
                .iter()
                .position(|n| n.name() == leader)
                .expect("the leader is one of ours")
        } else {
            nodes
                .iter()
                .position(|n| n.connections() > 0)
                .expect("the worker is connected somewhere")
        };
        let at = first as usize * (step + 1) / 3;
        eventually(
            Duration::from_secs(120),
            "progress before the fault",
            || async {
                let done = recorder.total_runs();
                if done >= at {
                    Ok(())
                } else {
                    Err(format!("{done} run"))
                }
            },
        )
        .await;
        let before = recorder.total_runs();
        let struck = std::time::Instant::now();
        nodes[victim].stop();
        let next = first + after_each * step as u32;
        enqueue(next..next + after_each).await;
        let resumed = eventually(Duration::from_secs(120), "work to resume", || async {
            if recorder.total_runs() > before {
                Ok(struck.elapsed())
            } else {
                Err("no new run".to_owned())
            }
        })
        .await;
        table.push_str(&format!(
            "| {fault} ({}) | {before} | {:.2} s |\n",
            nodes[victim].name(),
            resumed.as_secs_f64()
        ));
        nodes[victim].start_again();
    }
    eventually(Duration::from_secs(300), "every job to run", || async {
        let done = distinct(&recorder);
        if done == jobs as usize {
            Ok(())
        } else {
            Err(format!("{done} of {jobs}"))
        }
    })
    .await;
    let drain = started.elapsed();
    let report = worker.stop().await;
    let runs = recorder.total_runs();
    table.push_str(&format!(
        "\n| jobs in | completed | lost | duplicates | drain time |\n| ---: | ---: | ---: | ---: | ---: |\n| {jobs} | {} | 0 | {} | {:.1} s |\n",
        distinct(&recorder),
        runs - jobs as usize,
        drain.as_secs_f64()
    ));
    println!("{table}");
    assert_eq!(report.stats.dead_lettered, 0, "{:?}", report.stats);
    assert!(
        runs - jobs as usize <= 2 * 16,
        "duplicates beyond two prefetches: {table}"
    );
}
