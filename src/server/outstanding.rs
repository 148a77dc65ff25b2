//! The count of a replicator's writes submitted and not yet answered, and a wait until there
//! are none (a slot handed away, a drain), woken by the last answer instead of polling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
pub(super) struct Outstanding {
    count: AtomicUsize,
    /// Callers inside [`settle`](Self::settle). Only then does the last answer wake anybody:
    /// waking takes the [`Notify`]'s lock, which the write path must not pay for nothing.
    settling: AtomicUsize,
    idle: Notify,
}

impl Outstanding {
    /// A write was submitted.
    pub fn add(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// A write was answered.
    pub fn answered(&self) {
        // SeqCst on both sides: either this sees the settler, or the settler (which counts
        // itself in before it reads the count) sees the count this left.
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1
            && self.settling.load(Ordering::SeqCst) > 0
        {
            self.idle.notify_waiters();
        }
    }

    pub fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits (up to `limit`) until every submitted write was answered.
    pub async fn settle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let _counted = Settling::enter(&self.settling);
        loop {
            // Registered before the count is read, so an answer in between still wakes it.
            let idle = self.idle.notified();
            if self.get() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.get() == 0;
            }
        }
    }
}

/// Counts a caller of [`Outstanding::settle`] for as long as it waits, also when its future
/// is dropped midway.
struct Settling<'a>(&'a AtomicUsize);

impl<'a> Settling<'a> {
    fn enter(settling: &'a AtomicUsize) -> Self {
        settling.fetch_add(1, Ordering::SeqCst);
        Settling(settling)
    }
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Time is paused and only moves when every task waits: a settle that slept or polled
    /// instead of being woken would see its whole limit go by.
    #[tokio::test(start_paused = true)]
    async fn the_last_answer_wakes_a_settle_at_once() {
        let outstanding = Arc::new(Outstanding::default());
        assert!(outstanding.settle(Duration::from_secs(60)).await, "nothing outstanding");
        outstanding.add();
        outstanding.add();
        let started = Instant::now();
        let settle = tokio::spawn({
            let outstanding = outstanding.clone();
            async move { outstanding.settle(Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        outstanding.answered();
        tokio::task::yield_now().await;
        assert!(!settle.is_finished(), "one write still outstanding");
        outstanding.answered();
        assert!(settle.await.unwrap());
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(outstanding.settling.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_settle_gives_up_at_its_limit() {
        let outstanding = Outstanding::default();
        outstanding.add();
        let started = Instant::now();
        assert!(!outstanding.settle(Duration::from_secs(3)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(outstanding.settling.load(Ordering::SeqCst), 0);
    }
}
