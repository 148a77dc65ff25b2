//! A server's lease: how long it may serve after a heartbeat answer, and when it has surely
//! stopped. Plain arithmetic, shared by the recovery machine and the heartbeat counters.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The lease granted with each heartbeat answer, and the arithmetic of when one has surely
/// run out. Plain data: the recovery state machine computes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub granted: Duration,
}

impl Lease {
    /// A server's lease ends before the coordinator could act on its silence (`timeout`),
    /// by a margin: a paused or cut-off server stops answering before its keys move.
    pub fn for_timeout(timeout: Duration) -> Self {
        Lease { granted: timeout / 2 }
    }

    /// Extra wait after a lease ends, for clock-rate differences between hosts.
    pub fn margin(self) -> Duration {
        (self.granted / 10).max(Duration::from_millis(50))
    }

    /// How long after its last answered heartbeat a fenced server may still serve.
    pub fn wait(self) -> Duration {
        self.granted + self.margin()
    }

    /// When a server last heard at `heard` (and fenced since) has surely stopped serving.
    pub fn surely_over(self, heard: Instant) -> Instant {
        heard + self.wait()
    }
}
