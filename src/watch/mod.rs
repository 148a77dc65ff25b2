//! `client watch`: the cluster live. It subscribes on the coordinator's clients port
//! ([`CoordRequest::Watch`]) and gets a snapshot every 100 ms and every event as it
//! happens, so a recovery of a few milliseconds shows every step with its duration. On a
//! terminal it is a full-screen view (`screen`); otherwise it prints one line per event
//! (`plain`).
//!
//! - `model`: the last snapshot and events, and their wording (no terminal);
//! - `screen`: the full-screen view (ratatui, crossterm), until `q` or ctrl+c;
//! - `plain`: event lines, for a pipe or a file.

mod model;
mod plain;
mod screen;

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

pub use model::{Model, describe, line};
pub use plain::opening_lines;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::protocol::{CoordRequest, CoordResponse, Hello, Role, WatchMessage};

/// Subscribes on the coordinator's clients port at `coordinator` (`host:port`; of a list,
/// the first).
pub async fn subscribe(coordinator: &str) -> Result<Connection> {
    let first = coordinator.split(',').next().unwrap_or(coordinator);
    let mut conn = Connection::connect(first, &Hello::new(Role::Client, &[])).await?;
    conn.send(&CoordRequest::Watch).await?;
    Ok(conn)
}

/// The next message of a subscription; `None`: the coordinator ended it. The connection
/// must be kept whole while watching: its end (even of the sending half) ends the stream.
pub async fn next(conn: &mut Connection) -> Result<Option<WatchMessage>> {
    match conn.recv::<CoordResponse>().await? {
        Some(CoordResponse::Watch(message)) => Ok(Some(message)),
        Some(CoordResponse::NotLeader { leader }) => Err(Error::Unavailable(format!(
            "this coordinator stands by; watch the leader ({})",
            leader.as_deref().unwrap_or("none elected yet")
        ))),
        Some(other) => Err(Error::Protocol(format!("coordinator answered {other:?}"))),
        None => Ok(None),
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Watches until `q` or ctrl+c on a terminal (`terminal`), or until the coordinator ends
/// the stream or standard output is closed otherwise.
pub async fn run(coordinator: String, terminal: bool) -> std::result::Result<(), String> {
    if terminal {
        return screen::run(&coordinator).await;
    }
    let mut conn = subscribe(&coordinator)
        .await
        .map_err(|e| format!("cannot watch the coordinator at {coordinator}: {e}"))?;
    let mut out = std::io::stdout().lock();
    let mut opened = false;
    while let Some(message) = next(&mut conn).await.map_err(|e| e.to_string())? {
        match plain::write(&mut out, &message, &mut opened, now_ms()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            written => written.map_err(|e| format!("writing standard output: {e}"))?,
        }
    }
    let _ = out.flush();
    Err("the coordinator ended the watch (it stopped)".into())
}
