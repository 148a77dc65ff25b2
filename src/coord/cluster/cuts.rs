//! Acting on cuts between a server and its copy: the rule and its memory are in
//! `coord::cut` (pure); this feeds it the heartbeats and declares a cut server's owner lost.

use super::*;
use crate::coord::recovery::cut::{StreamReport, Verdict};

impl Cluster {
    /// Judges every live server's replication stream from its last heartbeat, on each tick.
    pub(super) fn check_cuts(&mut self, now: Instant) {
        let liveness = &self.shared.liveness;
        let heard: Vec<Option<Instant>> = (0..self.state.len())
            .map(|id| self.state.members[id as usize].live.then(|| liveness.last_heartbeat(id)))
            .collect();
        let reports: Vec<Option<StreamReport>> = self
            .shared
            .hub
            .stats()
            .iter()
            .zip(&heard)
            .map(|(stats, heard)| Some(StreamReport::of(&stats.as_ref()?.0, (*heard)?)))
            .collect();
        self.cuts.observe(now, &heard);
        let before = self.cuts.status();
        let verdicts = self.cuts.check(now, &reports, self.state.recovery.is_some());
        for verdict in verdicts {
            self.act_on_cut(verdict);
        }
        if self.cuts.status() != before {
            self.publish();
        }
    }

    fn act_on_cut(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Replace { owner, copy, stalled } => {
                let stalled_ms = stalled.as_millis() as u64;
                warn!(owner, copy, stalled_ms, "{}", lines::CUT_REPLACING);
                self.shared.hub.emit(EventKind::StreamCut {
                    owner,
                    copy,
                    stalled_ms,
                    replaced: true,
                });
                self.lost(owner, Loss::StreamCut { copy, stalled_ms });
            }
            Verdict::Held { owner, copy, stalled, left } => {
                let (stalled_ms, backoff_left_ms) =
                    (stalled.as_millis() as u64, left.as_millis() as u64);
                warn!(owner, copy, stalled_ms, backoff_left_ms, "{}", lines::CUT_HELD);
                self.shared.hub.emit(EventKind::StreamCut {
                    owner,
                    copy,
                    stalled_ms,
                    replaced: false,
                });
            }
            Verdict::Healed { owner, copy } => {
                info!(owner, copy, "{}", lines::CUT_HEALED);
                self.shared.hub.emit(EventKind::StreamHealed { owner, copy });
            }
        }
    }
}
