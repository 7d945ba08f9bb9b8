//! RabbitMQ nodes of a test's own, beside the shared broker: each has its own node name,
//! ports and data folder, so a test can stop and restart it, or kill its connections,
//! without disturbing tests that use the shared one. A few nodes can form a cluster.
//!
//! They are started with the machine's `rabbitmq-server` (Debian's package; `scripts/test`
//! installs it) and driven with `rabbitmqctl -n <node>`.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A node's TLS listener.
#[derive(Debug)]
pub struct Tls {
    /// Its port on 127.0.0.1 (the certificate names `localhost` and 127.0.0.1).
    pub port: u16,
    /// The certificate authority that signed its certificate, PEM.
    pub ca_pem: String,
}

/// A CA (`ca.pem`) and a server key and certificate for `localhost` / 127.0.0.1 signed by it
/// (`server.key`, `server.pem`), in `dir`.
fn make_certificates(dir: &std::path::Path) {
    let openssl = |args: &[&str]| {
        let output = run(Command::new("openssl").args(args).current_dir(dir));
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=longshore test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
    )
    .expect("the certificate's extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
}

/// A private RabbitMQ node; stopped and its data folder removed when dropped.
#[derive(Debug)]
pub struct RabbitNode {
    name: String,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
}

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address").port()
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|error| {
        panic!(
            "cannot run {command:?} ({error}); tests that stop RabbitMQ start a node of their own \
             with Debian's rabbitmq-server: run `scripts/test`, which installs it"
        )
    })
}

impl RabbitNode {
    /// Starts a node named `longshore-<purpose>-<pid>-<n>@localhost` and waits until it
    /// takes connections (up to 90 s).
    pub fn start(purpose: &str) -> Self {
        Self::start_with(purpose, |_| String::new())
    }

    /// Starts a node that also listens for `amqps://` on a port of its own, with a server
    /// certificate for `localhost` signed by a certificate authority made for it (with the
    /// machine's `openssl`).
    pub fn start_tls(purpose: &str) -> (Self, Tls) {
        let port = free_port();
        let mut ca_pem = String::new();
        let node = Self::start_with(purpose, |dir| {
            make_certificates(dir);
            ca_pem = std::fs::read_to_string(dir.join("ca.pem")).expect("the CA certificate");
            format!(
                "listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {dir}/ca.pem\n\
                 ssl_options.certfile = {dir}/server.pem\n\
                 ssl_options.keyfile = {dir}/server.key\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                dir = dir.display()
            )
        });
        (node, Tls { port, ca_pem })
    }

    fn start_with(purpose: &str, extra_config: impl FnOnce(&std::path::Path) -> String) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let short = format!("longshore-{purpose}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&short);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("log")).expect("the node's folder");
        let node = Self {
            name: format!("{short}@localhost"),
            port: free_port(),
            dist_port: free_port(),
            dir,
        };
        let extra = extra_config(&node.dir);
        std::fs::write(
            node.dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{}\nloopback_users = none\n{extra}",
                node.port
            ),
        )
        .expect("the node's config");
        std::fs::write(node.dir.join("enabled_plugins"), "[].\n").expect("its plugins file");
        // The server runs as the `rabbitmq` user (Debian's wrapper switches to it).
        let _ = Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(&node.dir)
            .status();
        node.boot();
        node
    }

    /// `rabbitmq-server -detached` with this node's environment, then wait for it.
    fn boot(&self) {
        let started = run(self
            .env(&mut Command::new("rabbitmq-server"))
            .arg("-detached"));
        assert!(
            started.status.success(),
            "rabbitmq-server for {} failed: {}",
            self.name,
            String::from_utf8_lossy(&started.stderr)
        );
        self.await_startup();
    }

    fn env<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", self.dir.join("node.pid"))
    }

    /// Starts `size` nodes and joins them into one cluster (the first is the seed).
    pub fn cluster(purpose: &str, size: usize) -> Vec<Self> {
        let nodes: Vec<Self> = (0..size).map(|_| Self::start(purpose)).collect();
        for node in &nodes[1..] {
            node.ctl(&["stop_app"]);
            node.ctl(&["join_cluster", nodes[0].name()]);
            node.start_app();
        }
        let status = nodes[0].ctl(&["cluster_status"]);
        for node in &nodes {
            assert!(
                status.contains(node.name()),
                "{} did not join the cluster: {status}",
                node.name()
            );
        }
        nodes
    }

    /// Waits until the node runs its app and takes AMQP connections.
    pub fn await_startup(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // await_startup fails until the node has registered: try again until it works.
            let ok = self
                .try_ctl(&["await_startup", "--timeout", "30"])
                .status
                .success()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "RabbitMQ node {} did not start within 90 s; see {}",
                self.name,
                self.dir.join("log").display()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn try_ctl(&self, args: &[&str]) -> Output {
        run(Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .args(args))
    }

    /// Runs `rabbitmqctl -n <node> <args>`; its standard output, or a panic with its error.
    pub fn ctl(&self, args: &[&str]) -> String {
        let output = self.try_ctl(args);
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The node's name (`longshore-…@localhost`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Stops the RabbitMQ application, the node staying up (`stop_app`).
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    /// Starts the application again and waits for it.
    pub fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.await_startup();
    }

    /// Stops the whole node (`rabbitmqctl stop`).
    pub fn stop(&self) {
        let _ = self.try_ctl(&["stop"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "node {} did not stop", self.name);
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts the node again after [`stop`](Self::stop), with its data.
    pub fn start_again(&self) {
        self.boot();
    }

    /// Closes every client connection (`rabbitmqctl close_all_connections`).
    pub fn close_all_connections(&self) {
        self.ctl(&["close_all_connections", "closed by a longshore test"]);
    }

    /// The node's connections, consumers and queues (ready and unacknowledged messages), for
    /// a test that fails to print.
    pub fn diagnose(&self) -> String {
        let run = |args: &[&str]| {
            let output = self.try_ctl(args);
            format!(
                "rabbitmqctl {}:\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        };
        [
            run(&["list_connections", "name", "state", "channels"]),
            run(&[
                "list_channels",
                "connection",
                "number",
                "consumer_count",
                "messages_unacknowledged",
            ]),
            run(&[
                "list_consumers",
                "queue_name",
                "channel_pid",
                "prefetch_count",
            ]),
            run(&[
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ]),
        ]
        .join("\n")
    }

    /// How many client connections the node has.
    pub fn connections(&self) -> usize {
        self.ctl(&["list_connections", "--quiet", "--no-table-headers", "pid"])
            .lines()
            .filter(|line| !line.trim().is_empty())
            .count()
    }

    /// How many consumers `queue` has.
    pub fn consumers(&self, queue: &str) -> usize {
        self.ctl(&[
            "list_consumers",
            "--quiet",
            "--no-table-headers",
            "queue_name",
        ])
        .lines()
        .filter(|line| line.trim() == queue)
        .count()
    }

    /// `queue`'s messages ready and unacknowledged.
    pub fn queue_counts(&self, queue: &str) -> (u64, u64) {
        let listed = self.ctl(&[
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ]);
        listed
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next()? == queue).then(|| {
                    let ready = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    let unacked = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                    (ready, unacked)
                })
            })
            .unwrap_or((0, 0))
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .arg("-n")
            .arg(&self.name)
            .arg("stop")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
