//! [`Feed`]: the worker's delivery stream, re-opened with backoff when it fails or ends.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures_util::StreamExt;

use crate::broker::{Broker, ConsumeOptions, DeliveryStream};
use crate::delivery::Delivery;
use crate::names::QueueName;
use crate::runtime::health::Health;

pub(crate) struct Feed {
    broker: Arc<dyn Broker>,
    queue: QueueName,
    options: ConsumeOptions,
    stream: Option<DeliveryStream>,
    backoff: ExponentialBackoff,
    /// The backoff was used since the last delivery (so it starts over at the next one).
    backed_off: bool,
    health: Health,
}

fn reconnect_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Feed {
    pub(crate) fn new(
        broker: Arc<dyn Broker>,
        queue: QueueName,
        options: ConsumeOptions,
        health: Health,
    ) -> Self {
        Self {
            health,
            broker,
            queue,
            options,
            stream: None,
            backoff: reconnect_backoff(),
            backed_off: false,
        }
    }

    /// The next delivery. Errors are logged and waited out with backoff, so this only
    /// returns a delivery; callers stop it by dropping the future (cancel-safe).
    pub(crate) async fn next(&mut self) -> Delivery {
        loop {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => match self.broker.consume(&self.queue, &self.options).await {
                    Ok(stream) => {
                        tracing::debug!(queue = %self.queue, "consuming");
                        self.health.set_consuming(true);
                        self.stream.insert(stream)
                    }
                    Err(error) => {
                        self.health.set_consuming(false);
                        tracing::error!(queue = %self.queue, %error, "cannot consume; retrying");
                        self.pause().await;
                        continue;
                    }
                },
            };
            match stream.next().await {
                Some(Ok(delivery)) => {
                    if self.backed_off {
                        self.backoff = reconnect_backoff();
                        self.backed_off = false;
                    }
                    return delivery;
                }
                Some(Err(error)) => {
                    tracing::warn!(queue = %self.queue, %error, "consumer error; reopening");
                    self.health.set_consuming(false);
                    self.stream = None;
                    self.pause().await;
                }
                None => {
                    tracing::warn!(queue = %self.queue, "consumer stream ended; reopening");
                    self.health.set_consuming(false);
                    self.stream = None;
                    self.pause().await;
                }
            }
        }
    }

    async fn pause(&mut self) {
        self.backed_off = true;
        let delay = self.backoff.next().unwrap_or(Duration::from_secs(10));
        tracing::debug!(queue = %self.queue, delay_ms = delay.as_millis() as u64, "consuming again after a pause");
        tokio::time::sleep(delay).await;
    }
}
