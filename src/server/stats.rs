//! A server's operation counters, read into every heartbeat ([`ServerStats`]): the
//! coordinator learns the load from messages it gets anyway, never from one per operation.
//! Relaxed atomics: each count is independent, and a heartbeat that reads one a moment
//! early only moves it to the next heartbeat.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::protocol::{OpKind, ServerStats};

/// Client operations answered, by kind and outcome (`[done, refused]`).
#[derive(Default)]
pub struct OpCounters {
    counts: [[AtomicU64; 2]; 3],
}

impl OpCounters {
    pub fn count(&self, kind: OpKind, done: bool) {
        let outcome = if done { 0 } else { 1 };
        self.counts[kind as usize][outcome].fetch_add(1, Ordering::Relaxed);
    }

    /// Fills `stats.ops`.
    pub fn read_into(&self, stats: &mut ServerStats) {
        for (row, counts) in stats.ops.iter_mut().zip(&self.counts) {
            for (value, count) in row.iter_mut().zip(counts) {
                *value = count.load(Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_kind_and_outcome() {
        let counters = OpCounters::default();
        counters.count(OpKind::Put, true);
        counters.count(OpKind::Put, true);
        counters.count(OpKind::Get, false);
        let mut stats = ServerStats::default();
        counters.read_into(&mut stats);
        assert_eq!(stats.ops, [[0, 1], [2, 0], [0, 0]]);
        assert_eq!(stats.total_ops(), 3);
    }
}
