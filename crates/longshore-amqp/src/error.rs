//! Mapping lapin's errors to [`BrokerError`].

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use longshore_core::{BrokerError, QueueName};

/// Maps a lapin error; `queue` names the queue the operation was about.
pub(crate) fn broker_error(error: lapin::Error, queue: &QueueName) -> BrokerError {
    match error.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => BrokerError::QueueNotFound {
                queue: queue.clone(),
            },
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => BrokerError::Topology {
                queue: queue.clone(),
                problem: format!(
                    "it exists with other settings than longshore declares ({}); delete it, or \
                     plug into it as it is with Topology::Verify",
                    amqp.get_message()
                ),
            },
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => BrokerError::Topology {
                queue: queue.clone(),
                problem: format!("the broker refused access ({})", amqp.get_message()),
            },
            _ => BrokerError::Other(Box::new(error)),
        },
        ErrorKind::IOError(_)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::MissingHeartbeatError => BrokerError::Connection(Box::new(error)),
        _ => BrokerError::Other(Box::new(error)),
    }
}
