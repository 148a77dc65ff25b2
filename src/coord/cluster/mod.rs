//! The coordinator's event loop. It owns the [`CoordState`] and never waits on a peer:
//! every call to a server runs in a task of its own whose result comes back to the loop as
//! an [`Internal`] message. What to do about a loss is decided by the recovery state
//! machine; [`Cluster::perform`] only carries its actions out.

mod cuts;
mod from_logs;
mod startup;

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::coord::ha::store::Store;
use crate::coord::observe::events::Loss;
use crate::coord::observe::progress::Tracker;
use crate::coord::recovery::cut::CutWatch;
use crate::coord::recovery::{Action, Deadlines, Input, Recovery, Step};
use crate::coord::restore::{self, Restore};
use crate::coord::servers::launcher::Started;
use crate::coord::servers::links::{ControlLink, Event, Shared};
use crate::coord::servers::process::Processes;
use crate::coord::servers::shutdown::{StopSignal, stop_servers};
use crate::coord::state::CoordState;
use crate::error::{Error, Result};
use crate::lines;
use crate::manifest::{MANIFEST, Manifest, write_atomically};
use crate::protocol::{
    ControlRequest, ControlResponse, CopyStats, EventKind, ServerState, StatusReport,
};
use crate::routing::ClusterConfig;

/// How long all servers may take to start and report.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// Deadline of one configuration install on one server.
const INSTALL_LIMIT: Duration = Duration::from_secs(4);
/// How often heartbeats and recovery deadlines are checked.
const TICK: Duration = Duration::from_millis(10);
/// A tick this late means the coordinator itself was not running (paused, starved of CPU).
const STALL: Duration = Duration::from_millis(100);

/// Results of work the main loop handed to tasks.
pub enum Internal {
    Recovery(Input),
    Spawned {
        id: u32,
        incarnation: u64,
        started: Started,
    },
    /// A local server process ended.
    Exited {
        id: u32,
        incarnation: u64,
        status: String,
    },
    LinkReady {
        id: u32,
        incarnation: u64,
        link: ControlLink,
    },
}

/// The running cluster: its state, and the processes, links and tasks that serve it.
pub struct Cluster {
    pub state: CoordState,
    store: Store,
    /// What the state file holds now (nothing is written twice).
    saved: Vec<u8>,
    shared: Arc<Shared>,
    processes: Processes,
    /// Declared lost after this long without a heartbeat.
    timeout: Duration,
    /// Control links by server id; `None` while a server is lost or not reported yet.
    links: Vec<Option<ControlLink>>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    /// Set when the service must shut down (two faults): the reason.
    fatal: Option<String>,
    /// The configuration install in progress, if any.
    installing: Option<JoinHandle<()>>,
    /// Snapshot sizes reported during the current recovery's copy (for its summary).
    copied: CopyStats,
    /// When the current recovery step began (each step's duration is logged).
    step_began: Instant,
    /// When the last tick ran (a late one reveals a stall of the coordinator itself).
    last_tick: Instant,
    /// Since when the coordinator has been running without a stall: silence before that
    /// is no evidence against a server (see `on_tick`).
    listening_since: Instant,
    /// The recovery's steps as watchers see them (each change is an event).
    tracker: Tracker,
    /// Cuts between a server and its copy, from the heartbeats (see `coord::cut`).
    cuts: CutWatch,
    /// The servers are loading their logs after a crash (`from_logs`): a stop kills them,
    /// without dumps, and leaves the state as it was for the next start.
    loading_logs: bool,
}

impl Cluster {
    pub fn new(
        state: CoordState,
        store: Store,
        shared: Arc<Shared>,
        processes: Processes,
        timeout: Duration,
        internal_tx: mpsc::UnboundedSender<Internal>,
    ) -> Self {
        let links = state.members.iter().map(|_| None).collect();
        let state_len = state.len();
        for member in &state.members {
            shared.liveness.fence(member.id, member.incarnation);
        }
        Cluster {
            state,
            store,
            saved: Vec::new(),
            shared,
            processes,
            timeout,
            links,
            internal_tx,
            fatal: None,
            installing: None,
            copied: CopyStats::default(),
            step_began: Instant::now(),
            last_tick: Instant::now(),
            listening_since: Instant::now(),
            tracker: Tracker::default(),
            cuts: CutWatch::new(state_len, timeout),
            loading_logs: false,
        }
    }

    /// Shows the recovery's current step to the tracker: a step done is an event.
    fn track(&mut self) {
        for event in self.tracker.look(self.state.recovery.as_ref(), Instant::now()) {
            self.shared.hub.emit(event);
        }
        self.shared.hub.set_recovery(self.tracker.track());
    }

    /// Writes the state down, if it changed since the last write. Called before anything it
    /// records is sent to a server or published to clients, so that a restarted coordinator
    /// never knows less than the cluster. A state file that cannot be written is logged and
    /// the coordinator goes on (a full disk must not take the service down); a restart from
    /// the older file then sees servers at a newer epoch and refuses to take them back. In
    /// etcd, a write that fails ends the leadership instead (`Store::save` steps down).
    fn persist(&mut self) {
        let bytes = Store::encode(&self.state);
        if bytes == self.saved {
            return;
        }
        match self.store.save(&bytes) {
            Ok(()) => self.saved = bytes,
            Err(e) => error!(error = %e, "{}", lines::STATE_NOT_SAVED),
        }
    }

    /// The status for clients, watchers and metrics. The coordinators' part is the standby
    /// task's (`Shared::set_coordinators`): kept, in the same modification, so that a list
    /// it writes meanwhile is never overwritten with an older one.
    fn publish(&mut self) {
        let status = StatusReport { cuts: self.cuts.status(), ..self.state.status() };
        self.shared.view.send_modify(|view| {
            let coordinators = view.status.coordinators.take();
            view.status = StatusReport { coordinators, ..status };
        });
    }

    /// Accepts only `incarnation` of server `id` from now on, in the state and at the ports
    /// at once (the only place an incarnation changes); returns when the fenced incarnations
    /// were last heard.
    fn fence(&mut self, id: u32, incarnation: u64) -> Instant {
        self.state.members[id as usize].incarnation = incarnation;
        self.shared.liveness.fence(id, incarnation)
    }

    /// Serves until a stop signal or a fatal failure.
    pub async fn serve(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        stop: &mut StopSignal,
    ) -> Result<()> {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.last_tick = Instant::now();
        loop {
            tokio::select! {
                why = &mut *stop => {
                    info!(reason = %why, "{}", lines::SHUTTING_DOWN);
                    return Ok(());
                }
                Some(event) = events.recv() => self.on_event(event),
                Some(message) = internal.recv() => self.on_internal(message),
                _ = ticker.tick() => self.on_tick(),
            }
            if let Some(why) = self.fatal.take() {
                return Err(Error::Unavailable(format!(
                    "{why}; the service was shut down (survivors wrote their dumps)"
                )));
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        self.observe_stall(Instant::now());
        match event {
            Event::Started { id, incarnation, ports, pid, link, .. } => {
                let member = &mut self.state.members[id as usize];
                if member.incarnation != incarnation {
                    return;
                }
                if member.live {
                    // It gave up on a link to this coordinator (paused past the server's
                    // grace) and came back on a new one: nothing to replace.
                    member.report_links.push(link);
                    return info!(id, incarnation, "{}", lines::REATTACHED_TO_US);
                }
                member.started(ports, pid, link);
                info!(id, incarnation, ?ports, pid, "replacement server started");
                self.shared.hub.emit(EventKind::ServerStarted { server: id, pid, incarnation });
                let addr = member.control_addr();
                self.open_link(id, incarnation, addr);
            }
            Event::ReportLost { id, incarnation, link, why } => {
                let member = &mut self.state.members[id as usize];
                let open = member.report_links.len();
                member.report_links.retain(|&l| l != link);
                let last = open == 1 && member.report_links.is_empty();
                if !(last && member.incarnation == incarnation && member.live) {
                    return;
                }
                if Instant::now() < self.listening_since + self.timeout {
                    // Right after a stall of this coordinator a broken link is no evidence:
                    // the server gave up waiting for it and re-attaches within its orphan
                    // retry; heartbeat silence still finds one that is really gone.
                    return warn!(id, %why, "report link lost after a stall; waiting for the server");
                }
                self.lost(id, Loss::ReportLinkLost(why));
            }
            Event::Updated { id, into, epoch, copied } => {
                info!(
                    id,
                    ?into,
                    epoch,
                    entries = copied.entries,
                    bytes = copied.bytes,
                    "copy to the new server caught up"
                );
                let copying = self.state.recovery.as_ref().map(|r| r.step);
                if matches!(copying, Some(Step::Copy { .. })) {
                    self.copied.entries += copied.entries;
                    self.copied.bytes += copied.bytes;
                }
                self.feed(Input::Updated { into, epoch });
            }
        }
    }

    /// Opens the control link of a replacement that reported, in a task.
    fn open_link(&self, id: u32, incarnation: u64, addr: String) {
        let shared = self.shared.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let message = match ControlLink::connect(id, &addr, &shared).await {
                Ok(link) => Internal::LinkReady { id, incarnation, link },
                Err(e) => Internal::Recovery(Input::SpawnFailed {
                    incarnation,
                    why: format!("control link: {e}"),
                }),
            };
            let _ = tx.send(message);
        });
    }

    fn on_internal(&mut self, message: Internal) {
        match message {
            Internal::Recovery(input) => {
                if let Input::Installed { epoch, .. } = input {
                    self.publish_config(epoch);
                }
                self.feed(input);
            }
            Internal::Spawned { id, incarnation, started } => self.adopt(id, incarnation, started),
            Internal::Exited { id, incarnation, status } => {
                let member = &self.state.members[id as usize];
                if member.incarnation == incarnation && member.live {
                    self.lost(id, Loss::Exited(status.to_string()));
                } else {
                    self.feed(Input::Exited { id, incarnation, status });
                }
            }
            Internal::LinkReady { id, incarnation, link } => {
                let member = &self.state.members[id as usize];
                if member.incarnation == incarnation {
                    let addr = member.addr();
                    self.links[id as usize] = Some(link);
                    self.feed(Input::Started { incarnation, addr });
                }
            }
        }
    }

    /// Declares silent servers lost and drives recovery deadlines.
    ///
    /// Silence counts only while the coordinator was running. After a stall of its own
    /// (paused, or starved of CPU), the heartbeats sent meanwhile are still unread in their
    /// sockets: counting that gap declared every server lost at once, and so shut the whole
    /// service down as two faults. Leases are unaffected: servers stop serving on their own
    /// when theirs lapse, so counting later only ever moves keys later.
    fn on_tick(&mut self) {
        self.shared.authority.ensure_blocking();
        let now = Instant::now();
        self.observe_stall(now);
        let liveness = &self.shared.liveness;
        let silent: Vec<u32> = self
            .state
            .live()
            .filter(|&id| {
                let heard = liveness.last_heartbeat(id).max(self.listening_since);
                now.saturating_duration_since(heard) > self.timeout
            })
            .collect();
        for id in silent {
            self.lost(id, Loss::NoHeartbeat(self.timeout));
        }
        self.check_cuts(now);
        self.tick_recovery(now);
    }

    /// Drives the recovery's deadlines.
    fn tick_recovery(&mut self, now: Instant) {
        if let (Some(recovery), Some(config)) = (&mut self.state.recovery, &self.state.config) {
            let actions = recovery.tick(now, config);
            self.track();
            self.perform(actions);
        }
    }

    /// Notes a stall of the coordinator itself (the loop did not run for over [`STALL`]):
    /// silence before `now` is no evidence against a server. Checked on every event too, as
    /// the events queued during a stall may come before the first tick after it.
    fn observe_stall(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        if gap > STALL {
            warn!(stalled_ms = gap.as_millis() as u64, "{}", lines::STALLED);
            self.listening_since = now;
        }
    }

    /// Server `id` (its current incarnation) is gone.
    fn lost(&mut self, id: u32, loss: Loss) {
        let (why, exited) = (loss.to_string(), loss.exited());
        let member = &mut self.state.members[id as usize];
        member.live = false;
        self.links[id as usize] = None;
        let incarnation = member.incarnation;
        warn!(id, incarnation, reason = %why, "server lost");
        let (pid, cause) = (member.pid, loss.cause().to_string());
        self.shared.hub.forget(id);
        self.shared.hub.emit(EventKind::ServerLost { server: id, pid, why: why.clone(), cause });
        if self.state.recovery.is_some() {
            return self.feed(Input::Lost { id, incarnation });
        }
        member.state = ServerState::Failed;
        // Fence first, then read the last heartbeat: no lease can be granted after this read.
        let heard = self.fence(id, incarnation + 1);
        let now = Instant::now();
        let deadlines = Deadlines { lease: self.shared.liveness.lease, ..Deadlines::default() };
        let heard = (!exited).then_some(heard);
        let recovery = Recovery::new(id, incarnation + 1, heard, now, deadlines);
        let lease_end = recovery.lease_end().unwrap_or(now);
        info!(
            id,
            wait_ms = lease_end.saturating_duration_since(now).as_millis() as u64,
            "recovery: step 0, waiting for the lease to expire"
        );
        self.copied = CopyStats::default();
        self.step_began = now;
        self.state.recovery = Some(recovery);
        self.track();
        self.persist();
        self.publish();
        self.tick_recovery(now);
    }

    fn feed(&mut self, input: Input) {
        let (Some(recovery), Some(config)) = (&mut self.state.recovery, &self.state.config) else {
            return;
        };
        let actions = recovery.step(input, Instant::now(), config);
        self.track();
        self.perform(actions);
    }

    /// Carries out the recovery's actions.
    fn perform(&mut self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        self.shared.authority.ensure_blocking();
        let Some(a) = self.state.recovery.as_ref().map(|r| r.failed) else {
            return;
        };
        for action in actions {
            self.log_action(a, &action);
            self.announce(a, &action);
            match action {
                Action::Install { serial, config, stages, not_before } => {
                    self.state.config = Some(config.clone());
                    self.persist();
                    self.install_async(serial, config, stages, not_before);
                }
                Action::Spawn { incarnation } => {
                    self.persist();
                    self.spawn_replacement(a, incarnation);
                }
                Action::RollBack { kill, why } => {
                    self.copied = CopyStats::default();
                    warn!(server = a, %why, "{}", lines::ROLLING_BACK);
                    self.processes.kill(&self.state.members[a as usize], kill);
                    self.links[a as usize] = None;
                    self.state.members[a as usize].live = false;
                }
                Action::Fence { incarnation } => {
                    let heard = self.fence(a, incarnation);
                    self.feed(Input::Fenced { incarnation, heard });
                }
                Action::Shutdown { why } => self.fatal = Some(why),
                Action::Finished { took, attempts } => {
                    self.state.members[a as usize].state = ServerState::Running;
                    info!(
                        server = a,
                        took_ms = took.as_millis() as u64,
                        keys_copied = self.copied.entries,
                        bytes_copied = self.copied.bytes,
                        attempts,
                        epoch = self.state.epoch(),
                        "{}",
                        lines::RECOVERED
                    );
                }
            }
        }
        if self.state.recovery.as_ref().is_some_and(Recovery::is_done) {
            self.state.recovery = None;
        }
        self.persist();
        self.publish();
    }

    /// Logs an action with the duration of the step it ends.
    fn log_action(&mut self, a: u32, action: &Action) {
        let previous_step_ms = self.step_began.elapsed().as_millis() as u64;
        self.step_began = Instant::now();
        match action {
            Action::Install { serial, config, stages, not_before } => {
                let wait_ms =
                    not_before.map(|at| at.saturating_duration_since(Instant::now()).as_millis());
                info!(server = a, serial, epoch = config.epoch, serving = ?config.serving,
                      ?stages, ?wait_ms, previous_step_ms, "recovery: install");
            }
            other => info!(server = a, action = ?other, previous_step_ms, "recovery"),
        }
    }

    /// Tells watchers and metrics of a rollback, a fatal failure or a recovery complete
    /// (before it is carried out: the copy's sizes are still those of this attempt).
    fn announce(&self, a: u32, action: &Action) {
        let event = match action {
            Action::RollBack { why, .. } => {
                let attempt = self.state.recovery.as_ref().map_or(0, |r| r.attempts);
                EventKind::RolledBack { server: a, why: why.clone(), attempt }
            }
            Action::Shutdown { why } => EventKind::Fatal { why: why.clone() },
            Action::Finished { took, attempts } => EventKind::RecoveryComplete {
                server: a,
                ms: took.as_millis() as u64,
                keys: self.copied.entries,
                bytes: self.copied.bytes,
                attempts: *attempts,
            },
            _ => return,
        };
        self.shared.hub.emit(event);
    }

    fn publish_config(&mut self, epoch: u64) {
        if let Some(config) = self.state.config.clone().filter(|c| c.epoch == epoch) {
            info!(epoch, serving = ?config.serving, "configuration published");
            self.shared.hub.emit(EventKind::ConfigPublished { epoch });
            self.shared.view.send_modify(|view| view.config = Some(config));
        }
    }

    /// Installs `config` on the servers of each stage in turn (a stage after the previous
    /// one answered), in a task; the outcome comes back as a recovery input. Servers without
    /// a link (lost) are left out. `not_before`: wait until then (a fenced server's lease)
    /// before the first stage. An install still running from an earlier action is abandoned.
    fn install_async(
        &mut self,
        serial: u64,
        config: ClusterConfig,
        stages: Vec<Vec<u32>>,
        not_before: Option<Instant>,
    ) {
        let stages: Vec<Vec<ControlLink>> = stages
            .iter()
            .map(|ids| ids.iter().filter_map(|&id| self.links[id as usize].clone()).collect())
            .collect();
        let tx = self.internal_tx.clone();
        if let Some(previous) = self.installing.take() {
            previous.abort();
        }
        self.installing = Some(tokio::spawn(async move {
            if let Some(at) = not_before {
                tokio::time::sleep_until(at).await;
            }
            let input = match install(&config, &stages).await {
                Ok(()) => Input::Installed { serial, epoch: config.epoch },
                Err(why) => Input::InstallFailed { serial, why: why.to_string() },
            };
            let _ = tx.send(Internal::Recovery(input));
        }));
    }

    /// Recovery step 1: kill what is left of server `a` and start `incarnation` (already
    /// fenced: only it will be accepted).
    fn spawn_replacement(&mut self, a: u32, incarnation: u64) {
        let member = &mut self.state.members[a as usize];
        debug_assert_eq!(member.incarnation, incarnation, "fenced before it is spawned");
        member.live = false;
        member.pid = 0;
        member.state = ServerState::Recovering;
        let member = member.clone();
        self.processes.kill_older(&member, incarnation);
        let launcher = self.processes.launcher.clone();
        let n = self.state.len();
        let tx = self.internal_tx.clone();
        let authority = self.shared.authority.clone();
        tokio::spawn(async move {
            // Decided before a pause, perhaps: not started while the authority may be gone.
            authority.ensure().await;
            let message = match launcher.spawn(&member, n).await {
                Ok(started) => Internal::Spawned { id: a, incarnation, started },
                Err(e) => {
                    Internal::Recovery(Input::SpawnFailed { incarnation, why: e.to_string() })
                }
            };
            let _ = tx.send(message);
        });
    }

    /// Keeps track of a server process we started; a local one's exit comes back to the loop.
    fn adopt(&mut self, id: u32, incarnation: u64, started: Started) {
        let tx = self.internal_tx.clone();
        self.processes.adopt(id, incarnation, started, move |status| {
            let _ = tx.send(Internal::Exited { id, incarnation, status });
        });
    }

    /// Stops every server in order, with dumps (see [`stop_servers`]), then writes the
    /// dumps manifest if every server wrote its dumps. During a restore, kills them instead:
    /// their tables are partial, and the dumps they would write would replace the set being
    /// restored.
    pub async fn shutdown(&mut self) -> Result<()> {
        if let Some(install) = self.installing.take() {
            install.abort();
        }
        if self.loading_logs {
            warn!("stopped while starting from the logs: servers killed; the logs are kept");
            for member in self.state.members.clone() {
                self.processes.kill(&member, member.incarnation);
            }
            self.processes.reap(&[]).await;
            return Ok(());
        }
        // The servers are being filled from an earlier run's dumps: they write none (see
        // `ClusterConfig::restoring`) and are killed; the set and its manifest stay.
        if self.state.config.as_ref().is_some_and(|c| c.restoring) {
            warn!("stopped during the restore: servers killed without dumps; the set is kept");
            for member in self.state.members.clone() {
                self.processes.kill(&member, member.incarnation);
            }
            self.processes.reap(&[]).await;
            self.state.running = false;
            self.persist();
            return Ok(());
        }
        let (stopped, left_running, dumps) = stop_servers(&self.links, &mut self.processes).await;
        if left_running.is_empty() {
            // Every server exited: nothing is left to take back.
            self.state.running = false;
            self.persist();
        }
        stopped?;
        self.write_manifest(&dumps)
    }

    /// The manifest of the dumps just written, if every server wrote them. A replacement
    /// still being filled is marked incomplete.
    fn write_manifest(&self, dumps: &[Option<crate::protocol::Dumps>]) -> Result<()> {
        let recovering = self.state.recovery.as_ref().filter(|r| r.step != Step::Done);
        let now = std::time::SystemTime::now();
        let epoch = self.state.epoch();
        let Some(manifest) = Manifest::of_shutdown(epoch, dumps, recovering.map(|r| r.failed), now)
        else {
            return Ok(());
        };
        let dir = &self.processes.launcher.dump_dir;
        write_atomically(dir, MANIFEST, &manifest.encode())?;
        info!(dir = %dir.display(), epoch, "{}", lines::MANIFEST_WRITTEN);
        Ok(())
    }
}

/// Why a configuration was not installed on every server it was sent to.
#[derive(Debug, thiserror::Error)]
enum InstallFailed {
    #[error("server {id} refused epoch {epoch}: {answer}")]
    Refused { id: u32, epoch: u64, answer: String },
    #[error("server {id}: {err}")]
    Unreachable { id: u32, err: Error },
}

/// Sends `config` to each stage's servers concurrently, stage after stage.
async fn install(config: &ClusterConfig, stages: &[Vec<ControlLink>]) -> Result<(), InstallFailed> {
    for stage in stages {
        let calls = stage
            .iter()
            .map(|link| link.call(ControlRequest::SetConfig(config.clone()), INSTALL_LIMIT));
        for (link, result) in stage.iter().zip(join_all(calls).await) {
            match result {
                Ok(ControlResponse::Done) => {}
                Ok(other) => {
                    let (id, epoch, answer) = (link.id(), config.epoch, format!("{other:?}"));
                    return Err(InstallFailed::Refused { id, epoch, answer });
                }
                Err(err) => return Err(InstallFailed::Unreachable { id: link.id(), err }),
            }
        }
    }
    Ok(())
}
