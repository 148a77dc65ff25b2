//! A cut between a server and its copy, both still reaching the coordinator: detected from
//! the heartbeats, and answered by replacing the owner. No I/O here: the event loop feeds
//! [`CutWatch::check`] the heartbeat figures and the time, and carries out its verdicts.
//!
//! **The rule** ([`is_cut`]): server i's own stream (to its secondary i+1) is cut when its
//! heartbeat says writes have waited `-t` with none acknowledged, while i+1 itself has
//! been heard steadily (no heartbeat gap over a lease) since before those writes began to
//! wait. The second half keeps a paused or dying copy from counting as a cut: its silence
//! is its own loss, declared by the usual timeout. Without it, a copy paused for `-t` would
//! be declared lost twice over (the owner by the cut, the copy by silence): two faults, and
//! the service would shut down. A stream with no write waiting is never cut: nothing is
//! held up, and reads go on. Both asymmetric cuts look the same from the owner's side
//! (writes sent, no acknowledgement back), so they are caught alike.
//!
//! **Which server is replaced: the owner i**, for three reasons.
//! - Only i's keys are held up, and replacing i touches only those: i+1 already holds every
//!   acknowledged write of i's in its secondary table, and serves them at once in degraded
//!   mode once i's lease is over (recovery step 0), without crossing the cut. Replacing the
//!   copy i+1 instead would free i's writes after the same lease wait, but would also move
//!   i+1's own keys (a third of the service, unaffected by the cut) to i+2.
//! - A cut is often one host's failing network card or port. If it is i's, the keys leave the
//!   bad host, and the clients of i's keys (who may suffer from it too) move to i+1. If it is
//!   i+1's, i's keys land on the bad host; a stall of i+1's own stream is not judged while
//!   i's recovery runs (see below), so that case is a second fault this does not handle.
//! - Fencing needs nothing new: i is treated exactly as a lost server (no more leases, its
//!   keys move only once its lease is surely over, its replication refused).
//!
//! **Flapping.** After a cut-triggered replacement, another is made only after
//! [`backoff`]; a cut seen meanwhile is logged ([`lines::CUT_HELD`](crate::lines::CUT_HELD))
//! and its writes wait, as before this rule existed. While a recovery runs, cuts are not
//! judged at all: the recovery's own deadlines roll back a copy that does not go through.

use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::{ServerStats, StreamCutStatus};
use crate::routing::secondary_of;

/// Least time between two cut-triggered replacements.
const MIN_BACKOFF: Duration = Duration::from_secs(10);

/// Time between two cut-triggered replacements: 10 s, or ten timeouts if longer.
pub fn backoff(timeout: Duration) -> Duration {
    (timeout * 10).max(MIN_BACKOFF)
}

/// What one heartbeat said of a server's own replication stream, and when it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamReport {
    /// How long writes had waited with none acknowledged (zero: none waited).
    pub stalled: Duration,
    pub connected: bool,
    pub heard: Instant,
}

impl StreamReport {
    pub fn of(stats: &ServerStats, heard: Instant) -> Self {
        StreamReport {
            stalled: Duration::from_millis(stats.own_stalled_ms),
            connected: stats.own_connected,
            heard,
        }
    }
}

/// The detection rule (see the module documentation). `steady_since`: since when the owner
/// and the copy have been heard without a gap over a lease (`None`: silent now). Both must
/// have been steady since the writes began to wait: a paused copy is its own loss, and a
/// paused owner's writes waited through its own pause, which its heartbeat counts too.
pub fn is_cut(report: StreamReport, steady_since: [Option<Instant>; 2], timeout: Duration) -> bool {
    let Some(waiting_since) = report.heard.checked_sub(report.stalled) else {
        return false;
    };
    let steady = |since: Option<Instant>| since.is_some_and(|since| since <= waiting_since);
    report.stalled >= timeout && steady_since.into_iter().all(steady)
}

/// What the event loop must do about a cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Replace `owner` (declare it lost): its stream to `copy` is cut.
    Replace { owner: u32, copy: u32, stalled: Duration },
    /// A cut seen within the backoff of the last replacement: logged, nothing replaced;
    /// `left`: the backoff's time left.
    Held { owner: u32, copy: u32, stalled: Duration, left: Duration },
    /// A cut detected earlier is gone (acknowledgements flow again).
    Healed { owner: u32, copy: u32 },
}

/// Per server: the cut of its own stream, if detected now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Episode {
    report: Option<StreamReport>,
    /// Held already logged for this episode.
    held: bool,
}

/// The cut detector's memory: who has been heard steadily, the cuts seen, the backoff.
pub struct CutWatch {
    timeout: Duration,
    steady_since: Vec<Option<Instant>>,
    cuts: Vec<Option<Episode>>,
    last_replacement: Option<Instant>,
}

impl CutWatch {
    pub fn new(servers: u32, timeout: Duration) -> Self {
        CutWatch {
            timeout,
            steady_since: vec![None; servers as usize],
            cuts: vec![None; servers as usize],
            last_replacement: None,
        }
    }

    /// Largest heartbeat gap that still counts as steady: a lease (a server heartbeats
    /// several times per lease, or it could not keep one).
    fn gap_limit(&self) -> Duration {
        self.timeout / 2
    }

    /// Notes each server's last heartbeat (`None`: not live); call on every tick.
    pub fn observe(&mut self, now: Instant, last_heard: &[Option<Instant>]) {
        let gap_limit = self.gap_limit();
        for (since, heard) in self.steady_since.iter_mut().zip(last_heard) {
            match heard {
                Some(heard) if now.saturating_duration_since(*heard) <= gap_limit => {
                    since.get_or_insert(*heard);
                }
                _ => *since = None,
            }
        }
    }

    /// Judges each live server's last stream report. `recovering`: a recovery runs, so no
    /// cut is judged (and those seen are forgotten). Returns what to do, in id order.
    pub fn check(
        &mut self,
        now: Instant,
        reports: &[Option<StreamReport>],
        recovering: bool,
    ) -> Vec<Verdict> {
        let n = self.cuts.len() as u32;
        let mut verdicts = Vec::new();
        for owner in 0..n {
            let copy = secondary_of(owner, n);
            let report = reports[owner as usize];
            let fresh =
                report.filter(|r| now.saturating_duration_since(r.heard) <= self.gap_limit());
            let steady = [self.steady_since[owner as usize], self.steady_since[copy as usize]];
            let cut = !recovering && fresh.is_some_and(|r| is_cut(r, steady, self.timeout));
            let episode = &mut self.cuts[owner as usize];
            match (cut, episode.as_mut()) {
                (false, Some(_)) => {
                    *episode = None;
                    if !recovering {
                        verdicts.push(Verdict::Healed { owner, copy });
                    }
                }
                (false, None) => {}
                (true, Some(seen)) => seen.report = report,
                (true, None) => *episode = Some(Episode { report, held: false }),
            }
            if cut {
                verdicts.extend(self.judge(now, owner, copy));
            }
        }
        verdicts
    }

    /// A cut of `owner`'s stream is seen: replace it, unless within the backoff.
    fn judge(&mut self, now: Instant, owner: u32, copy: u32) -> Option<Verdict> {
        let backoff = backoff(self.timeout);
        let ready = self.last_replacement.map_or(now, |at| at + backoff);
        let episode = self.cuts[owner as usize].as_mut()?;
        let stalled = episode.report.map_or(Duration::ZERO, |r| r.stalled);
        if now >= ready {
            self.last_replacement = Some(now);
            self.cuts[owner as usize] = None;
            return Some(Verdict::Replace { owner, copy, stalled });
        }
        if episode.held {
            return None;
        }
        episode.held = true;
        Some(Verdict::Held { owner, copy, stalled, left: ready - now })
    }

    /// The cuts seen now, for `status`.
    pub fn status(&self) -> Vec<StreamCutStatus> {
        let n = self.cuts.len() as u32;
        (0..n)
            .filter_map(|owner| {
                let report = self.cuts[owner as usize]?.report?;
                Some(StreamCutStatus {
                    owner,
                    copy: secondary_of(owner, n),
                    stalled_ms: report.stalled.as_millis() as u64,
                    connected: report.connected,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn report(heard: Instant, stalled_ms: u64) -> StreamReport {
        StreamReport { stalled: ms(stalled_ms), connected: false, heard }
    }

    #[test]
    fn a_stall_of_the_timeout_with_a_steady_copy_is_a_cut() {
        let start = Instant::now();
        let heard = start + ms(3000);
        let steady = [Some(start); 2];
        assert!(is_cut(report(heard, 1000), steady, T));
        assert!(is_cut(report(heard, 1500), steady, T));
        assert!(!is_cut(report(heard, 999), steady, T), "under the timeout");
        assert!(!is_cut(report(heard, 0), steady, T), "nothing waits");
    }

    #[test]
    fn a_copy_or_owner_silent_or_heard_again_only_lately_is_no_cut() {
        let start = Instant::now();
        let heard = start + ms(3000);
        let owner = Some(start);
        assert!(!is_cut(report(heard, 1200), [owner, None], T), "the copy is silent now");
        // The copy came back (a pause ended) after the writes began to wait.
        assert!(!is_cut(report(heard, 1200), [owner, Some(start + ms(2000))], T));
        let copy = Some(start + ms(1800));
        assert!(is_cut(report(heard, 1200), [owner, copy], T), "steady before");
        // The owner itself was paused: its writes waited through its own pause.
        assert!(!is_cut(report(heard, 1200), [Some(start + ms(2900)), copy], T));
    }

    /// Heartbeats every 250 ms from `from` to `to` for all three servers, with the owner 0
    /// reporting `stalled(t)` at each.
    fn run(
        watch: &mut CutWatch,
        start: Instant,
        span: (u64, u64),
        stalled: impl Fn(u64) -> u64,
    ) -> Vec<(u64, Verdict)> {
        let mut out = Vec::new();
        for t in (span.0..=span.1).step_by(250) {
            let now = start + ms(t);
            watch.observe(now, &[Some(now); 3]);
            let reports = [Some(report(now, stalled(t))), Some(report(now, 0)), None];
            out.extend(watch.check(now, &reports, false).into_iter().map(|v| (t, v)));
        }
        out
    }

    #[test]
    fn a_cut_replaces_the_owner_once_and_a_flapping_link_waits_out_the_backoff() {
        let start = Instant::now();
        let mut watch = CutWatch::new(3, T);
        // Cut at 1000 ms: writes wait from then on.
        let verdicts = run(&mut watch, start, (0, 2000), |t| t.saturating_sub(1000));
        let replace = Verdict::Replace { owner: 0, copy: 1, stalled: ms(1000) };
        assert_eq!(verdicts, vec![(2000, replace)]);
        // Healed, then cut again at 4000 ms: within the backoff, held, said once.
        let verdicts = run(&mut watch, start, (2750, 6000), |t| t.saturating_sub(4000));
        let left = backoff(T) - ms(3000);
        let held = Verdict::Held { owner: 0, copy: 1, stalled: ms(1000), left };
        assert_eq!(verdicts, vec![(5000, held)]);
        assert_eq!(watch.status().len(), 1, "the cut shows in status");
        assert_eq!(watch.status()[0].stalled_ms, 2000);
        // Healed: said, and status is clean.
        let verdicts = run(&mut watch, start, (6250, 6250), |_| 0);
        assert_eq!(verdicts, vec![(6250, Verdict::Healed { owner: 0, copy: 1 })]);
        assert!(watch.status().is_empty());
        // Still cut when the backoff ends: replaced then.
        let verdicts = run(&mut watch, start, (7000, 12_000), |t| t - 7000);
        assert_eq!(verdicts.len(), 2);
        assert!(matches!(verdicts[0], (8000, Verdict::Held { .. })));
        let replace = Verdict::Replace { owner: 0, copy: 1, stalled: ms(5000) };
        assert_eq!(verdicts[1], (12_000, replace));
    }

    #[test]
    fn a_paused_copy_is_no_cut_even_when_it_resumes_just_before_its_timeout() {
        let start = Instant::now();
        let mut watch = CutWatch::new(3, T);
        for t in (0..=3000).step_by(10) {
            let now = start + ms(t);
            // The copy (1) is paused from 1000 to 1990 ms: no heartbeat meanwhile.
            let copy_heard = if (1000..1990).contains(&t) { start + ms(1000) } else { now };
            watch.observe(now, &[Some(now), Some(copy_heard), Some(now)]);
            // The owner's writes wait from 1000 ms until the copy catches up at 2050 ms.
            let stalled = if (1000..2050).contains(&t) { t - 1000 } else { 0 };
            let reports = [Some(report(now, stalled)), None, None];
            assert_eq!(watch.check(now, &reports, false), vec![], "at {t} ms");
        }
    }

    #[test]
    fn no_cut_is_judged_during_a_recovery_nor_from_a_stale_report() {
        let start = Instant::now();
        let mut watch = CutWatch::new(3, T);
        watch.observe(start, &[Some(start); 3]);
        let now = start + ms(2000);
        watch.observe(now, &[Some(now); 3]);
        let reports = [Some(report(now, 1500)), None, None];
        assert_eq!(watch.check(now, &reports, true), vec![]);
        let old = [Some(report(start + ms(1400), 1200)), None, None];
        assert_eq!(watch.check(now, &old, false), vec![], "heard 600 ms ago: not fresh");
        assert_eq!(watch.check(now, &reports, false).len(), 1);
    }
}
