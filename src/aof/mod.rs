//! The append-only log of a server's two tables (`server_<id>.aof`): every change to either
//! table, so that a crash of every process at once loses nothing acknowledged.
//!
//! - [`format`]: the header and the records, each `length | crc32c | body`;
//! - [`load`]: reading a log back at a start after a crash, a torn last record cut off,
//!   damage anywhere before it refused ([`read`]: the same, changing nothing, for the
//!   coordinator that reshards a crashed cluster's logs);
//! - [`writer`]: appending, and the syncs (group commit: one `fdatasync` for every write
//!   that arrived while the previous one ran);
//! - [`rewrite`]: compaction in the background, once a log has outgrown its live data.

mod format;
mod load;
mod rewrite;
mod writer;

pub use format::{Change, cluster_digest, entry_len};
pub use load::{Loaded, read};
pub use rewrite::Rewritten;
pub use writer::Log;

use std::path::PathBuf;

/// When the log is synced to disk (the names of Redis's `appendfsync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// A write is acknowledged only once it is on disk (`fdatasync`, shared by the
    /// writes that arrived while the previous one ran).
    #[default]
    Always,
    /// Synced once a second: a crash of the machine loses at most the last second.
    EverySec,
    /// Left to the kernel.
    No,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "no" => Ok(FsyncPolicy::No),
            _ => Err(format!("{s:?} is not a sync policy: always, everysec or no")),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        })
    }
}

/// Everything that can go wrong with a log. A message names the file, and where it is
/// damaged, the offset.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {what}: {err}")]
    Io { path: PathBuf, what: &'static str, err: std::io::Error },
    #[error(
        "{path}: damaged record at offset {offset} ({why}), before the end of the log (a crash \
         only ever cuts the last record): refused, nothing was changed; move the file aside to \
         start this server without it (its copy on the next server holds its keys), or start \
         the cluster with --fresh"
    )]
    Damaged { path: PathBuf, offset: u64, why: String },
    #[error("{path} is not a log of ftkv ({why}); nothing was changed")]
    NotALog { path: PathBuf, why: String },
    #[error(
        "{path} belongs to another cluster (another cluster token); nothing was changed: move it \
         aside, or start with --fresh"
    )]
    OtherCluster { path: PathBuf },
    #[error("{path} is the log of server {found}, not of server {expected}; nothing was changed")]
    OtherServer { path: PathBuf, found: u32, expected: u32 },
    #[error("no log at {path}: the server has nothing to start from (--fresh starts empty)")]
    Missing { path: PathBuf },
    /// An append or a sync failed: the write is not stored (the text of the I/O error).
    #[error("{0}")]
    NotStored(String),
}

#[cfg(test)]
mod compaction_tests;
#[cfg(test)]
mod tests;
