//! The coordinator's event hub: what `client watch` and the metrics see. The event loop
//! [`emit`](Hub::emit)s events as they happen (a server lost, each recovery step done, a
//! rollback, a recovery complete); the report port records each heartbeat's counters.
//!
//! The loop must never wait on a watcher, so every watcher has a bounded queue that is
//! filled with `try_send`: a watcher that does not read fills it and is dropped, never
//! slowing anything else.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::coord::observe::metrics::Metrics;
use crate::coord::observe::progress::Track;
use crate::protocol::{ClusterEvent, EventKind, ServerStats};

/// Events queued for one watcher before it counts as not reading, and is dropped.
pub const WATCHER_QUEUE: usize = 1024;
/// Most watchers at once: each costs a snapshot every 100 ms, on the runtime that also
/// runs the event loop.
pub const MAX_WATCHERS: usize = 64;
/// Events kept for a new watcher (it sees the last recovery even if it connects after).
const RECENT: usize = 64;
/// Operations per second are counted over at least this long.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// The last counters heard from one server, and its rate of operations.
#[derive(Debug, Clone, Copy)]
struct Heard {
    stats: ServerStats,
    incarnation: u64,
    /// Where the current rate window began: (when, total operations then).
    base: (Instant, u64),
    ops_per_sec: f64,
}

#[derive(Default)]
struct Inner {
    watchers: Vec<mpsc::Sender<ClusterEvent>>,
    recent: VecDeque<ClusterEvent>,
    recovery: Option<Track>,
}

/// Events and counters, shared by the event loop, the port handlers and the watchers.
pub struct Hub {
    inner: Mutex<Inner>,
    heard: Mutex<Vec<Option<Heard>>>,
    pub metrics: Metrics,
}

impl Hub {
    pub fn new(servers: u32) -> Self {
        Hub {
            inner: Mutex::default(),
            heard: Mutex::new(vec![None; servers as usize]),
            metrics: Metrics::default(),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event and queues it for every watcher; those whose queue is full (they
    /// do not read) or closed are dropped. Never waits.
    pub fn emit(&self, kind: EventKind) {
        self.metrics.observe(&kind);
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let event = ClusterEvent { unix_ms: unix_ms as u64, kind };
        let mut inner = self.inner();
        inner.watchers.retain(|w| w.try_send(event.clone()).is_ok());
        if inner.recent.len() == RECENT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(event);
    }

    /// A new watcher: the recent events, and the queue of those to come; `None` when
    /// [`MAX_WATCHERS`] are watching.
    pub fn subscribe(&self) -> Option<(Vec<ClusterEvent>, mpsc::Receiver<ClusterEvent>)> {
        let mut inner = self.inner();
        inner.watchers.retain(|w| !w.is_closed());
        if inner.watchers.len() >= MAX_WATCHERS {
            return None;
        }
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        inner.watchers.push(tx);
        Some((inner.recent.iter().cloned().collect(), rx))
    }

    /// How many watchers are subscribed.
    #[cfg(test)]
    pub fn watchers(&self) -> usize {
        self.inner().watchers.len()
    }

    pub fn set_recovery(&self, track: Option<Track>) {
        self.inner().recovery = track;
    }

    pub fn recovery(&self) -> Option<Track> {
        self.inner().recovery.clone()
    }

    /// A heartbeat from (`id`, `incarnation`) carried `stats`.
    pub fn heard(&self, id: u32, incarnation: u64, stats: ServerStats) {
        let now = Instant::now();
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = heard.get_mut(id as usize) else { return };
        let total = stats.total_ops();
        match slot {
            Some(h) if h.incarnation == incarnation => {
                h.stats = stats;
                let (since, base) = h.base;
                let elapsed = now.saturating_duration_since(since);
                if elapsed >= RATE_WINDOW {
                    h.ops_per_sec = total.saturating_sub(base) as f64 / elapsed.as_secs_f64();
                    h.base = (now, total);
                }
            }
            _ => *slot = Some(Heard { stats, incarnation, base: (now, total), ops_per_sec: 0.0 }),
        }
    }

    /// Server `id` was lost: its counters are no longer current.
    pub fn forget(&self, id: u32) {
        if let Some(slot) =
            self.heard.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id as usize)
        {
            *slot = None;
        }
    }

    /// Per server id: the last counters and operations per second.
    pub fn stats(&self) -> Vec<Option<(ServerStats, f64)>> {
        let heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        heard.iter().map(|h| h.map(|h| (h.stats, h.ops_per_sec))).collect()
    }
}

/// Why a server was lost: the words of the log and the event, and the metrics label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Loss {
    /// The process is known to be gone: it cannot serve, even with a lease.
    #[error("process exited ({0})")]
    Exited(String),
    #[error("no heartbeat for {0:?}")]
    NoHeartbeat(std::time::Duration),
    #[error("report link lost ({0})")]
    ReportLinkLost(String),
    #[error("replication stream to server {copy} cut (no acknowledgement for {stalled_ms} ms)")]
    StreamCut { copy: u32, stalled_ms: u64 },
    #[error("it did not come back after the coordinator restarted")]
    NotBack,
}

impl Loss {
    /// The `cause` label of `ftkv_failures_total`.
    pub fn cause(&self) -> &'static str {
        match self {
            Loss::Exited(_) => "process_exited",
            Loss::NoHeartbeat(_) => "heartbeat_timeout",
            Loss::ReportLinkLost(_) => "report_link_lost",
            Loss::StreamCut { .. } => "stream_cut",
            Loss::NotBack => "not_back_after_restart",
        }
    }

    /// Whether the process is surely gone (no lease wait needed before its keys move).
    pub fn exited(&self) -> bool {
        matches!(self, Loss::Exited(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lost(server: u32) -> EventKind {
        let why = "no heartbeat".to_string();
        EventKind::ServerLost { server, pid: 1, why, cause: "heartbeat_timeout".into() }
    }

    #[test]
    fn a_watcher_that_does_not_read_is_dropped_and_the_others_keep_theirs() {
        let hub = Hub::new(3);
        let (_, mut reading) = hub.subscribe().unwrap();
        let (_, _never_read) = hub.subscribe().unwrap();
        for i in 0..WATCHER_QUEUE as u32 {
            hub.emit(lost(i % 3));
            reading.try_recv().unwrap();
        }
        assert_eq!(hub.watchers(), 2, "both queues had room");
        hub.emit(lost(0));
        assert_eq!(hub.watchers(), 1, "the full one is dropped");
        assert!(reading.try_recv().is_ok());
        let (recent, _) = hub.subscribe().unwrap();
        assert_eq!(recent.len(), RECENT, "a new watcher sees the last events");
    }

    #[test]
    fn watchers_are_limited_and_those_gone_make_room() {
        let hub = Hub::new(3);
        let mut kept: Vec<_> = (0..MAX_WATCHERS).map(|_| hub.subscribe().unwrap()).collect();
        assert!(hub.subscribe().is_none(), "one too many");
        kept.pop();
        assert!(hub.subscribe().is_some(), "a watcher that left made room");
    }

    #[test]
    fn counters_of_an_older_start_are_replaced() {
        let hub = Hub::new(2);
        let stats = ServerStats { primary_keys: 5, ..ServerStats::default() };
        hub.heard(1, 0, stats);
        assert_eq!(hub.stats()[1].unwrap().0.primary_keys, 5);
        hub.heard(1, 1, ServerStats::default());
        assert_eq!(hub.stats()[1].unwrap().0.primary_keys, 0);
        hub.forget(1);
        assert!(hub.stats()[1].is_none() && hub.stats()[0].is_none());
        hub.heard(7, 0, stats);
    }
}
