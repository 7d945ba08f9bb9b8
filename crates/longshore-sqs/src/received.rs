//! [`Received`]: a message as SQS handed it out, with when its lease started. The receive
//! loops ([`crate::consume`]) make them; the FIFO gate ([`crate::fifo`]) holds them;
//! settlement ([`crate::settle`]) names them in the gate's type.

use tokio::time::Instant;

use crate::fifo::Held;

pub(crate) struct Received {
    pub(crate) message: aws_sdk_sqs::types::Message,
    /// When its lease started, as late as we can be sure of (see [`LEASE_MARGIN`]).
    pub(crate) at: Instant,
    /// When the receive response arrived.
    pub(crate) responded: Instant,
}

impl Held for Received {
    fn receipt(&self) -> Option<String> {
        self.message.receipt_handle().map(str::to_owned)
    }

    fn responded(&self) -> Instant {
        self.responded
    }

    fn sqs_id(&self) -> Option<String> {
        self.message.message_id().map(str::to_owned)
    }
}
