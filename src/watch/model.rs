//! What `client watch` knows: the last snapshot and the last events, and how each is put
//! in words. No terminal here, so both views (screen and plain lines) share it and it is
//! unit-tested.

use std::collections::VecDeque;

use crate::protocol::{ClusterEvent, ClusterSnapshot, EventKind, WatchMessage};

/// Events kept for the screen.
const KEPT: usize = 200;

#[derive(Debug, Default)]
pub struct Model {
    pub snapshot: Option<ClusterSnapshot>,
    pub events: VecDeque<ClusterEvent>,
}

impl Model {
    pub fn apply(&mut self, message: WatchMessage) {
        match message {
            WatchMessage::Snapshot(snapshot) => self.snapshot = Some(snapshot),
            WatchMessage::Event(event) => {
                if self.events.len() == KEPT {
                    self.events.pop_front();
                }
                self.events.push_back(event);
            }
        }
    }
}

/// An event in words, one line.
pub fn describe(event: &EventKind) -> String {
    match event {
        EventKind::ServerLost { server, pid, why, .. } => {
            format!("server {server} lost (pid {pid}): {why}")
        }
        EventKind::RecoveryStarted { server } => format!("server {server}: recovery started"),
        EventKind::StepDone { server, step, ms } => {
            format!("server {server}: step {step} done in {ms} ms")
        }
        EventKind::KeysServed { server, ms } => {
            format!("server {server}: its keys are served again, {ms} ms after the loss")
        }
        EventKind::ServerStarted { server, pid, incarnation } => {
            format!("server {server}: new server started, pid {pid} (start {incarnation})")
        }
        EventKind::RolledBack { server, why, attempt } => {
            format!("server {server}: recovery rolled back to step 1 (attempt {attempt}): {why}")
        }
        EventKind::RecoveryComplete { server, ms, keys, bytes, attempts } => format!(
            "server {server} recovered in {ms} ms: {keys} key{} and {} copied, {attempts} attempt{}",
            plural(*keys),
            human_bytes(*bytes),
            plural(u64::from(*attempts))
        ),
        EventKind::ConfigPublished { epoch } => format!("epoch {epoch} published"),
        EventKind::Fatal { why } => format!("shutting down: {why}"),
        EventKind::StreamCut { owner, copy, stalled_ms, replaced: true } => format!(
            "server {owner}: replication to server {copy} cut ({stalled_ms} ms unacknowledged): \
             replacing server {owner}"
        ),
        EventKind::StreamCut { owner, copy, replaced: false, .. } => format!(
            "server {owner}: replication to server {copy} cut again: not replaced (backoff)"
        ),
        EventKind::StreamHealed { owner, copy } => {
            format!("server {owner}: replication to server {copy} flows again")
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
pub fn clock(unix_ms: u64) -> String {
    let ms = unix_ms % 86_400_000;
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}", ms % 1000)
}

/// An event as a plain line: its time (UTC) and what happened.
pub fn line(event: &ClusterEvent) -> String {
    format!("{} {}", clock(event.unix_ms), describe(&event.kind))
}

/// Bytes in B, KiB, MiB or GiB, one decimal.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_one_line_each() {
        let event = ClusterEvent {
            unix_ms: 1_700_000_123_456,
            kind: EventKind::RecoveryComplete {
                server: 1,
                ms: 29,
                keys: 3,
                bytes: 3 << 20,
                attempts: 1,
            },
        };
        assert_eq!(
            line(&event),
            "22:15:23.456 server 1 recovered in 29 ms: 3 keys and 3.0 MiB copied, 1 attempt"
        );
        let step = EventKind::StepDone { server: 2, step: "0 lease wait".into(), ms: 551 };
        assert_eq!(describe(&step), "server 2: step 0 lease wait done in 551 ms");
        assert_eq!(human_bytes(1023), "1023 B");
    }

    #[test]
    fn the_model_keeps_the_last_events_and_the_last_snapshot() {
        let mut model = Model::default();
        for epoch in 0..KEPT as u64 + 5 {
            let kind = EventKind::ConfigPublished { epoch };
            model.apply(WatchMessage::Event(ClusterEvent { unix_ms: 0, kind }));
        }
        assert_eq!(model.events.len(), KEPT);
        assert_eq!(model.events[0].kind, EventKind::ConfigPublished { epoch: 5 });
    }
}
