//! The library's one error type.

use std::io;

/// Everything that can go wrong in ftkv's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("frame larger than {max} bytes")]
    FrameTooLarge { max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(#[from] crate::routing::InvalidConfig),
    /// The dump directory cannot be restored or started on (see `coord::restore`).
    #[error(transparent)]
    Restore(#[from] crate::manifest::RestoreError),
    /// Two servers surely lost at once: the service stops in order (a coordinator taking a
    /// cluster back tells this from servers that are merely out of its reach).
    #[error("{0}")]
    DoubleFault(String),
    /// The coordinator replaced this server with a newer start of the same id.
    #[error("replaced by a newer server")]
    Replaced,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
