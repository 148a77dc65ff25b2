//! A recovery's steps as a watcher sees them: which step it is in, since when, and how long
//! each earlier one took. The recovery state machine only knows its current step; the
//! event loop shows this tracker the step after every input and tick, and it reports each
//! change as a step done, with its duration.

use tokio::time::Instant;

use crate::coord::recovery::{Recovery, Step};
use crate::protocol::{EventKind, RecoveryProgress, StepTime};

/// The step's name in events and on the watch screen, with the seed's step number.
pub fn step_name(step: Step) -> &'static str {
    match step {
        Step::WaitLease => "0 lease wait",
        Step::TakeOver => "0 take-over",
        Step::Spawn => "1 start a+",
        Step::Copy { primary: false, secondary: false } => "2 join and copy",
        Step::Copy { primary: true, secondary: true } => "4 both copies caught up",
        Step::Copy { .. } => "3 one copy caught up",
        Step::HandBack => "5 hand-back",
        Step::Backoff { .. } => "1 roll back, back off",
        Step::Done => "done",
    }
}

/// One recovery's steps so far.
#[derive(Debug, Clone)]
pub struct Track {
    pub server: u32,
    pub attempts: u32,
    pub began: Instant,
    pub done: Vec<StepTime>,
    pub current: &'static str,
    pub current_began: Instant,
}

impl Track {
    /// Its progress at `now`, for a snapshot.
    pub fn progress(&self, now: Instant) -> RecoveryProgress {
        let ms = |since: Instant| now.saturating_duration_since(since).as_millis() as u64;
        RecoveryProgress {
            server: self.server,
            attempts: self.attempts,
            done: self.done.clone(),
            current: StepTime { step: self.current.to_string(), ms: ms(self.current_began) },
            total_ms: ms(self.began),
        }
    }
}

/// Follows the recovery in progress from one look to the next.
#[derive(Debug, Default)]
pub struct Tracker {
    track: Option<Track>,
}

impl Tracker {
    /// Looks at the recovery (or its absence) at `now`; returns the events of what changed
    /// since the last look, and the track to publish.
    pub fn look(&mut self, recovery: Option<&Recovery>, now: Instant) -> Vec<EventKind> {
        let Some(recovery) = recovery.filter(|r| !(r.is_done() && self.track.is_none())) else {
            self.track = None;
            return Vec::new();
        };
        let name = step_name(recovery.step);
        let track = match &mut self.track {
            Some(track) if track.server == recovery.failed => track,
            other => {
                let current_began = now;
                let server = recovery.failed;
                *other = Some(Track {
                    server,
                    attempts: recovery.attempts,
                    began: now,
                    done: Vec::new(),
                    current: name,
                    current_began,
                });
                return vec![EventKind::RecoveryStarted { server }];
            }
        };
        track.attempts = recovery.attempts;
        if track.current == name {
            return Vec::new();
        }
        let ms = now.saturating_duration_since(track.current_began).as_millis() as u64;
        let step = track.current.to_string();
        track.done.push(StepTime { step: step.clone(), ms });
        track.current = name;
        track.current_began = now;
        let mut events = vec![EventKind::StepDone { server: track.server, step, ms }];
        if recovery.step == Step::Done {
            self.track = None;
        } else if track.done.iter().all(|s| s.step.starts_with('0')) && !name.starts_with('0') {
            // Leaving step 0: the take-over is installed, b serves a's keys.
            let ms = now.saturating_duration_since(track.began).as_millis() as u64;
            events.push(EventKind::KeysServed { server: track.server, ms });
        }
        events
    }

    pub fn track(&self) -> Option<Track> {
        self.track.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::coord::recovery::Deadlines;

    #[test]
    fn each_step_done_is_an_event_with_its_duration_and_step_0_ends_unavailability() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut recovery = Recovery::new(1, 1, None, t0, Deadlines::default());
        let mut tracker = Tracker::default();
        assert_eq!(
            tracker.look(Some(&recovery), t0),
            vec![EventKind::RecoveryStarted { server: 1 }]
        );
        assert!(tracker.look(Some(&recovery), ms(5)).is_empty(), "same step: nothing");
        recovery.step = Step::TakeOver;
        let step = "0 lease wait".to_string();
        assert_eq!(
            tracker.look(Some(&recovery), ms(10)),
            vec![EventKind::StepDone { server: 1, step, ms: 10 }]
        );
        recovery.step = Step::Spawn;
        let events = tracker.look(Some(&recovery), ms(14));
        assert_eq!(events[1], EventKind::KeysServed { server: 1, ms: 14 });
        let progress = tracker.track().unwrap().progress(ms(20));
        assert_eq!((progress.current.step.as_str(), progress.current.ms), ("1 start a+", 6));
        assert_eq!((progress.done.len(), progress.total_ms), (2, 20));
        recovery.step = Step::Done;
        let step = "1 start a+".to_string();
        assert_eq!(
            tracker.look(Some(&recovery), ms(30)),
            vec![EventKind::StepDone { server: 1, step, ms: 16 }]
        );
        assert!(tracker.track().is_none() && tracker.look(None, ms(31)).is_empty());
    }
}
