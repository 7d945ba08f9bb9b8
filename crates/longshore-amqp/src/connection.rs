//! Connection and recovery: one connection per broker, and one mechanism that brings it back.
//!
//! lapin's own automatic recovery is off: it replays consumers on the connection it brings
//! back, so together with a second mechanism it left consumers nobody read, each holding a
//! full prefetch of jobs that never ran. Here the [`Link`]'s supervisor alone replaces a
//! connection that died: it closes what is left of the old one, opens a new one with its
//! publishing channel, and bumps the generation, which ends every consumer of the old
//! connection; the worker then consumes again on the new one. Deliveries of the old
//! connection can no longer be acked (RabbitMQ redelivers them) and are never started.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties, Event};
use longshore_core::{BrokerError, BrokerUrl};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::publish::Publisher;

/// How often the supervisor looks at the connection, besides lapin's error events.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// The first and the longest wait between reconnection tries.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MOST: Duration = Duration::from_secs(5);

/// `host:port` of a URL, for error messages (no user info).
fn endpoint(url: &BrokerUrl) -> String {
    let plain = url.redacted();
    let rest = plain
        .split_once("://")
        .map_or(plain.as_str(), |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.contains(':') || host.is_empty() {
        host.to_owned()
    } else {
        let port = if url.scheme() == "amqps" { 5671 } else { 5672 };
        format!("{host}:{port}")
    }
}

/// One try to connect, without lapin's recovery; `ca` (PEM) is trusted besides the
/// system's certificate authorities for `amqps://`.
async fn connect_once(
    url: &BrokerUrl,
    name: &str,
    ca: Option<&str>,
) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let tls = OwnedTLSConfig {
        identity: None,
        cert_chain: ca.map(str::to_owned),
    };
    let runtime = lapin::runtime::default_runtime()?;
    let uri = parse_uri(url.expose())?;
    Connection::connect_uri_with_config(uri, properties, tls, runtime).await
}

/// `url` parsed as lapin parses it, asking for [`FRAME_MAX`] unless it sets `frame_max`.
fn parse_uri(url: &str) -> Result<AMQPUri, lapin::Error> {
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|error: String| lapin::Error::from(std::io::Error::other(error)))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Ok(uri)
}

/// The largest AMQP frame longshore asks for unless the URL says (`?frame_max=`): 32 KiB.
/// lapin keeps 32 frames of buffer each way per connection, so RabbitMQ's default of
/// 128 KiB would hold 8 MiB per worker; job messages are small, and a larger body simply
/// travels in more frames.
pub(crate) const FRAME_MAX: u32 = 32 * 1024;

/// What to add to a connect error whose cause is the server's certificate.
fn certificate_hint(cause: &str) -> &'static str {
    let lower = cause.to_lowercase();
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        "; RabbitMQ's TLS certificate is not trusted: if your own certificate authority \
         signed it, give its PEM to `AmqpBrokerBuilder::tls_ca_pem` (or set \
         LONGSHORE_AMQP_CA_FILE), and connect by the name the certificate holds"
    } else {
        ""
    }
}

/// The nodes to connect to, in turn: a URL, or several separated by commas (the nodes of a
/// cluster); the one that answered last is tried first.
pub(crate) struct Nodes {
    urls: Vec<BrokerUrl>,
    /// Which answered last.
    current: AtomicUsize,
    /// A certificate authority (PEM) trusted for `amqps://`, besides the system's.
    ca: Option<String>,
}

impl Nodes {
    pub(crate) fn new(url: &BrokerUrl, ca: Option<String>) -> Self {
        Self {
            urls: url.alternatives(),
            current: AtomicUsize::new(0),
            ca,
        }
    }

    /// One try at each node, from the one that answered last, each within `each`; the
    /// connection, or each node's cause.
    async fn connect_once(&self, name: &str, each: Duration) -> Result<Connection, String> {
        let first = self.current.load(Ordering::Relaxed);
        let mut causes = Vec::new();
        for offset in 0..self.urls.len() {
            let index = (first + offset) % self.urls.len();
            let url = &self.urls[index];
            let cause = match tokio::time::timeout(
                each,
                connect_once(url, name, self.ca.as_deref()),
            )
            .await
            {
                Ok(Ok(connection)) => {
                    if index != first {
                        tracing::info!(node = %endpoint(url), "connected to another RabbitMQ node");
                    }
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(connection);
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {each:?}"),
            };
            causes.push(format!("{}: {cause}", endpoint(url)));
        }
        Err(causes.join("; "))
    }

    /// `host:port` of each node.
    fn endpoints(&self) -> String {
        self.urls
            .iter()
            .map(endpoint)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.urls.iter().map(BrokerUrl::redacted).collect();
        f.write_str(&shown.join(","))
    }
}

/// Connects, trying again with backoff until `timeout` passes; each failed try is logged
/// at WARN with its cause. The error names the host, the port and the last cause.
pub(crate) async fn connect(
    nodes: &Nodes,
    name: &str,
    timeout: Duration,
) -> Result<Connection, BrokerError> {
    let deadline = Instant::now() + timeout;
    let mut wait = RETRY_FIRST * 2;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let cause = match nodes.connect_once(name, left).await {
            Ok(connection) => return Ok(connection),
            Err(cause) => cause,
        };
        if Instant::now() + wait >= deadline {
            return Err(BrokerError::Connection(
                format!(
                    "could not connect to RabbitMQ at {} within {timeout:?} ({nodes}): {cause}; \
                     check that it runs and the URL is right{}",
                    nodes.endpoints(),
                    certificate_hint(&cause)
                )
                .into(),
            ));
        }
        tracing::warn!(url = %nodes, cause, retry_in_ms = wait.as_millis() as u64, "cannot connect to RabbitMQ yet");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MOST);
    }
}

/// One live connection, its publishing channel and its generation.
pub(crate) struct Live {
    pub(crate) connection: Arc<Connection>,
    pub(crate) publisher: Publisher,
    /// Which connection of the link this is (0 the first).
    pub(crate) generation: u64,
}

/// The broker's connection, kept alive by its supervisor.
pub(crate) struct Link {
    nodes: Nodes,
    live: RwLock<Arc<Live>>,
    /// The generation of the current connection; changes when it is replaced.
    generation: watch::Sender<u64>,
}

impl Link {
    /// Connects (bounded by `timeout`) and starts the supervisor; reconnection after that is
    /// unbounded.
    pub(crate) async fn open(
        url: BrokerUrl,
        ca: Option<String>,
        timeout: Duration,
    ) -> Result<Arc<Self>, BrokerError> {
        let nodes = Nodes::new(&url, ca);
        let live = Self::connect_live(&nodes, timeout, 0).await?;
        let events = live.connection.events_listener();
        let (generation, _) = watch::channel(0);
        let link = Arc::new(Self {
            nodes,
            live: RwLock::new(Arc::new(live)),
            generation,
        });
        tokio::spawn(Self::supervise(Arc::downgrade(&link), events.boxed()));
        Ok(link)
    }

    async fn connect_live(
        nodes: &Nodes,
        timeout: Duration,
        generation: u64,
    ) -> Result<Live, BrokerError> {
        let connection = connect(nodes, "longshore", timeout).await?;
        let publisher = Publisher::open(&connection).await?;
        Ok(Live {
            connection: Arc::new(connection),
            publisher,
            generation,
        })
    }

    /// The nodes this link connects to (other connections of the broker use them too).
    pub(crate) fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// The current connection.
    pub(crate) fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Changes when the connection is replaced.
    pub(crate) fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The current connection once it is up, waiting up to `timeout` for a replacement.
    pub(crate) async fn connected(&self, timeout: Duration) -> Result<Arc<Live>, BrokerError> {
        let mut generation = self.generation();
        let deadline = Instant::now() + timeout;
        loop {
            let live = self.live();
            if live.connection.status().connected() {
                return Ok(live);
            }
            if tokio::time::timeout_at(deadline, generation.changed())
                .await
                .is_err()
            {
                return Err(BrokerError::Connection(
                    format!(
                        "the connection to RabbitMQ at {} is down",
                        self.nodes.endpoints()
                    )
                    .into(),
                ));
            }
        }
    }

    /// Watches the connection (lapin's error events, and its status every [`CHECK_EVERY`]);
    /// replaces it when it is no longer connected. Ends when the broker is dropped.
    async fn supervise(
        link: Weak<Self>,
        mut events: futures_util::stream::BoxStream<'static, Event>,
    ) {
        loop {
            tokio::select! {
                event = events.next() => {
                    if let Some(Event::Error(error)) = &event {
                        tracing::warn!(%error, "the RabbitMQ connection failed");
                    }
                    if event.is_none() {
                        // The connection is gone; look at once, then on the clock.
                        events = futures_util::stream::pending().boxed();
                    }
                }
                () = tokio::time::sleep(CHECK_EVERY) => {}
            }
            let Some(strong) = link.upgrade() else { return };
            let old = strong.live();
            if old.connection.status().connected() {
                continue;
            }
            let Some(new_events) = strong.replace(&old).await else {
                return;
            };
            events = new_events;
        }
    }

    /// Closes what is left of `old` and connects anew, trying until it works or nobody uses
    /// the broker any more; returns the new connection's events.
    async fn replace(
        self: &Arc<Self>,
        old: &Live,
    ) -> Option<futures_util::stream::BoxStream<'static, Event>> {
        // Whatever state the old connection is in, nothing of it may come back.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            old.connection.close(320, "longshore: replaced".into()),
        )
        .await;
        let mut wait = RETRY_FIRST;
        let generation = old.generation + 1;
        loop {
            let tried = tokio::time::timeout(Duration::from_secs(10), async {
                let connection = self
                    .nodes
                    .connect_once("longshore", Duration::from_secs(10))
                    .await?;
                match Publisher::open(&connection).await {
                    Ok(publisher) => Ok(Live {
                        connection: Arc::new(connection),
                        publisher,
                        generation,
                    }),
                    Err(error) => Err(error.to_string()),
                }
            })
            .await
            .unwrap_or_else(|_| Err("no answer within 10s".to_owned()));
            match tried {
                Ok(live) => {
                    let events = live.connection.events_listener().boxed();
                    *self.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(live);
                    self.generation.send_replace(generation);
                    tracing::info!(url = %self.nodes, generation, "reconnected to RabbitMQ");
                    return Some(events);
                }
                Err(cause) => {
                    // The supervisor's own reference is the last: the broker was dropped.
                    if Arc::strong_count(self) == 1 {
                        return None;
                    }
                    tracing::warn!(url = %self.nodes, cause, retry_in_ms = wait.as_millis() as u64, "reconnecting to RabbitMQ failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MOST);
                }
            }
        }
    }

    /// Replaces the publishing channel of `used` (if it is still the current one) by a
    /// fresh one on the same connection.
    async fn renew_publisher(&self, used: &Arc<Live>) {
        let current = || Arc::ptr_eq(&self.live(), used);
        if !current() {
            return;
        }
        let Ok(publisher) = Publisher::open(&used.connection).await else {
            return;
        };
        let mut live = self.live.write().unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&live, used) {
            *live = Arc::new(Live {
                connection: Arc::clone(&used.connection),
                publisher,
                generation: used.generation,
            });
            tracing::info!("opened a fresh publishing channel after repeated publisher nacks");
        } else {
            drop(live);
            let channel = publisher.channel().clone();
            tokio::spawn(async move {
                let _ = channel.close(200, "longshore: not needed".into()).await;
            });
        }
    }

    /// Runs `publish` on the current connection; if it is lost, waits for the next one and
    /// tries again, for up to a minute.
    pub(crate) async fn publish<F, Fut>(&self, publish: F) -> Result<(), BrokerError>
    where
        F: Fn(Arc<Live>) -> Fut,
        Fut: Future<Output = Result<(), BrokerError>>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut generation = self.generation();
        let mut refused = 0;
        loop {
            let live = self.live();
            match publish(Arc::clone(&live)).await {
                Err(error) if error.is_transient() && Instant::now() < deadline => {
                    if matches!(error, BrokerError::Refused { .. }) {
                        refused += 1;
                        if refused % 3 == 0 {
                            // Refused again and again: go on with a fresh channel, in case
                            // this one's view of the queue went stale (a leader change).
                            self.renew_publisher(&live).await;
                        }
                    }
                    tracing::warn!(%error, "publish failed; trying again once the broker takes it");
                    let _ = tokio::time::timeout_at(
                        deadline.min(Instant::now() + Duration::from_secs(1)),
                        generation.changed(),
                    )
                    .await;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_host_and_port_without_secrets() {
        let url = BrokerUrl::new("amqp://app:s3cret@rabbit.internal/prod");
        assert_eq!(endpoint(&url), "rabbit.internal:5672");
        assert_eq!(endpoint(&BrokerUrl::new("amqps://h:6000")), "h:6000");
        assert_eq!(endpoint(&BrokerUrl::new("amqps://host/%2f")), "host:5671");
    }

    #[test]
    fn frame_max_is_asked_for_unless_the_url_sets_it() {
        let frame_max = |url: &str| parse_uri(url).unwrap().query.frame_max;
        assert_eq!(frame_max("amqp://h/%2f"), Some(32768));
        assert_eq!(frame_max("amqp://h/%2f?heartbeat=10"), Some(32768));
        assert_eq!(frame_max("amqp://h/v?"), Some(32768));
        assert_eq!(
            frame_max("amqp://h/v?frame_max=131072&heartbeat=5"),
            Some(131072)
        );
        assert_eq!(
            frame_max("amqp://h/v?heartbeat=5&frame_max=4096"),
            Some(4096)
        );
        let uri = parse_uri("amqp://h/v?heartbeat=5").unwrap();
        assert_eq!(
            uri.query.heartbeat,
            Some(5),
            "the URL's other settings stay"
        );
    }
}
