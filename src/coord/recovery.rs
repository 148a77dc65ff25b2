//! The recovery state machine: the seed's 1+5 steps, with a deadline on every step and a
//! rollback to step 1 on any failure. No I/O and no clock inside: the coordinator feeds it
//! [`Input`]s and the time, and carries out the [`Action`]s it returns, so every path is
//! unit-tested with a fake clock.
//!
//! With a = the failed server, b = its secondary, p = its primary:
//! - step 0: wait until a's lease has surely expired, then `TakeOver`: b serves a's keys.
//! - step 1: `Spawn` a+ (after killing a).
//! - step 2: `Join`: a+ joins, b and p stream it a snapshot and then the live writes.
//! - steps 3, 4: both report the copy caught up (`Updated`).
//! - step 5: `HandBack`: a's keys move from b back to a+ in one switch.
//!
//! Failures after step 0 `RollBack` (a+ killed, b keeps serving) and retry step 1 with
//! backoff. A second server lost, or step 0 failing, means `Shutdown`.

use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::TableKind;

/// Deadlines of the steps and the retry backoff.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub take_over: Duration,
    pub spawn: Duration,
    pub copy: Duration,
    pub hand_back: Duration,
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// How long a fenced server may still hold a lease (lease plus margin): a rollback from
    /// the hand-back waits that long before it installs, so its deadline is that much later.
    pub lease: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            take_over: Duration::from_secs(5),
            spawn: Duration::from_secs(15),
            copy: Duration::from_secs(120),
            hand_back: Duration::from_secs(10),
            backoff_first: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            lease: Duration::from_millis(550),
        }
    }
}

/// Where the recovery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Step 0, before the switch: waiting for a's lease to run out.
    WaitLease,
    /// Step 0: installing the configuration in which b serves a's keys.
    TakeOver,
    /// Step 1: a+ spawned, waiting for it to report.
    Spawn,
    /// Steps 2-4: a+ being filled; which copies reported caught up.
    Copy {
        primary: bool,
        secondary: bool,
    },
    /// Step 5: handing a's keys back.
    HandBack,
    /// After a rollback: waiting for it to be installed, then for the backoff.
    Backoff {
        installed: bool,
    },
    Done,
}

impl Step {
    /// The seed's step number, for `status`.
    pub fn number(self) -> u8 {
        match self {
            Step::WaitLease | Step::TakeOver => 0,
            Step::Spawn | Step::Backoff { .. } => 1,
            Step::Copy { primary: false, secondary: false } => 2,
            Step::Copy { primary: true, secondary: true } => 4,
            Step::Copy { .. } => 3,
            Step::HandBack | Step::Done => 5,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The configuration of action `serial` is installed on every server it went to.
    Installed {
        serial: u64,
        epoch: u64,
    },
    InstallFailed {
        serial: u64,
        why: String,
    },
    /// Server `failed`'s incarnation reported and its control link is open.
    Started {
        incarnation: u64,
    },
    SpawnFailed {
        incarnation: u64,
        why: String,
    },
    /// A copy into a+ caught up, for configuration `epoch`.
    Updated {
        into: TableKind,
        epoch: u64,
    },
    /// A server (`id`, `incarnation`) is gone.
    Lost {
        id: u32,
        incarnation: u64,
    },
    /// The process of (`id`, `incarnation`) has certainly ended: it cannot serve any more,
    /// lease or not.
    Exited {
        id: u32,
        incarnation: u64,
    },
}

/// What the coordinator must do. Installs answer with `Installed`/`InstallFailed` carrying
/// the same serial; older serials are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    TakeOver {
        serial: u64,
    },
    Spawn {
        incarnation: u64,
    },
    Join {
        serial: u64,
        incarnation: u64,
    },
    HandBack {
        serial: u64,
    },
    /// `fence`: a+ may have been serving a's keys (the hand-back was under way), so they
    /// go back to b only once a+'s lease has surely run out.
    RollBack {
        serial: u64,
        kill: u64,
        why: String,
        fence: bool,
    },
    Shutdown {
        why: String,
    },
    Finished {
        took: Duration,
        attempts: u32,
    },
}

/// One recovery of server `failed`.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub failed: u32,
    /// The incarnation being started (a+).
    pub incarnation: u64,
    pub step: Step,
    pub attempts: u32,
    deadline: Instant,
    serial: u64,
    /// Epoch of the installed Join configuration, once known.
    join_epoch: Option<u64>,
    updates: Vec<(TableKind, u64)>,
    began: Instant,
    deadlines: Deadlines,
}

impl Recovery {
    /// Server `failed` is lost; its lease is surely over at `lease_end`.
    pub fn new(
        failed: u32,
        incarnation: u64,
        lease_end: Instant,
        now: Instant,
        deadlines: Deadlines,
    ) -> Self {
        Recovery {
            failed,
            incarnation,
            step: Step::WaitLease,
            attempts: 1,
            deadline: lease_end,
            serial: 0,
            join_epoch: None,
            updates: Vec::new(),
            began: now,
            deadlines,
        }
    }

    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    fn enter(&mut self, step: Step, now: Instant, limit: Duration) {
        self.step = step;
        self.deadline = now + limit;
    }

    fn shutdown(&mut self, why: String) -> Vec<Action> {
        self.step = Step::Done;
        vec![Action::Shutdown { why }]
    }

    fn spawn(&mut self, now: Instant) -> Vec<Action> {
        self.enter(Step::Spawn, now, self.deadlines.spawn);
        vec![Action::Spawn { incarnation: self.incarnation }]
    }

    fn roll_back(&mut self, why: String, now: Instant) -> Vec<Action> {
        let kill = self.incarnation;
        self.incarnation += 1;
        self.attempts += 1;
        self.join_epoch = None;
        self.updates.clear();
        let serial = self.next_serial();
        let fence = self.step == Step::HandBack;
        let wait = if fence { self.deadlines.lease } else { Duration::ZERO };
        self.enter(Step::Backoff { installed: false }, now, wait + self.deadlines.take_over);
        vec![Action::RollBack { serial, kill, why, fence }]
    }

    fn backoff(&self) -> Duration {
        let doublings = self.attempts.saturating_sub(2).min(16);
        (self.deadlines.backoff_first * 2u32.pow(doublings)).min(self.deadlines.backoff_max)
    }

    /// Called regularly: acts on deadlines.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        if now < self.deadline {
            return Vec::new();
        }
        match self.step {
            Step::WaitLease => {
                let serial = self.next_serial();
                self.enter(Step::TakeOver, now, self.deadlines.take_over);
                vec![Action::TakeOver { serial }]
            }
            Step::TakeOver => self.shutdown(format!(
                "server {}'s keys could not be moved to its secondary in time",
                self.failed
            )),
            Step::Spawn => self.roll_back("the new server did not start in time".into(), now),
            Step::Copy { .. } => {
                self.roll_back("the copy to the new server did not finish in time".into(), now)
            }
            Step::HandBack => self.roll_back("the hand-back did not finish in time".into(), now),
            Step::Backoff { installed: false } => {
                self.shutdown("the rollback could not be installed".into())
            }
            Step::Backoff { installed: true } => self.spawn(now),
            Step::Done => Vec::new(),
        }
    }

    /// Reacts to an input.
    pub fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
        if self.step == Step::Done {
            return Vec::new();
        }
        match input {
            Input::Lost { id, incarnation } => self.on_lost(id, incarnation, now),
            Input::Exited { id, incarnation }
                if id == self.failed
                    && incarnation < self.incarnation
                    && self.step == Step::WaitLease =>
            {
                self.deadline = now;
                self.tick(now)
            }
            Input::Installed { serial, epoch } if serial == self.serial => {
                self.on_installed(epoch, now)
            }
            Input::InstallFailed { serial, why } if serial == self.serial => match self.step {
                Step::TakeOver | Step::Backoff { .. } => {
                    // Every live server must take part: one that cannot is a second fault.
                    self.shutdown(format!(
                        "a server could not take part in the recovery of server {} (two faults): {why}",
                        self.failed
                    ))
                }
                _ => self.roll_back(format!("configuration not installed: {why}"), now),
            },
            Input::Started { incarnation }
                if incarnation == self.incarnation && self.step == Step::Spawn =>
            {
                let serial = self.next_serial();
                self.enter(
                    Step::Copy { primary: false, secondary: false },
                    now,
                    self.deadlines.copy,
                );
                vec![Action::Join { serial, incarnation }]
            }
            Input::SpawnFailed { incarnation, why }
                if incarnation == self.incarnation && self.step == Step::Spawn =>
            {
                self.roll_back(format!("the new server could not be started: {why}"), now)
            }
            Input::Updated { into, epoch } if matches!(self.step, Step::Copy { .. }) => {
                self.updates.push((into, epoch));
                self.check_copied(now)
            }
            _ => Vec::new(),
        }
    }

    fn on_lost(&mut self, id: u32, incarnation: u64, now: Instant) -> Vec<Action> {
        if id != self.failed {
            return self.shutdown(format!(
                "server {id} lost while server {} was being recovered: two faults",
                self.failed
            ));
        }
        let current = incarnation == self.incarnation;
        match self.step {
            Step::Spawn | Step::Copy { .. } | Step::HandBack if current => {
                self.roll_back(format!("the new server {id} was lost"), now)
            }
            _ => Vec::new(),
        }
    }

    fn on_installed(&mut self, epoch: u64, now: Instant) -> Vec<Action> {
        match self.step {
            Step::TakeOver => self.spawn(now),
            Step::Copy { .. } => {
                self.join_epoch = Some(epoch);
                self.check_copied(now)
            }
            Step::HandBack => {
                self.step = Step::Done;
                vec![Action::Finished { took: now - self.began, attempts: self.attempts }]
            }
            Step::Backoff { installed: false } => {
                let wait = self.backoff();
                self.enter(Step::Backoff { installed: true }, now, wait);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn check_copied(&mut self, now: Instant) -> Vec<Action> {
        let Some(epoch) = self.join_epoch else {
            return Vec::new();
        };
        let done = |kind| self.updates.iter().any(|&(into, e)| into == kind && e == epoch);
        let (primary, secondary) = (done(TableKind::Primary), done(TableKind::Secondary));
        if primary && secondary {
            let serial = self.next_serial();
            self.enter(Step::HandBack, now, self.deadlines.hand_back);
            return vec![Action::HandBack { serial }];
        }
        self.step = Step::Copy { primary, secondary };
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 1;

    fn start() -> (Recovery, Instant) {
        let now = Instant::now();
        let recovery =
            Recovery::new(A, 1, now + Duration::from_millis(500), now, Deadlines::default());
        (recovery, now)
    }

    fn ms(t: Instant, ms: u64) -> Instant {
        t + Duration::from_millis(ms)
    }

    /// Runs the happy path up to the given step; returns the time reached.
    fn to_copy(r: &mut Recovery, t: Instant) -> Instant {
        assert_eq!(r.tick(ms(t, 500)), vec![Action::TakeOver { serial: 1 }]);
        assert_eq!(
            r.step(Input::Installed { serial: 1, epoch: 2 }, ms(t, 510)),
            vec![Action::Spawn { incarnation: 1 }]
        );
        assert_eq!(
            r.step(Input::Started { incarnation: 1 }, ms(t, 600)),
            vec![Action::Join { serial: 2, incarnation: 1 }]
        );
        ms(t, 600)
    }

    /// Runs the happy path into step 5 (hand-back); returns the time reached.
    fn to_hand_back(r: &mut Recovery, t: Instant) -> Instant {
        let t = to_copy(r, t);
        r.step(Input::Installed { serial: 2, epoch: 3 }, t);
        r.step(Input::Updated { into: TableKind::Primary, epoch: 3 }, t);
        assert_eq!(
            r.step(Input::Updated { into: TableKind::Secondary, epoch: 3 }, t),
            vec![Action::HandBack { serial: 3 }]
        );
        t
    }

    #[test]
    fn happy_path_through_all_steps() {
        let (mut r, t) = start();
        assert_eq!(r.step.number(), 0);
        assert!(r.tick(ms(t, 499)).is_empty(), "waits for the lease");
        let t = to_copy(&mut r, t);
        assert_eq!(r.step.number(), 2);
        assert!(
            r.step(Input::Updated { into: TableKind::Primary, epoch: 3 }, t).is_empty(),
            "before Installed"
        );
        assert!(r.step(Input::Installed { serial: 2, epoch: 3 }, t).is_empty());
        assert_eq!(r.step.number(), 3);
        let actions = r.step(Input::Updated { into: TableKind::Secondary, epoch: 3 }, ms(t, 100));
        assert_eq!(actions, vec![Action::HandBack { serial: 3 }]);
        assert_eq!(r.step.number(), 5);
        let actions = r.step(Input::Installed { serial: 3, epoch: 4 }, ms(t, 200));
        assert!(matches!(actions[..], [Action::Finished { attempts: 1, .. }]));
        assert!(r.is_done());
    }

    #[test]
    fn updates_for_another_epoch_do_not_count() {
        let (mut r, t) = start();
        let t = to_copy(&mut r, t);
        r.step(Input::Installed { serial: 2, epoch: 3 }, t);
        assert!(r.step(Input::Updated { into: TableKind::Primary, epoch: 2 }, t).is_empty());
        assert!(r.step(Input::Updated { into: TableKind::Secondary, epoch: 3 }, t).is_empty());
        assert_eq!(r.step, Step::Copy { primary: false, secondary: true });
        assert!(r.step(Input::Updated { into: TableKind::Secondary, epoch: 3 }, t).is_empty());
        assert_eq!(
            r.step(Input::Updated { into: TableKind::Primary, epoch: 3 }, t),
            vec![Action::HandBack { serial: 3 }]
        );
    }

    #[test]
    fn take_over_failure_or_timeout_shuts_down() {
        let (mut r, t) = start();
        r.tick(ms(t, 500));
        assert!(r.tick(ms(t, 5_499)).is_empty());
        assert!(matches!(r.tick(ms(t, 5_500))[..], [Action::Shutdown { .. }]));
        let (mut r, t) = start();
        r.tick(ms(t, 500));
        let actions = r.step(Input::InstallFailed { serial: 1, why: "x".into() }, ms(t, 501));
        assert!(matches!(actions[..], [Action::Shutdown { .. }]));
    }

    #[test]
    fn spawn_timeout_and_failure_roll_back_then_retry_with_backoff() {
        let (mut r, t) = start();
        r.tick(ms(t, 500));
        r.step(Input::Installed { serial: 1, epoch: 2 }, ms(t, 500));
        let actions = r.tick(ms(t, 500 + 15_000));
        assert!(
            matches!(&actions[..], [Action::RollBack { serial: 2, kill: 1, .. }]),
            "{actions:?}"
        );
        assert_eq!(r.incarnation, 2);
        assert_eq!(r.step.number(), 1);
        let t2 = ms(t, 16_000);
        assert!(r.step(Input::Installed { serial: 2, epoch: 3 }, t2).is_empty());
        assert!(r.tick(ms(t2, 199)).is_empty(), "backoff");
        assert_eq!(r.tick(ms(t2, 200)), vec![Action::Spawn { incarnation: 2 }]);
        // A late Started from the killed incarnation is ignored.
        assert!(r.step(Input::Started { incarnation: 1 }, ms(t2, 250)).is_empty());
        let actions =
            r.step(Input::SpawnFailed { incarnation: 2, why: "no binary".into() }, ms(t2, 300));
        assert!(matches!(&actions[..], [Action::RollBack { kill: 2, .. }]));
        r.step(Input::Installed { serial: 3, epoch: 4 }, ms(t2, 300));
        assert!(r.tick(ms(t2, 699)).is_empty(), "backoff doubles");
        assert_eq!(r.tick(ms(t2, 700)), vec![Action::Spawn { incarnation: 3 }]);
    }

    #[test]
    fn exit_of_the_failed_process_ends_the_lease_wait() {
        let (mut r, t) = start();
        assert!(
            r.step(Input::Exited { id: A + 1, incarnation: 0 }, ms(t, 10)).is_empty(),
            "another server"
        );
        assert!(
            r.step(Input::Exited { id: A, incarnation: 1 }, ms(t, 10)).is_empty(),
            "not the failed one"
        );
        assert_eq!(
            r.step(Input::Exited { id: A, incarnation: 0 }, ms(t, 10)),
            vec![Action::TakeOver { serial: 1 }]
        );
    }

    #[test]
    fn backoff_is_capped() {
        let (mut r, _) = start();
        r.attempts = 40;
        assert_eq!(r.backoff(), Duration::from_secs(5));
    }

    #[test]
    fn new_server_lost_during_copy_rolls_back() {
        let (mut r, t) = start();
        let t = to_copy(&mut r, t);
        assert!(
            r.step(Input::Lost { id: A, incarnation: 0 }, t).is_empty(),
            "the old one is ignored"
        );
        let actions = r.step(Input::Lost { id: A, incarnation: 1 }, t);
        assert!(matches!(&actions[..], [Action::RollBack { kill: 1, fence: false, .. }]));
        // The Join's late answer belongs to an older serial.
        assert!(r.step(Input::Installed { serial: 2, epoch: 3 }, t).is_empty());
        assert_eq!(r.step, Step::Backoff { installed: false });
    }

    #[test]
    fn copy_timeout_and_install_failure_roll_back() {
        let (mut r, t) = start();
        let t = to_copy(&mut r, t);
        assert!(r.tick(ms(t, 119_999)).is_empty());
        assert!(matches!(r.tick(ms(t, 120_000))[..], [Action::RollBack { .. }]));
        let (mut r, t) = start();
        let t = to_copy(&mut r, t);
        let actions = r.step(Input::InstallFailed { serial: 2, why: "refused".into() }, t);
        assert!(matches!(actions[..], [Action::RollBack { .. }]));
    }

    #[test]
    fn hand_back_timeout_or_loss_rolls_back() {
        let (mut r, t) = start();
        let t = to_hand_back(&mut r, t);
        assert!(
            matches!(r.tick(ms(t, 10_000))[..], [Action::RollBack { fence: true, .. }]),
            "a+ may be serving"
        );
        let (mut r, t) = start();
        let t = to_hand_back(&mut r, t);
        assert!(matches!(
            r.step(Input::Lost { id: A, incarnation: 1 }, t)[..],
            [Action::RollBack { fence: true, .. }]
        ));
    }

    #[test]
    fn a_fenced_rollback_gets_the_lease_on_top_of_its_deadline() {
        let now = Instant::now();
        let deadlines = Deadlines { lease: Duration::from_secs(6), ..Deadlines::default() };
        let mut r = Recovery::new(A, 1, now, now, deadlines);
        let t = to_hand_back(&mut r, now - Duration::from_millis(500));
        assert!(matches!(
            r.step(Input::Lost { id: A, incarnation: 1 }, t)[..],
            [Action::RollBack { fence: true, .. }]
        ));
        assert!(r.tick(ms(t, 10_999)).is_empty(), "5 s install deadline plus the 6 s lease");
        assert!(matches!(r.tick(ms(t, 11_000))[..], [Action::Shutdown { .. }]));
    }

    #[test]
    fn a_second_server_lost_shuts_down_at_any_step() {
        for advance in 0..4 {
            let (mut r, t) = start();
            if advance >= 1 {
                r.tick(ms(t, 500));
            }
            if advance >= 2 {
                r.step(Input::Installed { serial: 1, epoch: 2 }, ms(t, 500));
            }
            if advance >= 3 {
                r.step(Input::Started { incarnation: 1 }, ms(t, 600));
            }
            let actions = r.step(Input::Lost { id: A + 1, incarnation: 0 }, ms(t, 700));
            assert!(
                matches!(&actions[..], [Action::Shutdown { why }] if why.contains("two faults")),
                "{actions:?}"
            );
            assert!(r.is_done());
            assert!(r.tick(ms(t, 100_000)).is_empty());
        }
    }

    #[test]
    fn rollback_not_installed_shuts_down() {
        let (mut r, t) = start();
        let t = to_copy(&mut r, t);
        r.step(Input::Lost { id: A, incarnation: 1 }, t);
        assert!(matches!(r.tick(ms(t, 5_000))[..], [Action::Shutdown { .. }]));
    }
}
