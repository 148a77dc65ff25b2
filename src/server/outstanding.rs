//! The count of a replicator's writes submitted and not yet answered, and a wait until there
//! are none (a slot handed away, a drain), woken by the last answer instead of polling. It
//! also keeps when the stream last made progress, so that a heartbeat can say how long
//! writes have waited without an acknowledgement (the coordinator's cut detection).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub(super) struct Outstanding {
    count: AtomicUsize,
    /// Microseconds from `origin` to the last progress: a write answered, or the first
    /// write submitted while none was outstanding.
    progress: AtomicU64,
    origin: Instant,
    /// Callers inside [`settle`](Self::settle). Only then does the last answer wake anybody:
    /// waking takes the [`Notify`]'s lock, which the write path must not pay for nothing.
    settling: AtomicUsize,
    idle: Notify,
}

impl Default for Outstanding {
    fn default() -> Self {
        Outstanding {
            count: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
            origin: Instant::now(),
            settling: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }
}

impl Outstanding {
    /// A write was submitted.
    pub fn add(&self) {
        if self.count.fetch_add(1, Ordering::SeqCst) == 0 {
            self.progressed();
        }
    }

    fn progressed(&self) {
        let micros = self.origin.elapsed().as_micros() as u64;
        self.progress.store(micros, Ordering::Relaxed);
    }

    /// How long writes have waited without any being answered: since the last answer, or
    /// since the oldest write if it came after that. Zero while none waits.
    pub fn stalled(&self) -> Duration {
        if self.get() == 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_micros(self.progress.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(since)
    }

    /// A write was answered.
    pub fn answered(&self) {
        self.progressed();
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
    async fn stalled_counts_from_the_last_answer_or_the_first_write_waiting() {
        let outstanding = Outstanding::default();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(outstanding.stalled(), Duration::ZERO, "nothing waits");
        outstanding.add();
        tokio::time::advance(Duration::from_millis(700)).await;
        outstanding.add();
        assert_eq!(outstanding.stalled(), Duration::from_millis(700), "from the first write");
        outstanding.answered();
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(outstanding.stalled(), Duration::from_millis(300), "from the last answer");
        outstanding.answered();
        assert_eq!(outstanding.stalled(), Duration::ZERO);
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
