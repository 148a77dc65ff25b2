//! Heartbeats, leases and fencing: what decides that a server is gone, and when its keys may
//! move without it still answering for them.
//!
//! The port handlers record heartbeats and check incarnations concurrently with the main
//! loop, so the counters are atomics. Their ordering is what makes fencing safe; it is kept
//! in one place, [`Liveness::fence`], which is the only way to change an incarnation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::coord::recovery::Lease;

/// Per server id: the incarnation whose reports are accepted, and when it was last heard.
pub struct Liveness {
    pub lease: Lease,
    origin: Instant,
    incarnations: Vec<AtomicU64>,
    /// Microseconds since `origin`.
    last_heartbeat: Vec<AtomicU64>,
}

impl Liveness {
    pub fn new(servers: u32, lease: Lease) -> Self {
        Liveness {
            lease,
            origin: Instant::now(),
            incarnations: (0..servers).map(|_| AtomicU64::new(0)).collect(),
            last_heartbeat: (0..servers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// How many servers the cluster has (ids are below it).
    pub fn servers(&self) -> u32 {
        self.incarnations.len() as u32
    }

    /// Fences server `id`: from now on only `incarnation` gets answers (and leases). Returns
    /// the last heartbeat, read after the fence: together with [`heartbeat`](Self::heartbeat)
    /// recording before it checks, this read sees every heartbeat that an older incarnation
    /// got a lease for (both sides use SeqCst), so a lease computed from it is the last one.
    pub fn fence(&self, id: u32, incarnation: u64) -> Instant {
        self.incarnations[id as usize].store(incarnation, Ordering::SeqCst);
        self.last_heartbeat(id)
    }

    /// Whether reports from (`id`, `incarnation`) are still accepted.
    pub fn is_current(&self, id: u32, incarnation: u64) -> bool {
        self.incarnations[id as usize].load(Ordering::SeqCst) == incarnation
    }

    /// Records a heartbeat from server `id` (before its incarnation is checked).
    pub fn heartbeat(&self, id: u32) {
        let now = Instant::now().saturating_duration_since(self.origin).as_micros() as u64;
        self.last_heartbeat[id as usize].store(now, Ordering::SeqCst);
    }

    /// Time of the last heartbeat from server `id`.
    pub fn last_heartbeat(&self, id: u32) -> Instant {
        self.origin + Duration::from_micros(self.last_heartbeat[id as usize].load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_surely_over_after_its_margin() {
        let lease = Lease::for_timeout(Duration::from_secs(1));
        assert_eq!(lease.granted, Duration::from_millis(500));
        assert_eq!(lease.margin(), Duration::from_millis(50), "at least 50 ms");
        let heard = Instant::now();
        assert_eq!(lease.surely_over(heard), heard + Duration::from_millis(550));
        let long = Lease::for_timeout(Duration::from_secs(20));
        assert_eq!(long.margin(), Duration::from_secs(1), "a tenth of the lease");
        assert_eq!(long.wait(), Duration::from_secs(11));
    }

    #[test]
    fn fencing_refuses_older_incarnations_and_returns_the_last_heartbeat() {
        let liveness = Liveness::new(3, Lease::for_timeout(Duration::from_secs(1)));
        assert!(liveness.is_current(1, 0));
        liveness.heartbeat(1);
        let heard = liveness.last_heartbeat(1);
        assert_eq!(liveness.fence(1, 1), heard);
        assert!(!liveness.is_current(1, 0));
        assert!(liveness.is_current(1, 1));
        assert!(liveness.is_current(2, 0), "other servers untouched");
    }
}
