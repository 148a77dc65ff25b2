//! `client watch` with standard output not a terminal: the cluster as it was when the
//! watch began, then one line per event as it happens (a `tail -f` of the cluster).

use std::io::Write;

use super::model::{clock, line};
use crate::protocol::{ClusterSnapshot, WatchMessage};

/// One line per server, and the epoch, at the start.
pub fn opening_lines(snapshot: &ClusterSnapshot, unix_ms: u64) -> Vec<String> {
    let time = clock(unix_ms);
    let mut lines: Vec<String> = snapshot
        .status
        .servers
        .iter()
        .map(|s| format!("{time} server {} {} pid {} {}", s.id, s.host, s.pid, s.state.as_str()))
        .collect();
    lines.push(format!("{time} epoch {}", snapshot.status.epoch));
    lines
}

/// Writes the lines a message calls for; snapshots after the first add nothing.
pub fn write(
    out: &mut impl Write,
    message: &WatchMessage,
    opened: &mut bool,
    unix_ms: u64,
) -> std::io::Result<()> {
    match message {
        WatchMessage::Snapshot(snapshot) if !*opened => {
            *opened = true;
            for text in opening_lines(snapshot, unix_ms) {
                writeln!(out, "{text}")?;
            }
        }
        WatchMessage::Snapshot(_) => return Ok(()),
        WatchMessage::Event(event) => writeln!(out, "{}", line(event))?,
    }
    out.flush()
}
