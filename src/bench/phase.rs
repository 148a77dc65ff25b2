//! One phase of a run (a fill, or one measured operation type), and what its workers share
//! while it runs: which requests are left to claim, how many are done, which keys are stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::keys::{KeyPicker, StoredKeys};
use super::options::{BenchOp, BenchOptions};

/// One phase of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// Not measured: stores every key of the keyspace once, so that a `-t get` run reads
    /// keys that exist.
    Fill,
    /// Measured: `op` on random keys.
    Measure(BenchOp),
}

impl PhaseKind {
    /// How the report and the progress line call it.
    pub fn name(self) -> &'static str {
        match self {
            PhaseKind::Fill => "fill",
            PhaseKind::Measure(op) => op.name(),
        }
    }
}

/// What the workers of one phase share.
pub(super) struct Phase {
    pub(super) kind: PhaseKind,
    pub(super) op: BenchOp,
    /// Requests to run, or run until this instant.
    pub(super) limit: Limit,
    /// Keys in order (fill) or at random.
    pub(super) sequential: bool,
    claimed: AtomicU64,
    /// A request gave up (no answer before its deadline): claim no more.
    stopped: AtomicBool,
    /// Requests answered or given up: for the progress line.
    pub(super) done: AtomicU64,
    pub(super) stored: Arc<StoredKeys>,
    pub(super) keys: Arc<KeyPicker>,
    pub(super) value_size: usize,
    pub(super) pipeline: usize,
    pub(super) timeout: Duration,
}

#[derive(Clone, Copy)]
pub(super) enum Limit {
    Requests(u64),
    Until(Instant),
}

impl Phase {
    /// A fill puts every key once, in order; a measured phase runs `-n` requests or for
    /// `--duration`, from now, on random keys.
    pub(super) fn new(
        kind: PhaseKind,
        o: &BenchOptions,
        stored: Arc<StoredKeys>,
        keys: Arc<KeyPicker>,
    ) -> Self {
        let (op, limit, sequential) = match kind {
            PhaseKind::Fill => (BenchOp::Put, Limit::Requests(o.keyspace), true),
            PhaseKind::Measure(op) => {
                let limit = match o.duration {
                    Some(d) => Limit::Until(Instant::now() + d),
                    None => Limit::Requests(o.requests),
                };
                (op, limit, false)
            }
        };
        Phase {
            kind,
            op,
            limit,
            sequential,
            claimed: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            done: AtomicU64::new(0),
            stored,
            keys,
            value_size: o.value_size,
            pipeline: o.pipeline,
            timeout: o.timeout,
        }
    }

    /// Claims up to `want` new requests: `(first sequence number, count)`; none once the
    /// phase is stopped.
    pub(super) fn claim(&self, want: usize) -> (u64, usize) {
        if self.stopped.load(Ordering::Relaxed) {
            return (0, 0);
        }
        match self.limit {
            Limit::Requests(total) => {
                let first = self.claimed.fetch_add(want as u64, Ordering::Relaxed);
                (first, total.saturating_sub(first).min(want as u64) as usize)
            }
            Limit::Until(end) if Instant::now() < end => {
                (self.claimed.fetch_add(want as u64, Ordering::Relaxed), want)
            }
            Limit::Until(_) => (0, 0),
        }
    }

    /// Ends the phase early: a request found the service unavailable for a whole deadline,
    /// and the others would too (a run whose coordinator had died went on for every
    /// request of every phase, each waiting out its deadline).
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    /// Counts one request answered or given up.
    pub(super) fn count_done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_stop_at_the_total() {
        let phase = Phase {
            kind: PhaseKind::Fill,
            op: BenchOp::Put,
            limit: Limit::Requests(10),
            sequential: true,
            claimed: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            done: AtomicU64::new(0),
            stored: Arc::new(StoredKeys::new(100)),
            keys: Arc::new(KeyPicker::new(100, 3)),
            value_size: 3,
            pipeline: 4,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(phase.claim(4), (0, 4));
        assert_eq!(phase.claim(4), (4, 4));
        assert_eq!(phase.claim(4), (8, 2));
        assert_eq!(phase.claim(4).1, 0);
    }

    #[test]
    fn a_stopped_phase_claims_nothing() {
        let options = BenchOptions {
            coordinator: String::new(),
            requests: 10,
            duration: None,
            connections: 1,
            value_size: 3,
            pipeline: 4,
            ops: vec![BenchOp::Put],
            keyspace: 100,
            timeout: Duration::from_secs(1),
            progress: false,
        };
        let keys = Arc::new(KeyPicker::new(100, 3));
        let phase = Phase::new(PhaseKind::Fill, &options, Arc::new(StoredKeys::new(100)), keys);
        assert_eq!(phase.claim(4), (0, 4));
        phase.stop();
        assert_eq!(phase.claim(4).1, 0);
    }
}
