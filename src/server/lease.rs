//! The lease a server holds from the coordinator: it serves clients only while it is valid.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Expiry on the monotonic clock, as microseconds since the lease object was made.
pub struct Lease {
    origin: Instant,
    until_us: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Self::new()
    }
}

impl Lease {
    /// No lease yet: not valid until the first renewal.
    pub fn new() -> Self {
        Lease { origin: Instant::now(), until_us: AtomicU64::new(0) }
    }

    /// A lease of `length` granted for a heartbeat sent at `sent`. Counting from the send
    /// (not the answer) keeps the server's view strictly shorter than the coordinator's.
    pub fn renew(&self, sent: Instant, length: Duration) {
        let until = (sent + length).saturating_duration_since(self.origin).as_micros() as u64;
        self.until_us.fetch_max(until, Ordering::SeqCst);
    }

    pub fn is_valid(&self) -> bool {
        let now = Instant::now().saturating_duration_since(self.origin).as_micros() as u64;
        now < self.until_us.load(Ordering::SeqCst)
    }

    /// Time left, zero when expired.
    pub fn remaining(&self) -> Duration {
        let now = Instant::now().saturating_duration_since(self.origin).as_micros() as u64;
        Duration::from_micros(self.until_us.load(Ordering::SeqCst).saturating_sub(now))
    }
}
