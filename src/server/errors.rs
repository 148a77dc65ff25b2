//! Why a server refuses what a peer asked of it. The coordinator and the sending server get
//! the message (the wire carries text); the server's own code decides by the variant.

use crate::protocol::TableKind;
use crate::routing::InvalidConfig;

/// Why a configuration from the coordinator was not installed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigRefused {
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error("{got} servers in the configuration, {expected} expected")]
    WrongSize { got: u32, expected: u32 },
    /// The configuration is for another start of this server id.
    #[error("configuration names incarnation {named} of server {id}")]
    OtherIncarnation { id: u32, named: u64 },
    #[error("epoch {epoch} is older than {current}")]
    Older { epoch: u64, current: u64 },
    /// The configuration is installed, but a slot handed away still had writes in flight:
    /// both replicators keep their modes.
    #[error("writes to the handed-back slot did not settle")]
    NotSettled,
    /// The log refused the change this configuration starts with (see `resync_secondary`).
    #[error(transparent)]
    NotLogged(#[from] crate::server::durable::NotLogged),
}

/// Why a replication stream, or one of its batches, was refused.
#[derive(Debug, thiserror::Error)]
pub enum StreamRefused {
    #[error("not configured yet")]
    NotConfigured,
    #[error("unknown server")]
    UnknownServer,
    #[error("server {id} incarnation {incarnation} was replaced")]
    SenderReplaced { id: u32, incarnation: u64 },
    #[error("server {id} does not serve its keys in epoch {epoch}")]
    SenderNotServing { id: u32, epoch: u64 },
    #[error("not being filled by server {id} in epoch {epoch}")]
    NotBeingFilled { id: u32, epoch: u64 },
    #[error("server {id} may not stream into my {into:?} table")]
    WrongTable { id: u32, into: TableKind },
    /// The stream was opened for another start of this server id.
    #[error("stream meant for incarnation {meant}, this is {this}")]
    OtherIncarnation { meant: u64, this: u64 },
    /// A newer stream from the same sender into the same table was opened.
    #[error("stream {stream} from server {id} superseded")]
    Superseded { stream: u64, id: u32 },
    /// This server's log refused the batch (a full disk): nothing of it was applied.
    #[error(transparent)]
    NotLogged(#[from] crate::server::durable::NotLogged),
}
