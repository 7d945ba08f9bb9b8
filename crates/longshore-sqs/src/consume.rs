//! Receiving: long-polling receive loops feeding a buffer no larger than the prefetch, so the
//! worker never holds more leased messages than it can start soon. Dropping the stream stops
//! the loops (aborting long polls in flight) and releases what is buffered at once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use aws_sdk_sqs::types::MessageSystemAttributeName;
use futures_util::StreamExt;
use longshore_core::spi::{ConsumeOptions, Delivery, DeliveryStream};
use longshore_core::{Attempt, BrokerError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::broker_error;
use crate::fifo::{Admit, Gate, Held, release_all};
use crate::queue::QueueCtx;
use crate::received::Received;
use crate::settle::{GroupGate, SqsAcknowledger, hand_back, send_on};
use crate::topology::seconds_up;
use crate::wire;

/// SQS's longest long poll.
const WAIT: i32 = 20;

/// A lease starts when SQS hands the message out: after the request began (a long poll may
/// wait up to 20 s first) and before the response arrived. Counting it from the response
/// less this margin keeps our deadline before SQS's, by more than the response's transit.
const LEASE_MARGIN: Duration = Duration::from_millis(250);

struct Guard {
    ctx: Arc<QueueCtx>,
    pollers: Vec<JoinHandle<()>>,
    buffer: mpsc::Receiver<Result<Received, BrokerError>>,
    /// FIFO queues only: one delivery per message group at a time.
    gate: Option<Arc<Gate<Received>>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for poller in &self.pollers {
            poller.abort();
        }
        let mut receipts = self
            .gate
            .as_ref()
            .map(|gate| gate.drain())
            .unwrap_or_default();
        while let Ok(Ok(received)) = self.buffer.try_recv() {
            receipts.extend(received.receipt());
        }
        if receipts.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(release_all(Arc::clone(&self.ctx), receipts, None));
        }
    }
}

async fn poll(
    ctx: Arc<QueueCtx>,
    buffer: mpsc::Sender<Result<Received, BrokerError>>,
    batch: usize,
    visibility: Option<i32>,
) {
    loop {
        // Room first: never receive more than the buffer can hold.
        let Ok(permits) = buffer.reserve_many(batch).await else {
            return;
        };
        let asked = Instant::now();
        let received = ctx
            .client
            .receive_message()
            .queue_url(&ctx.info.url)
            .max_number_of_messages(i32::try_from(batch).unwrap_or(10))
            .wait_time_seconds(WAIT)
            .set_visibility_timeout(visibility)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_attribute_names("All")
            .send()
            .await;
        match received {
            Ok(output) => {
                ctx.reachable.store(true, Ordering::Relaxed);
                let responded = Instant::now();
                let at = responded
                    .checked_sub(LEASE_MARGIN)
                    .unwrap_or(asked)
                    .max(asked);
                for (permit, message) in permits.zip(output.messages.unwrap_or_default()) {
                    permit.send(Ok(Received {
                        message,
                        at,
                        responded,
                    }));
                }
            }
            Err(error) => {
                let error = broker_error(error, &ctx.name);
                ctx.reachable
                    .store(!error.is_transient(), Ordering::Relaxed);
                if error.is_transient() {
                    tracing::warn!(queue = %ctx.name, %error, "receive failed; retrying");
                    drop(permits);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    let mut permits = permits;
                    if let Some(permit) = permits.next() {
                        permit.send(Err(error));
                    }
                    return;
                }
            }
        }
    }
}

/// The group of a FIFO message.
fn group_of(received: &Received) -> Option<String> {
    received
        .message
        .attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .cloned()
}

/// Turns a received message into a delivery; or, for one that is not due yet or waited in
/// the buffer nearly a whole lease, starts a task that sends it on or hands it back
/// (`None`): the stream itself only yields deliveries.
fn deliver(
    ctx: &Arc<QueueCtx>,
    received: Received,
    lease: Duration,
    gate: Option<GroupGate>,
) -> Option<Delivery> {
    let Received {
        message: sqs, at, ..
    } = received;
    let receipt = sqs.receipt_handle().unwrap_or_default().to_owned();
    let system = sqs.attributes();
    let system_attribute =
        |name: &MessageSystemAttributeName| system.and_then(|a| a.get(name)).cloned();
    let receive_count = system_attribute(&MessageSystemAttributeName::ApproximateReceiveCount)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(1);
    let group = system_attribute(&MessageSystemAttributeName::MessageGroupId);
    let (mut message, due_at) =
        wire::decode(sqs.body(), sqs.message_attributes(), sqs.message_id());
    let deadline = at + lease;
    let sqs_id = sqs.message_id().unwrap_or_default().to_owned();
    let acknowledger = SqsAcknowledger::new(
        Arc::clone(ctx),
        receipt,
        message.id.clone(),
        sqs_id,
        group,
        deadline,
        gate,
    );

    if let Some(remaining) = due_at.and_then(|due| due.duration_since(SystemTime::now()).ok()) {
        message.delay = Some(remaining);
        tokio::spawn(send_on(acknowledger, message));
        return None;
    }
    if deadline.saturating_duration_since(Instant::now()) < lease / 10 {
        tokio::spawn(hand_back(acknowledger));
        return None;
    }
    let delivery = Delivery::new(
        message,
        Attempt::new(receive_count),
        ctx.name.clone(),
        acknowledger,
    )
    .with_lease_until(lease, deadline)
    // A retry waits as a visibility timeout: whole seconds.
    .with_retry_unit(Duration::from_secs(1));
    Some(delivery)
}

pub(crate) fn consume(ctx: Arc<QueueCtx>, options: &ConsumeOptions) -> DeliveryStream {
    let prefetch = usize::from(options.prefetch.max(1));
    let batch = prefetch.min(10);
    let visibility = options
        .visibility_timeout
        .map(|v| seconds_up(v).clamp(0, 43_200));
    let lease = options.visibility_timeout.map_or(ctx.info.visibility, |v| {
        Duration::from_secs(seconds_up(v).max(0) as u64)
    });
    let (sender, buffer) = mpsc::channel(prefetch);
    let pollers = (0..prefetch.div_ceil(10).min(8))
        .map(|_| tokio::spawn(poll(Arc::clone(&ctx), sender.clone(), batch, visibility)))
        .collect();
    let gate = ctx.info.fifo.then(Gate::new);
    let guard = Guard {
        ctx,
        pollers,
        buffer,
        gate,
    };
    futures_util::stream::unfold(guard, move |mut guard| async move {
        loop {
            let received = match guard.gate.as_ref().and_then(|gate| gate.next_ready()) {
                // A held FIFO message whose turn came: its group is already marked busy.
                Some(ready) => ready,
                None => {
                    let woken = async {
                        match &guard.gate {
                            Some(gate) => gate.ready.notified().await,
                            None => std::future::pending().await,
                        }
                    };
                    let received = tokio::select! {
                        item = guard.buffer.recv() => match item? {
                            Ok(received) => received,
                            Err(error) => return Some((Err(error), guard)),
                        },
                        () = woken => continue,
                    };
                    match (&guard.gate, group_of(&received)) {
                        (Some(gate), Some(group)) => match gate.admit(&group, received) {
                            Admit::Deliver(received) => received,
                            Admit::Held => continue,
                            Admit::Return(early, until) => {
                                let receipts = early.receipt().into_iter().collect();
                                tokio::spawn(release_all(Arc::clone(&guard.ctx), receipts, until));
                                continue;
                            }
                        },
                        _ => received,
                    }
                }
            };
            let gate = match (&guard.gate, group_of(&received)) {
                (Some(gate), Some(group)) => Some((Arc::clone(gate), group)),
                _ => None,
            };
            if let Some(delivery) = deliver(&guard.ctx, received, lease, gate) {
                return Some((Ok(delivery), guard));
            }
        }
    })
    .boxed()
}
