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
//! Failures after step 0 `RollBack` (a+ killed and fenced, b keeps serving) and retry step
//! 1 with backoff. A second server lost, or step 0 failing, means `Shutdown`.
//!
//! The machine decides *what* as well as *when*: each [`Action::Install`] carries the
//! configuration (built by [`ClusterConfig`]'s checked changes), the servers to send it to
//! stage by stage, and the time before which it must not be sent. The coordinator only
//! routes actions to sockets and processes.

pub mod cut;
mod lease;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::lines;
use crate::protocol::TableKind;
use crate::routing::{ClusterConfig, InvalidConfig, ServerAddr, secondary_of};
pub use lease::Lease;

/// Deadlines of the steps and the retry backoff.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Deadlines {
    pub take_over: Duration,
    pub spawn: Duration,
    pub copy: Duration,
    pub hand_back: Duration,
    pub backoff_first: Duration,
    pub backoff_max: Duration,
    /// The servers' lease: a server that may still hold one is waited for before its keys
    /// move (so a rollback from the hand-back has that much longer to install).
    pub lease: Lease,
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
            lease: Lease::for_timeout(Duration::from_secs(1)),
        }
    }
}

/// Where the recovery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// After a rollback: waiting for a+ to be fenced (`fenced: false`), the rollback to be
    /// installed, then for the backoff.
    Backoff {
        fenced: bool,
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
    /// The failed server's `incarnation` reported (at `addr`) and its control link is open.
    Started {
        incarnation: u64,
        addr: ServerAddr,
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
        status: String,
    },
    /// The answer to [`Action::Fence`]: only `incarnation` is accepted from now on, and the
    /// fenced ones were last heard at `heard`.
    Fenced {
        incarnation: u64,
        heard: Instant,
    },
}

/// What the coordinator must do. Installs answer with `Installed`/`InstallFailed` carrying
/// the same serial; older serials are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make `config` the coordinator's configuration and send it to the servers of each
    /// stage in turn (a stage once the previous one answered), not before `not_before`.
    Install {
        serial: u64,
        config: ClusterConfig,
        stages: Vec<Vec<u32>>,
        not_before: Option<Instant>,
    },
    /// Kill what is left of older starts of the failed server and start `incarnation`.
    Spawn {
        incarnation: u64,
    },
    /// Kill start `kill` of the failed server: the recovery goes back to step 1.
    RollBack {
        kill: u64,
        why: String,
    },
    /// Accept reports (and grant leases) only from `incarnation` of the failed server;
    /// answered at once with [`Input::Fenced`].
    Fence {
        incarnation: u64,
    },
    Shutdown {
        why: String,
    },
    Finished {
        took: Duration,
        attempts: u32,
    },
}

/// One recovery of server `failed`: plain data, so that the coordinator's state, of which
/// it is part, can be written down. Its two instants are not: a restored recovery counts
/// its step's deadline from the restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recovery {
    pub failed: u32,
    /// The incarnation being started (a+).
    pub incarnation: u64,
    pub step: Step,
    pub attempts: u32,
    #[serde(skip, default = "Instant::now")]
    deadline: Instant,
    #[serde(skip, default = "Instant::now")]
    began: Instant,
    serial: u64,
    /// Epoch of the installed Join configuration, once known.
    join_epoch: Option<u64>,
    updates: Vec<(TableKind, u64)>,
    /// The rollback under way must wait out a+'s lease (a+ may have been serving).
    fence_wait: bool,
    deadlines: Deadlines,
}

impl Recovery {
    /// Server `failed` is lost and fenced (only `incarnation` accepted from now on). It was
    /// last heard at `heard`; `None`: its process is known to have ended, so nothing waits
    /// for its lease.
    pub fn new(
        failed: u32,
        incarnation: u64,
        heard: Option<Instant>,
        now: Instant,
        deadlines: Deadlines,
    ) -> Self {
        Recovery {
            failed,
            incarnation,
            step: Step::WaitLease,
            attempts: 1,
            deadline: heard.map_or(now, |heard| deadlines.lease.surely_over(heard)),
            began: now,
            serial: 0,
            join_epoch: None,
            updates: Vec::new(),
            fence_wait: false,
            deadlines,
        }
    }

    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// When the lease wait of step 0 ends.
    pub fn lease_end(&self) -> Option<Instant> {
        (self.step == Step::WaitLease).then_some(self.deadline)
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

    /// Installs `change` of the current configuration on `stages` (a fresh serial), or shuts
    /// down if the change is not a valid configuration (which would be a bug).
    fn install(
        &mut self,
        change: Result<ClusterConfig, InvalidConfig>,
        stages: Vec<Vec<u32>>,
        not_before: Option<Instant>,
    ) -> Vec<Action> {
        match change {
            Ok(config) => {
                self.serial += 1;
                vec![Action::Install { serial: self.serial, config, stages, not_before }]
            }
            Err(e) => self.shutdown(format!(
                "no valid configuration for the recovery of server {}: {e}",
                self.failed
            )),
        }
    }

    /// The servers other than the failed one, minus `except`.
    fn others(&self, config: &ClusterConfig, except: Option<u32>) -> Vec<u32> {
        (0..config.len()).filter(|&id| id != self.failed && Some(id) != except).collect()
    }

    /// Back to step 1. From the hand-back, a+ may have been serving a's keys: b takes them
    /// again only once a+'s lease is surely over.
    fn roll_back(&mut self, why: String, now: Instant) -> Vec<Action> {
        let fence_wait = self.step == Step::HandBack;
        self.roll_back_waiting(why, now, fence_wait)
    }

    fn roll_back_waiting(&mut self, why: String, now: Instant, fence_wait: bool) -> Vec<Action> {
        let kill = self.incarnation;
        self.incarnation += 1;
        self.attempts += 1;
        self.join_epoch = None;
        self.updates.clear();
        self.fence_wait = fence_wait;
        let wait = if self.fence_wait { self.deadlines.lease.wait() } else { Duration::ZERO };
        let step = Step::Backoff { fenced: false, installed: false };
        self.enter(step, now, wait + self.deadlines.take_over);
        vec![Action::RollBack { kill, why }, Action::Fence { incarnation: self.incarnation }]
    }

    /// The coordinator restarted (at `now`) in the middle of this recovery: what the dead one
    /// had in flight is unknown, so nothing it did is trusted. Before the take-over was
    /// installed for sure, the lease wait of step 0 starts again (a lease the dead
    /// coordinator granted ends within one lease of the restart); after it, a+ is rolled back
    /// and fenced, and b takes a's keys again once a+'s lease is surely over, whatever the
    /// step was (a+ may have been serving them).
    pub fn restart(&mut self, now: Instant) -> Vec<Action> {
        match self.step {
            Step::WaitLease | Step::TakeOver => {
                self.step = Step::WaitLease;
                self.deadline = self.deadlines.lease.surely_over(now);
                Vec::new()
            }
            Step::Done => Vec::new(),
            _ => self.roll_back_waiting("the coordinator restarted".into(), now, true),
        }
    }

    fn backoff(&self) -> Duration {
        let doublings = self.attempts.saturating_sub(2).min(16);
        (self.deadlines.backoff_first * 2u32.pow(doublings)).min(self.deadlines.backoff_max)
    }

    /// Called regularly with the current configuration: acts on deadlines.
    pub fn tick(&mut self, now: Instant, config: &ClusterConfig) -> Vec<Action> {
        if now < self.deadline {
            return Vec::new();
        }
        match self.step {
            Step::WaitLease => {
                self.enter(Step::TakeOver, now, self.deadlines.take_over);
                let stages = vec![self.others(config, None)];
                self.install(config.take_over(self.failed), stages, None)
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
            Step::Backoff { installed: false, .. } => {
                self.shutdown("the rollback could not be installed".into())
            }
            Step::Backoff { installed: true, .. } => self.spawn(now),
            Step::Done => Vec::new(),
        }
    }

    /// Reacts to an input, given the current configuration.
    pub fn step(&mut self, input: Input, now: Instant, config: &ClusterConfig) -> Vec<Action> {
        if self.step == Step::Done {
            return Vec::new();
        }
        match input {
            Input::Lost { id, incarnation } => self.on_lost(id, incarnation, now),
            Input::Exited { id, incarnation, status } if id == self.failed => {
                self.on_exited(incarnation, status, now, config)
            }
            Input::Installed { serial, epoch } if serial == self.serial => {
                self.on_installed(epoch, now, config)
            }
            Input::InstallFailed { serial, why } if serial == self.serial => match self.step {
                Step::TakeOver | Step::Backoff { .. } => {
                    // Every live server must take part: one that cannot is a second fault.
                    self.shutdown(format!(
                        "a server could not take part in the recovery of server {} ({}): {why}",
                        self.failed,
                        lines::TWO_FAULTS
                    ))
                }
                _ => self.roll_back(format!("configuration not installed: {why}"), now),
            },
            Input::Started { incarnation, addr }
                if incarnation == self.incarnation && self.step == Step::Spawn =>
            {
                let step = Step::Copy { primary: false, secondary: false };
                self.enter(step, now, self.deadlines.copy);
                let stages = vec![vec![self.failed], self.others(config, None)];
                self.install(config.join(self.failed, addr), stages, None)
            }
            Input::SpawnFailed { incarnation, why }
                if incarnation == self.incarnation && self.step == Step::Spawn =>
            {
                self.roll_back(format!("the new server could not be started: {why}"), now)
            }
            Input::Updated { into, epoch } if matches!(self.step, Step::Copy { .. }) => {
                self.updates.push((into, epoch));
                self.check_copied(now, config)
            }
            Input::Fenced { incarnation, heard }
                if incarnation == self.incarnation
                    && self.step == (Step::Backoff { fenced: false, installed: false }) =>
            {
                self.step = Step::Backoff { fenced: true, installed: false };
                let not_before = self.fence_wait.then(|| self.deadlines.lease.surely_over(heard));
                let stages = vec![self.others(config, None)];
                self.install(config.take_over(self.failed), stages, not_before)
            }
            _ => Vec::new(),
        }
    }

    fn on_lost(&mut self, id: u32, incarnation: u64, now: Instant) -> Vec<Action> {
        if id != self.failed {
            return self.shutdown(format!(
                "server {id} lost while server {} was being recovered: {}",
                self.failed,
                lines::TWO_FAULTS
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

    /// A process of the failed server ended: the old one ends the lease wait (it cannot
    /// serve any more); a new one that had not reported yet fails its start.
    fn on_exited(
        &mut self,
        incarnation: u64,
        status: String,
        now: Instant,
        config: &ClusterConfig,
    ) -> Vec<Action> {
        match self.step {
            Step::WaitLease if incarnation < self.incarnation => {
                self.deadline = now;
                self.tick(now, config)
            }
            Step::Spawn if incarnation == self.incarnation => self.roll_back(
                format!(
                    "the new server could not be started: it exited before reporting ({status})"
                ),
                now,
            ),
            _ => Vec::new(),
        }
    }

    fn on_installed(&mut self, epoch: u64, now: Instant, config: &ClusterConfig) -> Vec<Action> {
        match self.step {
            Step::TakeOver => self.spawn(now),
            Step::Copy { .. } => {
                self.join_epoch = Some(epoch);
                self.check_copied(now, config)
            }
            Step::HandBack => {
                self.step = Step::Done;
                vec![Action::Finished { took: now - self.began, attempts: self.attempts }]
            }
            Step::Backoff { fenced: true, installed: false } => {
                let wait = self.backoff();
                self.enter(Step::Backoff { fenced: true, installed: true }, now, wait);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn check_copied(&mut self, now: Instant, config: &ClusterConfig) -> Vec<Action> {
        let Some(epoch) = self.join_epoch else {
            return Vec::new();
        };
        let done = |kind| self.updates.iter().any(|&(into, e)| into == kind && e == epoch);
        let (primary, secondary) = (done(TableKind::Primary), done(TableKind::Secondary));
        if !(primary && secondary) {
            self.step = Step::Copy { primary, secondary };
            return Vec::new();
        }
        self.enter(Step::HandBack, now, self.deadlines.hand_back);
        // b lets go of a's keys (its writes in flight settle) before a+ takes them: never
        // two servers accepting writes for one key.
        let b = secondary_of(self.failed, config.len());
        let stages = vec![vec![b], vec![self.failed], self.others(config, Some(b))];
        self.install(config.hand_back(self.failed), stages, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::Replica;

    const A: u32 = 1;
    const B: u32 = 2;

    /// A recovery of server `A` among three, and the configuration it starts from. The
    /// tests play the coordinator: every `Install` becomes the current configuration.
    struct Run {
        r: Recovery,
        config: ClusterConfig,
    }

    impl Run {
        fn step(&mut self, input: Input, now: Instant) -> Vec<Action> {
            let actions = self.r.step(input, now, &self.config);
            self.adopt(&actions);
            actions
        }

        fn tick(&mut self, now: Instant) -> Vec<Action> {
            let actions = self.r.tick(now, &self.config);
            self.adopt(&actions);
            actions
        }

        fn adopt(&mut self, actions: &[Action]) {
            for action in actions {
                if let Action::Install { config, .. } = action {
                    self.config = config.clone();
                }
            }
        }
    }

    fn start_with(deadlines: Deadlines, now: Instant, heard: Instant) -> Run {
        Run {
            r: Recovery::new(A, 1, Some(heard), now, deadlines),
            config: ClusterConfig::for_tests(3),
        }
    }

    /// Lost at `t`, last heard 50 ms before: the lease (500 ms + 50 ms) ends at t + 500 ms.
    fn start() -> (Run, Instant) {
        let now = Instant::now();
        (start_with(Deadlines::default(), now, now - Duration::from_millis(50)), now)
    }

    fn ms(t: Instant, ms: u64) -> Instant {
        t + Duration::from_millis(ms)
    }

    fn serials(actions: &[Action]) -> Vec<u64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Install { serial, .. } => Some(*serial),
                _ => None,
            })
            .collect()
    }

    fn new_addr(incarnation: u64) -> ServerAddr {
        ServerAddr {
            id: A,
            host: "h".into(),
            client_port: 7000,
            servers_port: 7001,
            incarnation,
            state: Replica::Up,
        }
    }

    /// Runs the happy path into the copy (steps 2-4); returns the time reached.
    fn to_copy(run: &mut Run, t: Instant) -> Instant {
        assert_eq!(serials(&run.tick(ms(t, 500))), vec![1]);
        assert_eq!(
            run.step(Input::Installed { serial: 1, epoch: 2 }, ms(t, 510)),
            vec![Action::Spawn { incarnation: 1 }]
        );
        let actions = run.step(Input::Started { incarnation: 1, addr: new_addr(1) }, ms(t, 600));
        assert_eq!(serials(&actions), vec![2]);
        ms(t, 600)
    }

    /// Runs the happy path into step 5 (hand-back); returns the time reached.
    fn to_hand_back(run: &mut Run, t: Instant) -> Instant {
        let t = to_copy(run, t);
        run.step(Input::Installed { serial: 2, epoch: 3 }, t);
        run.step(Input::Updated { into: TableKind::Primary, epoch: 3 }, t);
        let actions = run.step(Input::Updated { into: TableKind::Secondary, epoch: 3 }, t);
        assert_eq!(serials(&actions), vec![3]);
        t
    }

    #[test]
    fn happy_path_through_all_steps() {
        let (mut run, t) = start();
        assert_eq!(run.r.step.number(), 0);
        assert!(run.tick(ms(t, 499)).is_empty(), "waits for the lease");
        let t = to_copy(&mut run, t);
        assert_eq!(run.r.step.number(), 2);
        assert!(
            run.step(Input::Updated { into: TableKind::Primary, epoch: 3 }, t).is_empty(),
            "before Installed"
        );
        assert!(run.step(Input::Installed { serial: 2, epoch: 3 }, t).is_empty());
        assert_eq!(run.r.step.number(), 3);
        let actions = run.step(Input::Updated { into: TableKind::Secondary, epoch: 3 }, ms(t, 100));
        assert_eq!(serials(&actions), vec![3]);
        assert_eq!(run.r.step.number(), 5);
        let actions = run.step(Input::Installed { serial: 3, epoch: 4 }, ms(t, 200));
        assert!(matches!(actions[..], [Action::Finished { attempts: 1, .. }]));
        assert!(run.r.is_done());
        assert_eq!(run.config.serving, vec![0, 1, 2]);
        assert_eq!(run.config.servers[A as usize], new_addr(1), "the new start serves");
    }

    #[test]
    fn each_step_installs_its_configuration_on_the_right_servers_in_order() {
        let (mut run, t) = start();
        let take_over = run.tick(ms(t, 500));
        let [Action::Install { config, stages, not_before: None, .. }] = &take_over[..] else {
            panic!("{take_over:?}")
        };
        assert_eq!((config.epoch, &config.serving), (2, &vec![0, 2, 2]));
        assert_eq!(stages, &vec![vec![0, 2]], "every server but the lost one");
        run.step(Input::Installed { serial: 1, epoch: 2 }, ms(t, 510));
        let join = run.step(Input::Started { incarnation: 1, addr: new_addr(1) }, ms(t, 600));
        let [Action::Install { config, stages, .. }] = &join[..] else { panic!("{join:?}") };
        assert_eq!(config.servers[A as usize].state, Replica::Joining);
        assert_eq!(config.serving[A as usize], B, "b serves until the hand-back");
        assert_eq!(stages, &vec![vec![A], vec![0, 2]], "a+ knows the epoch before its feeders");
        run.step(Input::Installed { serial: 2, epoch: 3 }, ms(t, 600));
        run.step(Input::Updated { into: TableKind::Primary, epoch: 3 }, ms(t, 600));
        let back = run.step(Input::Updated { into: TableKind::Secondary, epoch: 3 }, ms(t, 600));
        let [Action::Install { config, stages, .. }] = &back[..] else { panic!("{back:?}") };
        assert_eq!((config.epoch, config.serving[A as usize]), (4, A));
        assert_eq!(stages, &vec![vec![B], vec![A], vec![0]], "b lets go before a+ takes over");
    }

    #[test]
    fn updates_for_another_epoch_do_not_count() {
        let (mut run, t) = start();
        let t = to_copy(&mut run, t);
        run.step(Input::Installed { serial: 2, epoch: 3 }, t);
        assert!(run.step(Input::Updated { into: TableKind::Primary, epoch: 2 }, t).is_empty());
        assert!(run.step(Input::Updated { into: TableKind::Secondary, epoch: 3 }, t).is_empty());
        assert_eq!(run.r.step, Step::Copy { primary: false, secondary: true });
        assert!(run.step(Input::Updated { into: TableKind::Secondary, epoch: 3 }, t).is_empty());
        let actions = run.step(Input::Updated { into: TableKind::Primary, epoch: 3 }, t);
        assert_eq!(serials(&actions), vec![3]);
    }

    #[test]
    fn take_over_failure_or_timeout_shuts_down() {
        let (mut run, t) = start();
        run.tick(ms(t, 500));
        assert!(run.tick(ms(t, 5_499)).is_empty());
        assert!(matches!(run.tick(ms(t, 5_500))[..], [Action::Shutdown { .. }]));
        let (mut run, t) = start();
        run.tick(ms(t, 500));
        let actions = run.step(Input::InstallFailed { serial: 1, why: "x".into() }, ms(t, 501));
        assert!(matches!(actions[..], [Action::Shutdown { .. }]));
    }

    /// A rollback kills a+, fences it, and installs the take-over again once fenced.
    fn roll_back_and_fence(run: &mut Run, actions: &[Action], kill: u64, now: Instant) -> u64 {
        let [Action::RollBack { kill: killed, .. }, Action::Fence { incarnation }] = actions else {
            panic!("{actions:?}")
        };
        assert_eq!((*killed, *incarnation), (kill, kill + 1));
        let install = run.step(Input::Fenced { incarnation: kill + 1, heard: now }, now);
        let [Action::Install { serial, config, .. }] = &install[..] else { panic!("{install:?}") };
        assert_eq!(config.servers[A as usize].state, Replica::Down);
        *serial
    }

    #[test]
    fn spawn_timeout_and_failure_roll_back_then_retry_with_backoff() {
        let (mut run, t) = start();
        run.tick(ms(t, 500));
        run.step(Input::Installed { serial: 1, epoch: 2 }, ms(t, 500));
        let actions = run.tick(ms(t, 500 + 15_000));
        assert_eq!(roll_back_and_fence(&mut run, &actions, 1, ms(t, 15_500)), 2);
        assert_eq!(run.r.incarnation, 2);
        assert_eq!(run.r.step.number(), 1);
        let t2 = ms(t, 16_000);
        assert!(run.step(Input::Installed { serial: 2, epoch: 3 }, t2).is_empty());
        assert!(run.tick(ms(t2, 199)).is_empty(), "backoff");
        assert_eq!(run.tick(ms(t2, 200)), vec![Action::Spawn { incarnation: 2 }]);
        // A late Started from the killed incarnation is ignored.
        let late = Input::Started { incarnation: 1, addr: new_addr(1) };
        assert!(run.step(late, ms(t2, 250)).is_empty());
        let failed = Input::SpawnFailed { incarnation: 2, why: "no binary".into() };
        let actions = run.step(failed, ms(t2, 300));
        assert_eq!(roll_back_and_fence(&mut run, &actions, 2, ms(t2, 300)), 3);
        run.step(Input::Installed { serial: 3, epoch: 4 }, ms(t2, 300));
        assert!(run.tick(ms(t2, 699)).is_empty(), "backoff doubles");
        assert_eq!(run.tick(ms(t2, 700)), vec![Action::Spawn { incarnation: 3 }]);
        let exited = Input::Exited { id: A, incarnation: 3, status: "signal 9".into() };
        let actions = run.step(exited, ms(t2, 800));
        assert!(
            matches!(&actions[..], [Action::RollBack { kill: 3, why }, _] if why.contains("signal 9"))
        );
    }

    #[test]
    fn exit_of_the_failed_process_ends_the_lease_wait() {
        let (mut run, t) = start();
        let exited = |id, incarnation| Input::Exited { id, incarnation, status: "killed".into() };
        assert!(run.step(exited(A + 1, 0), ms(t, 10)).is_empty(), "another server");
        assert!(run.step(exited(A, 1), ms(t, 10)).is_empty(), "not the failed one");
        assert_eq!(serials(&run.step(exited(A, 0), ms(t, 10))), vec![1]);
    }

    #[test]
    fn a_process_known_to_be_gone_is_not_waited_for() {
        let now = Instant::now();
        let mut r = Recovery::new(A, 1, None, now, Deadlines::default());
        assert_eq!(r.lease_end(), Some(now));
        assert_eq!(serials(&r.tick(now, &ClusterConfig::for_tests(3))), vec![1]);
    }

    #[test]
    fn the_lease_wait_counts_from_the_last_heartbeat() {
        let (run, t) = start();
        assert_eq!(run.r.lease_end(), Some(ms(t, 500)), "heard at t - 50, lease 500, margin 50");
    }

    #[test]
    fn backoff_is_capped() {
        let (mut run, _) = start();
        run.r.attempts = 40;
        assert_eq!(run.r.backoff(), Duration::from_secs(5));
    }

    #[test]
    fn new_server_lost_during_copy_rolls_back() {
        let (mut run, t) = start();
        let t = to_copy(&mut run, t);
        assert!(
            run.step(Input::Lost { id: A, incarnation: 0 }, t).is_empty(),
            "the old one is ignored"
        );
        let actions = run.step(Input::Lost { id: A, incarnation: 1 }, t);
        let serial = roll_back_and_fence(&mut run, &actions, 1, t);
        assert_eq!(serial, 3);
        // The Join's late answer belongs to an older serial.
        assert!(run.step(Input::Installed { serial: 2, epoch: 3 }, t).is_empty());
        assert_eq!(run.r.step, Step::Backoff { fenced: true, installed: false });
    }

    #[test]
    fn copy_timeout_and_install_failure_roll_back() {
        let (mut run, t) = start();
        let t = to_copy(&mut run, t);
        assert!(run.tick(ms(t, 119_999)).is_empty());
        assert!(matches!(run.tick(ms(t, 120_000))[..], [Action::RollBack { .. }, _]));
        let (mut run, t) = start();
        let t = to_copy(&mut run, t);
        let actions = run.step(Input::InstallFailed { serial: 2, why: "refused".into() }, t);
        assert!(matches!(actions[..], [Action::RollBack { .. }, _]));
    }

    /// Rolling back from the hand-back, a+ may have been serving a's keys: they go back to b
    /// only once a+'s lease (counted from its last heartbeat, read after the fence) is over.
    #[test]
    fn a_rollback_from_the_hand_back_waits_for_the_new_servers_lease() {
        let (mut run, t) = start();
        let t = to_hand_back(&mut run, t);
        let actions = run.tick(ms(t, 10_000));
        assert!(matches!(
            &actions[..],
            [Action::RollBack { kill: 1, .. }, Action::Fence { incarnation: 2 }]
        ));
        let heard = ms(t, 9_900);
        let install = run.step(Input::Fenced { incarnation: 2, heard }, ms(t, 10_000));
        let [Action::Install { not_before, .. }] = &install[..] else { panic!("{install:?}") };
        assert_eq!(*not_before, Some(ms(heard, 550)), "lease 500 ms plus a 50 ms margin");
        let (mut run, t) = start();
        let t = to_copy(&mut run, t);
        let actions = run.step(Input::Lost { id: A, incarnation: 1 }, t);
        let install = run.step(Input::Fenced { incarnation: 2, heard: t }, t);
        assert!(matches!(&actions[..], [Action::RollBack { .. }, Action::Fence { .. }]));
        assert!(
            matches!(&install[..], [Action::Install { not_before: None, .. }]),
            "a+ never served during the copy"
        );
    }

    #[test]
    fn a_fenced_rollback_gets_the_lease_on_top_of_its_deadline() {
        let now = Instant::now();
        let deadlines = Deadlines {
            lease: Lease::for_timeout(Duration::from_secs(12)),
            ..Deadlines::default()
        };
        assert_eq!(deadlines.lease.wait(), Duration::from_millis(6_600));
        let mut run = start_with(deadlines, now, now);
        let t = to_hand_back(&mut run, now + Duration::from_millis(6_100));
        let actions = run.step(Input::Lost { id: A, incarnation: 1 }, t);
        assert!(matches!(actions[..], [Action::RollBack { .. }, _]));
        assert!(run.tick(ms(t, 11_599)).is_empty(), "5 s install deadline plus the 6.6 s lease");
        assert!(matches!(run.tick(ms(t, 11_600))[..], [Action::Shutdown { .. }]));
    }

    #[test]
    fn a_second_server_lost_shuts_down_at_any_step() {
        for advance in 0..4 {
            let (mut run, t) = start();
            if advance >= 1 {
                run.tick(ms(t, 500));
            }
            if advance >= 2 {
                run.step(Input::Installed { serial: 1, epoch: 2 }, ms(t, 500));
            }
            if advance >= 3 {
                run.step(Input::Started { incarnation: 1, addr: new_addr(1) }, ms(t, 600));
            }
            let actions = run.step(Input::Lost { id: A + 1, incarnation: 0 }, ms(t, 700));
            assert!(
                matches!(&actions[..], [Action::Shutdown { why }] if why.contains(lines::TWO_FAULTS)),
                "{actions:?}"
            );
            assert!(run.r.is_done());
            assert!(run.tick(ms(t, 100_000)).is_empty());
        }
    }

    #[test]
    fn rollback_not_installed_shuts_down() {
        let (mut run, t) = start();
        let t = to_copy(&mut run, t);
        run.step(Input::Lost { id: A, incarnation: 1 }, t);
        assert!(matches!(run.tick(ms(t, 5_000))[..], [Action::Shutdown { .. }]));
    }

    #[test]
    fn a_restart_before_the_take_over_waits_a_whole_lease_again() {
        let (mut run, t) = start();
        run.tick(ms(t, 500));
        assert_eq!(run.r.step, Step::TakeOver);
        let restarted = ms(t, 700);
        assert!(run.r.restart(restarted).is_empty());
        assert_eq!(run.r.lease_end(), Some(ms(restarted, 550)));
        assert!(run.tick(ms(restarted, 549)).is_empty());
        assert_eq!(serials(&run.tick(ms(restarted, 550))), vec![2]);
    }

    #[test]
    fn a_restart_after_the_take_over_rolls_back_and_waits_for_the_new_servers_lease() {
        let (mut run, t) = start();
        let t = to_copy(&mut run, t);
        let restarted = ms(t, 100);
        let actions = run.r.restart(restarted);
        assert!(matches!(
            &actions[..],
            [Action::RollBack { kill: 1, .. }, Action::Fence { incarnation: 2 }]
        ));
        let install = run.step(Input::Fenced { incarnation: 2, heard: restarted }, restarted);
        let [Action::Install { not_before, config, .. }] = &install[..] else {
            panic!("{install:?}")
        };
        assert_eq!(*not_before, Some(ms(restarted, 550)), "a+ may hold a lease until then");
        assert_eq!(config.serving[A as usize], B);
        run.step(Input::Installed { serial: 3, epoch: config.epoch }, ms(restarted, 600));
        assert_eq!(run.tick(ms(restarted, 800)), vec![Action::Spawn { incarnation: 2 }]);
    }

    #[test]
    fn a_recovery_is_plain_data() {
        let (mut run, t) = start();
        to_copy(&mut run, t);
        let json = serde_json::to_string(&run.r).unwrap();
        let back: Recovery = serde_json::from_str(&json).unwrap();
        assert_eq!((back.failed, back.incarnation, back.step), (A, 1, run.r.step));
    }
}
