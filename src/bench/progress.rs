//! The progress line on standard error while a phase runs, drawn by `indicatif`:
//! `put: 41000/100000 requests, 82000 ops/s`, or with `--duration`
//! `put: 41000 (3 s left) requests, 82000 ops/s`, four times a second, cleared at the end.
//!
//! indicatif also decides where it may draw: only to a terminal, and not to one whose
//! `TERM` is unset or `dumb` (the hand-written line drew its escape codes there too). The
//! `client` binary asks for progress only when standard error is a terminal, so a pipe or
//! a file (what tests and bench/compare.sh read) gets no progress output at all, as before.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::phase::{Limit, Phase};

/// A progress line being shown; [`finish`](Self::finish) clears it.
pub(super) struct Progress {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
}

impl Progress {
    pub(super) fn start(phase: Arc<Phase>) -> Self {
        let limit = phase.limit;
        let style = ProgressStyle::with_template("{prefix}: {of} requests, {rate} ops/s")
            .expect("a valid template")
            .with_key("of", move |state: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = match limit {
                    Limit::Requests(total) => write!(w, "{}/{total}", state.pos()),
                    Limit::Until(end) => {
                        let left = end.saturating_duration_since(Instant::now());
                        write!(w, "{} ({:.0} s left)", state.pos(), left.as_secs_f64())
                    }
                };
            })
            .with_key("rate", |state: &ProgressState, w: &mut dyn fmt::Write| {
                // Over the whole phase, not indicatif's recent-rate estimate (`{per_sec}`).
                let _ = write!(w, "{:.0}", state.pos() as f64 / state.elapsed().as_secs_f64());
            });
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
            .with_style(style)
            .with_prefix(phase.kind.name());
        let ticker = tokio::spawn(tick(bar.clone(), phase));
        Progress { bar, ticker }
    }

    pub(super) async fn finish(self) {
        self.ticker.abort();
        let _ = self.ticker.await;
        self.bar.finish_and_clear();
    }
}

/// Copies the phase's count into the bar four times a second (each copy draws). The workers
/// count with one relaxed atomic add; `ProgressBar::inc` per request would also read the
/// clock and now and then take the bar's lock, on the path that is measured.
async fn tick(bar: ProgressBar, phase: Arc<Phase>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.set_position(phase.done.load(Ordering::Relaxed));
    }
}
