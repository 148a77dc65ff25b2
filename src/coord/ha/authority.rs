//! Whether this coordinator may still act as the cluster's coordinator, and for how long.
//!
//! With its state file, a coordinator's authority lasts as long as its process (it holds
//! the file's lock). Elected through etcd, it lasts only while its etcd lease surely lives:
//! a keep-alive sent at `sent` and answered with `ttl` keeps the lease until `sent + ttl` at
//! the earliest (etcd counts from when it received the request, which is later), less a
//! margin for the two clocks' rates. Past that instant another coordinator may lead, so
//! this one grants no server lease reaching beyond it and does nothing at all once it is
//! past. The clock is monotonic: a coordinator paused by SIGSTOP wakes up past its instant,
//! whatever its timers say.
//!
//! Past it, a leader waits (acting on nothing) for a keep-alive to renew it: one answered
//! proves the lease lived through, so no one else led meanwhile. That is what happens while
//! etcd elects a new leader of its own (keep-alives go unanswered for about a second, and
//! etcd keeps every lease across it, extended). Only when none comes within the grace, or
//! etcd says the lease is gone, does the leader step down (see `step_down`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::step_down::step_down;
use crate::lines;

/// Holds authority until an instant that keep-alives push forward.
pub struct Authority {
    origin: Instant,
    /// Microseconds since `origin` until which the authority surely holds; `u64::MAX`:
    /// for the process's lifetime.
    until_us: AtomicU64,
    /// How long a lapsed authority is waited for before stepping down.
    grace: Duration,
}

impl Authority {
    /// The state file's lock: held as long as the process lives.
    pub fn lifelong() -> Self {
        Authority {
            origin: Instant::now(),
            until_us: AtomicU64::new(u64::MAX),
            grace: Duration::ZERO,
        }
    }

    /// An etcd lease of `ttl`'s: holds nothing until the first keep-alive is answered. A
    /// lapse is waited out for two TTLs and a second: etcd's own election takes about a
    /// second at its tuned timings, a few at its defaults (and a TTL is at least 1.5 of its
    /// election timeouts).
    pub fn leased(ttl: Duration) -> Self {
        let grace = 2 * ttl + Duration::from_secs(1);
        Authority { origin: Instant::now(), until_us: AtomicU64::new(0), grace }
    }

    /// How long a lapse is waited out (also how long a leader retries a call to etcd).
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Returns at once while the authority holds. Otherwise waits, and the caller acts on
    /// nothing meanwhile, until a keep-alive renews it; steps down if none does within the
    /// grace.
    pub async fn ensure(&self) {
        if self.holds() {
            return;
        }
        warn!("{}; waiting for a keep-alive", lines::AUTHORITY_LAPSED);
        let lapsed = Instant::now();
        while !self.holds() {
            if lapsed.elapsed() >= self.grace {
                step_down(lines::AUTHORITY_LAPSED);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!(waited_ms = lapsed.elapsed().as_millis() as u64, "etcd lease renewed: leading on");
    }

    /// [`ensure`](Self::ensure) from the event loop's synchronous code: blocks its thread
    /// (the runtime's others go on serving the ports, granting no lease meanwhile).
    pub fn ensure_blocking(&self) {
        if !self.holds() {
            crate::coord::ha::store::block_on(self.ensure());
        }
    }

    /// Margin taken off a lease for the clocks' rates: a tenth, at least 50 ms.
    fn margin(ttl: Duration) -> Duration {
        (ttl / 10).max(Duration::from_millis(50))
    }

    /// A keep-alive sent at `sent` was answered: the lease lives `ttl` from then.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        let until =
            (sent + ttl.saturating_sub(Self::margin(ttl))).saturating_duration_since(self.origin);
        self.until_us.fetch_max(until.as_micros() as u64, Ordering::SeqCst);
    }

    /// How long from now the authority surely holds (zero once it may have lapsed).
    pub fn remaining(&self) -> Duration {
        match self.until_us.load(Ordering::SeqCst) {
            u64::MAX => Duration::MAX,
            us => {
                (self.origin + Duration::from_micros(us)).saturating_duration_since(Instant::now())
            }
        }
    }

    pub fn holds(&self) -> bool {
        !self.remaining().is_zero()
    }

    /// The server lease to grant now, at most `wanted`: it must end, with the server's own
    /// `margin`, before this authority may lapse (zero: no lease at all).
    pub fn lease(&self, wanted: Duration, margin: Duration) -> Duration {
        wanted.min(self.remaining().saturating_sub(margin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lifelong_authority_grants_every_lease() {
        let authority = Authority::lifelong();
        assert!(authority.holds());
        let wanted = Duration::from_millis(500);
        assert_eq!(authority.lease(wanted, Duration::from_millis(50)), wanted);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leased_authority_shortens_then_refuses_leases_and_lapses() {
        let authority = Authority::leased(Duration::from_secs(1));
        let margin = Duration::from_millis(50);
        let wanted = Duration::from_millis(500);
        assert!(!authority.holds(), "nothing before the first keep-alive");
        assert_eq!(authority.lease(wanted, margin), Duration::ZERO);

        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(5)).await;
        authority.renewed(sent, Duration::from_secs(1));
        // 1 s less its 100 ms margin, counted from the sending.
        assert_eq!(authority.remaining(), Duration::from_millis(895));
        assert_eq!(authority.lease(wanted, margin), wanted);

        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(authority.lease(wanted, margin), Duration::from_millis(345), "shortened");
        // An older answer arriving late moves nothing back.
        authority.renewed(sent - Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(authority.remaining(), Duration::from_millis(395));

        tokio::time::advance(Duration::from_millis(350)).await;
        assert_eq!(authority.lease(wanted, margin), Duration::ZERO, "inside the margin");
        assert!(authority.holds());
        tokio::time::advance(Duration::from_millis(45)).await;
        assert!(!authority.holds(), "lapsed: another coordinator may lead");
    }
}
