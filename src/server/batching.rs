//! When a replication stream's waiting writes go out: group commit, tuned by load.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::server::window::Window;

/// Longest a small batch is held back for more writes to join (see [`BatchSizer`]). tokio's
/// timer ticks in milliseconds, so this is the shortest hold it can time (a hold ends 1 to
/// 2 ms after it began).
pub(super) const HOLD_LIMIT: Duration = Duration::from_millis(1);

/// One connection's group commit: while a batch is in flight, new writes gather into the
/// next one (unless a full batch is ready), so under load one acknowledgement covers many
/// writes. When the link is free, a batch goes out once the [`BatchSizer`] deems it big
/// enough or the hold ran out; an idle stream sends a lone write at once.
pub(super) struct Pacer {
    sizer: BatchSizer,
    hold: Hold,
    /// Armed while writes wait for a fuller batch (`Hold::On`). Boxed once per connection,
    /// so that the pacer can be moved; reset, never remade, on each hold.
    hold_deadline: Pin<Box<Sleep>>,
}

impl Pacer {
    pub fn new() -> Self {
        Pacer {
            sizer: BatchSizer::default(),
            hold: Hold::Off,
            hold_deadline: Box::pin(tokio::time::sleep(HOLD_LIMIT)),
        }
    }

    /// Whether a batch should go out now; starts a hold when the writes waiting on a free
    /// link are too few.
    pub fn ready(&mut self, window: &Window) -> bool {
        let unsent = window.unsent();
        if unsent == 0 {
            false
        } else if window.in_flight() > 0 {
            window.full_batch_unsent()
        } else if self.hold == Hold::RanOut
            || self.sizer.big_enough(unsent, || window.unsent_bytes())
        {
            true
        } else {
            if self.hold == Hold::Off {
                self.hold = Hold::On;
                self.hold_deadline.as_mut().reset(Instant::now() + HOLD_LIMIT);
            }
            false
        }
    }

    /// Whether writes are being held (the timer of [`hold_runs_out`](Self::hold_runs_out)
    /// is armed).
    pub fn holding(&self) -> bool {
        self.hold == Hold::On
    }

    /// Waits for the hold's time to run out; the writes go at the next [`ready`](Self::ready).
    pub async fn hold_runs_out(&mut self) {
        self.hold_deadline.as_mut().await;
        self.hold = Hold::RanOut;
    }

    /// An acknowledgement came while `outstanding` client writes were in flight or waiting.
    pub fn acked(&mut self, outstanding: usize) {
        self.sizer.acked(outstanding);
    }

    /// A batch of `count` writes went out.
    pub fn sent(&mut self, count: usize) {
        if self.hold == Hold::RanOut {
            self.sizer.held_too_long(count);
        }
        self.hold = Hold::Off;
    }
}

/// Decides when a free link's waiting writes make a batch worth sending. Under load from many
/// clients, an acknowledgement answers a batch's writers at once and they send their next
/// writes within moments; sending as soon as the link frees up splits those into small
/// batches, each one a message and a wake-up of both servers. So when many writes are
/// usually outstanding on this stream, a batch waits until half of them or [`HOLD_BYTES`]
/// have gathered (for [`HOLD_LIMIT`] at most). With few writers the next write is too far off
/// for a wait to pay: a lone client's writes are not held (after a drop in load, a few holds
/// that run out first). The numbers and the 1-2 ms hold limit are tuned for many clients per
/// server; they only change when a batch leaves, never its content or order.
///
/// Measured (3 servers, 2 cores, puts of 16 bytes): at 50 clients batches of 8 writes became
/// 19, half the context switches, servers' CPU time per put 14.0-19.8 -> 12.5-14.0 us; at 10
/// clients holding for 2 writes cost 7% (hence [`HOLD_FROM`]).
#[derive(Default)]
struct BatchSizer {
    /// Moving average of the client writes outstanding (in flight or waiting).
    writers: f64,
}

/// Whether the writes waiting on a free link are being held for more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Off,
    On,
    /// The hold's time ran out: the writes go now.
    RanOut,
}

/// A batch of this many bytes is never held: copying it costs more than the message it would
/// save (measured at 50 clients: 1 KiB puts 64,000/s when held by count alone, 68,000 never
/// held, 70,000 with this bound; 16-byte puts unchanged at 89,000).
const HOLD_BYTES: usize = 4096;

/// Holding starts when half the usual outstanding writes is at least this many.
const HOLD_FROM: usize = 6;
/// A batch is never held for more: the message it saves is already shared by this many writes.
const HOLD_AT_MOST: usize = 16;

impl BatchSizer {
    /// Writes worth a batch (at least one).
    fn threshold(&self) -> usize {
        let half = (self.writers / 2.0).round() as usize;
        if half < HOLD_FROM { 1 } else { half.min(HOLD_AT_MOST) }
    }

    /// Whether `count` waiting writes of `bytes()` bytes make a batch worth sending.
    fn big_enough(&self, count: usize, bytes: impl FnOnce() -> usize) -> bool {
        count >= self.threshold() || bytes() >= HOLD_BYTES
    }

    /// An acknowledgement came while `outstanding` client writes were in flight or waiting.
    fn acked(&mut self, outstanding: usize) {
        // Bounded, so that a burst is forgotten as fast as any other sample.
        let sample = outstanding.min(4 * HOLD_AT_MOST) as f64;
        self.writers += (sample - self.writers) / 16.0;
    }

    /// A hold ran out with only `count` writes: the load dropped.
    fn held_too_long(&mut self, count: usize) {
        self.writers = (self.writers + count as f64) / 2.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_writers_are_never_held() {
        let mut sizer = BatchSizer::default();
        for outstanding in [1, 3, 10, 1, 5] {
            for _ in 0..100 {
                sizer.acked(outstanding);
                assert_eq!(sizer.threshold(), 1, "{outstanding} outstanding");
            }
        }
    }

    #[test]
    fn many_writers_gather_half_of_them_up_to_a_cap() {
        let mut sizer = BatchSizer::default();
        for _ in 0..200 {
            sizer.acked(20);
        }
        assert_eq!(sizer.threshold(), 10);
        assert!(!sizer.big_enough(9, || 9 * 20));
        assert!(sizer.big_enough(10, || 10 * 20));
        assert!(sizer.big_enough(4, || 4 * 1024), "4 KiB is never held");
        for _ in 0..200 {
            sizer.acked(1_000_000);
        }
        assert_eq!(sizer.threshold(), HOLD_AT_MOST);
    }

    #[test]
    fn a_few_holds_that_ran_out_stop_the_holding() {
        let mut sizer = BatchSizer::default();
        for _ in 0..200 {
            sizer.acked(1_000_000);
        }
        let mut holds = 0;
        while sizer.threshold() > 1 {
            sizer.held_too_long(1);
            holds += 1;
        }
        assert!(holds <= 4, "{holds} holds of {HOLD_LIMIT:?} before a lone write goes at once");
    }
}
