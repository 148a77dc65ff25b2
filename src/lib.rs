//! ftkv: a 1-fault-tolerant, replicated, in-memory key-value service.
//!
//! Three programs share this library:
//! - `server` ([`server`]): holds a primary table (its own keys) and a secondary table (the
//!   keys of the previous server), copies every write to the next server over an ordered
//!   stream, and answers a client only once both copies hold the write.
//! - `coord` ([`coord`]): spawns the servers, hands out the epoch-stamped configuration,
//!   watches heartbeats, grants leases, and shuts everything down in order.
//! - `client` ([`client`]): routes each key to its owner (MD5 mod N), keeps connections
//!   open, and retries across configuration changes until a deadline; `client bench`
//!   ([`bench`](mod@bench)) is its load generator, `client watch` ([`watch`]) the cluster live.
//!
//! The wire format lives in [`protocol`] and [`connection`]; key placement in [`routing`].

pub mod aof;
pub mod bench;
pub mod client;
pub mod config;
pub mod connection;
pub mod coord;
pub mod coordinators;
pub mod dumpfile;
pub mod error;
pub mod lines;
pub mod listener;
pub mod logging;
pub mod manifest;
pub mod protocol;
pub mod routing;
pub mod server;
pub mod text;
pub mod watch;

pub use error::{Error, Result};
