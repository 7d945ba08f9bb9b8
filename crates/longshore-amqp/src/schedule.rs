//! Schedule leases on RabbitMQ (see `longshore_core::schedule`).
//!
//! - The lease is the exclusive queue `<queue>.schedule.<name>.lease`, declared on a
//!   connection of its own without automatic recovery: RabbitMQ lets one connection hold an
//!   exclusive queue (others get `RESOURCE_LOCKED`) and deletes it when that connection
//!   closes or dies. (A recovering connection would redeclare it after a reconnect, behind
//!   the back of whoever took it meanwhile; so a lost lease connection stays lost, and the
//!   next lease opens a new one.)
//! - The watermark is a persistent message in the durable queue `<queue>.schedule.<name>`;
//!   recording publishes the new one (confirmed) and then acks the old ones. A reader takes
//!   the newest of what it finds, so a holder dying halfway leaves a readable state.
//! - Tick jobs are published on the lease's own channel, confirmed and mandatory: a holder
//!   whose connection died cannot publish.
//! - AMQP cannot list queues, so a schedule's first holder records its name in the durable
//!   registry queue `<queue>.schedules` (one message per schedule), which
//!   `longshore schedules list` reads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ErrorKind};
use longshore_core::spi::{
    Message, ScheduleInfo, ScheduleKey, ScheduleLease, decode_holder, decode_watermark,
    encode_watermark, lease_lost,
};
use longshore_core::{Attempt, BrokerError, QueueName};

use crate::connection::Nodes;
use crate::error::broker_error;
use crate::publish::Publisher;

/// The connection leases are taken on, opened when first needed and replaced when it died,
/// and the keys this process holds (RabbitMQ would let two leases on one connection share an
/// exclusive queue).
#[derive(Default)]
pub(crate) struct Leases {
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    held: Arc<Mutex<HashSet<ScheduleKey>>>,
}

impl Leases {
    async fn connection(&self, nodes: &Nodes) -> Result<Arc<Connection>, BrokerError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = &*slot
            && connection.status().connected()
        {
            return Ok(Arc::clone(connection));
        }
        let connection = crate::connection::connect(
            nodes,
            "longshore-schedules",
            std::time::Duration::from_secs(10),
        )
        .await?;
        let connection = Arc::new(connection);
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// Takes the lease of `key` if nobody holds it.
    pub(crate) async fn take(
        &self,
        nodes: &Nodes,
        key: &ScheduleKey,
    ) -> Result<Option<Box<dyn ScheduleLease>>, BrokerError> {
        if !self.mark_held(key) {
            return Ok(None);
        }
        match self.try_take(nodes, key).await {
            Ok(Some(lease)) => Ok(Some(Box::new(lease))),
            other => {
                unmark(&self.held, key);
                other.map(|_| None)
            }
        }
    }

    fn mark_held(&self, key: &ScheduleKey) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone())
    }

    async fn try_take(
        &self,
        nodes: &Nodes,
        key: &ScheduleKey,
    ) -> Result<Option<AmqpLease>, BrokerError> {
        let connection = self.connection(nodes).await?;
        let state = QueueName::new(key.base_name());
        let lease = QueueName::new(format!("{}.lease", key.base_name()));
        let publisher = Publisher::open(&connection).await?;
        let channel = publisher.channel().clone();
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        if let Err(error) = channel
            .queue_declare(lease.as_str().into(), exclusive, FieldTable::default())
            .await
        {
            if is_locked(&error) {
                return Ok(None);
            }
            return Err(broker_error(error, &lease));
        }
        channel
            .queue_declare(
                state.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .map_err(|error| broker_error(error, &state))?;
        let mut taken = AmqpLease {
            key: key.clone(),
            connection,
            publisher,
            state,
            lease,
            watermark: None,
            held: Arc::clone(&self.held),
        };
        taken.watermark = taken.compact_state().await?;
        if taken.watermark.is_none() {
            // The schedule's first run anywhere: record its name where it can be listed.
            register(&taken.publisher, key).await?;
        }
        Ok(Some(taken))
    }
}

/// The registry of `queue`'s schedules.
fn registry(queue: &QueueName) -> QueueName {
    QueueName::new(format!("{queue}.schedules"))
}

/// Records `key`'s name in its queue's registry.
async fn register(publisher: &Publisher, key: &ScheduleKey) -> Result<(), BrokerError> {
    let registry = registry(&key.queue);
    publisher
        .channel()
        .queue_declare(
            registry.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| broker_error(error, &registry))?;
    let entry = Message::new(
        "longshore-schedule",
        serde_json::json!({ "schedule": key.name })
            .to_string()
            .into_bytes(),
    );
    publisher
        .publish_message(&registry, &entry, Attempt::FIRST, Duration::ZERO)
        .await
}

/// Every message of `queue`, read without acking: the channel closes after, and RabbitMQ
/// hands them back in order.
async fn read_all(connection: &Connection, queue: &QueueName) -> Result<Vec<Vec<u8>>, BrokerError> {
    let name = queue.clone();
    crate::topology::on_fresh_channel(connection, queue, |channel| async move {
        let mut bodies = Vec::new();
        while let Some(message) = channel
            .basic_get(name.as_str().into(), BasicGetOptions::default())
            .await?
        {
            bodies.push(message.delivery.data);
        }
        Ok(bodies)
    })
    .await
}

/// The schedules of `queue`, from its registry: each one's watermark and who recorded it
/// (from its state queue), and whether its lease queue is held now.
pub(crate) async fn list(
    connection: &Connection,
    queue: &QueueName,
) -> Result<Vec<ScheduleInfo>, BrokerError> {
    let entries = match read_all(connection, &registry(queue)).await {
        Ok(entries) => entries,
        Err(BrokerError::QueueNotFound { .. }) => return Ok(Vec::new()),
        Err(other) => return Err(other),
    };
    let mut names: Vec<String> = entries
        .iter()
        .filter_map(|body| {
            let value: serde_json::Value = serde_json::from_slice(body).ok()?;
            value.get("schedule")?.as_str().map(str::to_owned)
        })
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let key = ScheduleKey {
            queue: queue.clone(),
            name: name.clone(),
        };
        let states = match read_all(connection, &QueueName::new(key.base_name())).await {
            Ok(states) => states,
            Err(BrokerError::QueueNotFound { .. }) => Vec::new(),
            Err(other) => return Err(other),
        };
        let newest = states
            .iter()
            .filter_map(|body| Some((decode_watermark(body)?, decode_holder(body))))
            .max_by_key(|(watermark, _)| *watermark);
        let lease = QueueName::new(format!("{}.lease", key.base_name()));
        let held = match crate::topology::queue_exists(connection, &lease).await {
            Ok(_) => true,
            Err(BrokerError::QueueNotFound { .. }) => false,
            // An exclusive queue of another connection: someone holds it.
            Err(BrokerError::Topology { .. }) => true,
            Err(other) => return Err(other),
        };
        out.push(ScheduleInfo {
            name,
            held: Some(held),
            holder: newest.as_ref().and_then(|(_, holder)| holder.clone()),
            watermark: newest.map(|(watermark, _)| watermark),
        });
    }
    Ok(out)
}

/// Deletes a schedule's state queue, its registry entry and, unless a replica holds it,
/// its lease queue.
pub(crate) async fn delete(connection: &Connection, key: &ScheduleKey) -> Result<(), BrokerError> {
    let state = QueueName::new(key.base_name());
    let lease = QueueName::new(format!("{}.lease", key.base_name()));
    crate::topology::delete_queues(connection, &[state, lease]).await?;
    let registry = registry(&key.queue);
    let name = key.name.clone();
    let read_from = registry.clone();
    let forgotten =
        crate::topology::on_fresh_channel(connection, &registry, |channel| async move {
            while let Some(message) = channel
                .basic_get(read_from.as_str().into(), BasicGetOptions::default())
                .await?
            {
                let entry: Option<serde_json::Value> =
                    serde_json::from_slice(&message.delivery.data).ok();
                if entry
                    .and_then(|e| e.get("schedule")?.as_str().map(str::to_owned))
                    .as_deref()
                    == Some(name.as_str())
                {
                    message
                        .delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await?;
                }
            }
            Ok(())
        })
        .await;
    match forgotten {
        Ok(()) | Err(BrokerError::QueueNotFound { .. }) => Ok(()),
        Err(other) => Err(other),
    }
}

fn unmark(held: &Mutex<HashSet<ScheduleKey>>, key: &ScheduleKey) {
    held.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(key);
}

fn is_locked(error: &lapin::Error) -> bool {
    matches!(error.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)))
}

/// A held lease: the exclusive queue on the lease connection.
struct AmqpLease {
    key: ScheduleKey,
    connection: Arc<Connection>,
    /// The lease's channel, in confirm mode; the exclusive queue was declared on it.
    publisher: Publisher,
    state: QueueName,
    lease: QueueName,
    watermark: Option<SystemTime>,
    held: Arc<Mutex<HashSet<ScheduleKey>>>,
}

impl AmqpLease {
    fn channel(&self) -> &Channel {
        self.publisher.channel()
    }

    /// Reads every state message and keeps only the newest (the one with the latest
    /// watermark), which it returns; the others are acked. A holder that died mid-record
    /// left two, or none held back: RabbitMQ requeues what a dead channel had not acked.
    async fn compact_state(&self) -> Result<Option<SystemTime>, BrokerError> {
        let error = |error| broker_error(error, &self.state);
        let mut got = Vec::new();
        while let Some(message) = self
            .channel()
            .basic_get(self.state.as_str().into(), BasicGetOptions::default())
            .await
            .map_err(error)?
        {
            got.push(message.delivery);
        }
        let newest = got
            .iter()
            .enumerate()
            .filter_map(|(i, delivery)| Some((decode_watermark(&delivery.data)?, i)))
            .max();
        for (i, delivery) in got.iter().enumerate() {
            if newest.is_some_and(|(_, keep)| keep == i) {
                let requeue = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                delivery.acker.nack(requeue).await.map_err(error)?;
            } else {
                if decode_watermark(&delivery.data).is_none() {
                    tracing::warn!(queue = %self.state, "dropping an unreadable schedule state message");
                }
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(error)?;
            }
        }
        Ok(newest.map(|(watermark, _)| watermark))
    }
}

#[async_trait]
impl ScheduleLease for AmqpLease {
    fn watermark(&self) -> Option<SystemTime> {
        self.watermark
    }

    fn is_held(&self) -> bool {
        self.connection.status().connected() && self.channel().status().connected()
    }

    async fn renew(&mut self) -> Result<(), BrokerError> {
        // The lease needs no renewal; ask the broker whether the queue is still ours.
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        self.channel()
            .queue_declare(self.lease.as_str().into(), passive, FieldTable::default())
            .await
            .map(|_| ())
            .map_err(|_| lease_lost(&self.key))
    }

    async fn publish(&mut self, queue: &QueueName, message: Message) -> Result<(), BrokerError> {
        if !self.is_held() {
            return Err(lease_lost(&self.key));
        }
        // As the broker publishes a job, but on the lease's own channel.
        self.publisher
            .publish_message(queue, &message, Attempt::FIRST, Duration::ZERO)
            .await
    }

    async fn record(&mut self, watermark: SystemTime) -> Result<(), BrokerError> {
        let record = Message::new(
            "longshore-schedule-state",
            encode_watermark(&self.key, watermark),
        );
        if !self.is_held() {
            return Err(lease_lost(&self.key));
        }
        // The new state first (persistent, confirmed), then the old ones go: a reader takes
        // the newest it finds.
        self.publisher
            .publish_message(&self.state, &record, Attempt::FIRST, Duration::ZERO)
            .await?;
        self.compact_state().await?;
        self.watermark = Some(watermark);
        Ok(())
    }

    async fn release(self: Box<Self>) {
        // Delete the exclusive queue so that another replica takes over at once (no state
        // message is held between calls, so the next holder reads the latest).
        let _ = self
            .channel()
            .queue_delete(self.lease.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = self.channel().close(200, "lease released".into()).await;
    }
}

impl Drop for AmqpLease {
    fn drop(&mut self) {
        unmark(&self.held, &self.key);
        if self.channel().status().connected() {
            // Dropped without release (the scheduler task was cancelled): free the lease.
            let channel = self.channel().clone();
            let lease = self.lease.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = channel
                        .queue_delete(lease.as_str().into(), QueueDeleteOptions::default())
                        .await;
                    let _ = channel.close(200, "lease dropped".into()).await;
                });
            }
        }
    }
}
