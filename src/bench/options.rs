//! What a run measures: the operation types and the `client bench` parameters, checked
//! before anything connects.

use std::str::FromStr;
use std::time::Duration;

use crate::protocol::MAX_VALUE_LEN;
use crate::server::MAX_CLIENT_CONNECTIONS;

/// The bench keeps a bit per key (which were written, so that a GET can be checked): 125 MB
/// at this size. (At 10^12 it tried to allocate 125 GB and aborted.)
const MAX_KEYSPACE: u64 = 1_000_000_000;

/// An operation type to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BenchOp {
    Put,
    Get,
}

impl BenchOp {
    pub fn name(self) -> &'static str {
        match self {
            BenchOp::Put => "put",
            BenchOp::Get => "get",
        }
    }
}

impl FromStr for BenchOp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "put" | "set" => Ok(BenchOp::Put),
            "get" => Ok(BenchOp::Get),
            _ => Err(format!("unknown test {s:?} (expected put or get)")),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `host:port` of the coordinator's clients port.
    pub coordinator: String,
    /// Requests per operation type (ignored when `duration` is set).
    pub requests: u64,
    /// Run each operation type for this long instead of `requests` requests.
    pub duration: Option<Duration>,
    /// Concurrent workers, each with its own connection to every server.
    pub connections: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Requests in flight per worker.
    pub pipeline: usize,
    /// Operation types; run in the order put, get whatever the order given.
    pub ops: Vec<BenchOp>,
    /// Keys are drawn uniformly from `key:000000000000` .. `key:<keyspace - 1>`.
    pub keyspace: u64,
    /// How long one request keeps retrying before it counts as an error.
    pub timeout: Duration,
    /// Show a progress line on standard error.
    pub progress: bool,
}

impl BenchOptions {
    /// Refuses what cannot run, naming the flag (the messages are `client bench`'s).
    pub(super) fn check(&self) -> Result<(), String> {
        if self.requests == 0 && self.duration.is_none() {
            return Err("-n must be at least 1".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be positive".into());
        }
        if self.connections == 0 {
            return Err("-c must be at least 1".into());
        }
        if self.connections > MAX_CLIENT_CONNECTIONS {
            // Past it a server closes the connections it cannot take, which showed as
            // unexplained broken connections.
            return Err(format!(
                "-c {} is more than a server serves: at most {MAX_CLIENT_CONNECTIONS} client \
                 connections each (every worker opens one to each server)",
                self.connections
            ));
        }
        if self.pipeline == 0 {
            return Err("-P must be at least 1".into());
        }
        if self.keyspace == 0 || self.keyspace > MAX_KEYSPACE {
            return Err(format!("-r must be between 1 and {MAX_KEYSPACE}"));
        }
        if self.value_size > MAX_VALUE_LEN {
            return Err(format!("-d must be at most {MAX_VALUE_LEN}"));
        }
        if self.ops.is_empty() {
            return Err("-t names no test".into());
        }
        Ok(())
    }
}

/// Descriptors the process needs beside its connections (standard streams, the runtime's,
/// a connection to the coordinator, a log file).
const SPARE_FILES: u64 = 64;

/// Raises the open-file limit, then refuses a run whose connections would not fit in it:
/// each of `connections` workers holds one to each of `servers` servers. (Past the limit the
/// connects failed midway with "Too many open files", naming no limit.)
pub(super) fn check_open_files(connections: usize, servers: usize) -> Result<(), String> {
    crate::listener::raise_fd_limit();
    let needed = (connections * servers) as u64 + SPARE_FILES;
    match rlimit::getrlimit(rlimit::Resource::NOFILE) {
        Ok((limit, _)) if limit < needed => Err(format!(
            "-c {connections} needs about {needed} open files ({connections} connections to \
             each of {servers} servers) and this process may open {limit} (ulimit -n)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_parse_with_redis_names() {
        assert_eq!("put".parse::<BenchOp>(), Ok(BenchOp::Put));
        assert_eq!("SET".parse::<BenchOp>(), Ok(BenchOp::Put));
        assert_eq!("get".parse::<BenchOp>(), Ok(BenchOp::Get));
        assert!("del".parse::<BenchOp>().is_err());
    }
}
