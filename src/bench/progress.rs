//! The progress line on standard error while a phase runs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::phase::{Limit, Phase};

/// A progress line being shown; [`finish`](Self::finish) clears it.
pub(super) struct Progress(JoinHandle<()>);

impl Progress {
    pub(super) fn start(phase: Arc<Phase>) -> Self {
        Progress(tokio::spawn(show(phase)))
    }

    pub(super) async fn finish(self) {
        self.0.abort();
        let _ = self.0.await;
        eprint!("\r\x1b[K");
    }
}

/// Rewrites one progress line on standard error four times a second.
async fn show(phase: Arc<Phase>) {
    let started = Instant::now();
    let name = phase.kind.name();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let done = phase.done.load(Ordering::Relaxed);
        let rate = done as f64 / started.elapsed().as_secs_f64();
        let of = match phase.limit {
            Limit::Requests(total) => format!("{done}/{total}"),
            Limit::Until(end) => {
                format!(
                    "{done} ({:.0} s left)",
                    end.saturating_duration_since(Instant::now()).as_secs_f64()
                )
            }
        };
        eprint!("\r\x1b[K{name}: {of} requests, {rate:.0} ops/s");
    }
}
