//! The coordinator: starts the servers, publishes the configuration, grants leases, detects
//! failures, runs recoveries, and shuts the service down in order.
//!
//! One main loop owns the topology. It never waits on a peer: every call to a server runs in
//! a task of its own whose result comes back to the loop as an [`Internal`] message.

mod launcher;
mod links;
mod process;
pub mod recovery;
mod topology;

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::ServerSpec;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::listener::{self, Gate};
use crate::protocol::{
    ControlRequest, ControlResponse, CopyStats, RecoveryStatus, Role, ServerState,
};
use crate::routing::{ClusterConfig, Replica, secondary_of};

pub use launcher::{Launcher, Started, default_server_bin};
pub use links::{ControlLink, Event, Shared, View};
use process::Process;
use recovery::{Action, Deadlines, Input, Recovery};
pub use topology::{Member, Topology, format_table};

/// How long all servers may take to start and report.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// Deadline of the drain phase of a shutdown (writes in flight settle).
const DRAIN_LIMIT: Duration = Duration::from_secs(3);
/// Deadline of the dump phase: writing dumps takes time in proportion to the data, and a
/// server killed mid-dump leaves none, so this one is generous.
const DUMP_LIMIT: Duration = Duration::from_secs(120);
/// Pause between requests to write dumps that a server could not write.
const DUMP_RETRY: Duration = Duration::from_secs(1);
/// Deadline of one configuration install on one server.
const INSTALL_LIMIT: Duration = Duration::from_secs(4);
/// Most connections served at once on the clients port and on the servers port.
const MAX_CLIENT_CONNECTIONS: usize = 1024;
const MAX_SERVER_CONNECTIONS: usize = 256;
const _: () = assert!(MAX_SERVER_CONNECTIONS >= 2 * crate::config::MAX_SERVERS);
/// How often heartbeats and recovery deadlines are checked.
const TICK: Duration = Duration::from_millis(10);
/// A tick this late means the coordinator itself was not running (paused, starved of CPU).
const STALL: Duration = Duration::from_millis(100);

/// The coordinator's settings (from the `coord` binary's flags).
#[derive(Debug, Clone)]
pub struct CoordOptions {
    pub clients_port: u16,
    pub servers_port: u16,
    pub specs: Vec<ServerSpec>,
    /// Declared dead after this long without a heartbeat.
    pub timeout: Duration,
    pub heartbeat: Duration,
    pub server_bin: PathBuf,
    pub log_dir: PathBuf,
    pub dump_dir: PathBuf,
    /// Shut down at the end of standard input (the original's ctrl+d).
    pub watch_stdin: bool,
    /// Extra options for every ssh call.
    pub ssh_args: Vec<String>,
    /// The server program on remote hosts.
    pub remote_server_bin: String,
    /// Logs and dumps of remote servers, on their hosts.
    pub remote_dir: String,
    /// Address remote servers use to reach the coordinator (default: the source address on
    /// the route to each host).
    pub advertise_host: Option<String>,
}

/// Results of work the main loop handed to tasks.
enum Internal {
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

type StopSignal = Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// Binds both ports, starts the cluster, serves until asked to stop, then shuts down.
pub async fn run(opts: CoordOptions) -> Result<()> {
    listener::raise_fd_limit();
    let clients = listener::bind("0.0.0.0", opts.clients_port, "clients").await?;
    let reports = listener::bind("0.0.0.0", opts.servers_port, "servers").await?;
    let servers_port = reports.local_addr()?.port();
    println!(
        "ftkv coordinator: clients port {}, servers port {servers_port}",
        clients.local_addr()?.port()
    );

    let mut token = [0u8; 32];
    getrandom::fill(&mut token).map_err(|e| Error::Unavailable(format!("no randomness: {e}")))?;
    let token_hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let n = opts.specs.len() as u32;
    let topology = Topology::new(&opts.specs);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (view_tx, _) = watch::channel(View { config: None, status: topology.status() });
    // A server's lease ends before the coordinator could act on its silence, by a margin:
    // a paused or cut-off server stops answering before its keys move.
    let lease = opts.timeout / 2;
    let shared = Arc::new(Shared::new(n, token_hex.as_bytes().to_vec(), lease, events_tx, view_tx));

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let s = shared.clone();
    listener::serve(
        clients,
        "clients",
        MAX_CLIENT_CONNECTIONS,
        Gate::clients(),
        &tracker,
        cancel.clone(),
        move |conn: Connection, _| links::serve_client(s.clone(), conn),
    );
    let s = shared.clone();
    listener::serve(
        reports,
        "servers",
        MAX_SERVER_CONNECTIONS,
        Gate::new(move |role| matches!(role, Role::Server { id, .. } if id < n), &shared.token),
        &tracker,
        cancel.clone(),
        move |conn: Connection, role| links::serve_report(s.clone(), conn, role),
    );

    let launcher = Launcher {
        server_bin: opts.server_bin.clone(),
        servers_port,
        log_dir: opts.log_dir.clone(),
        dump_dir: opts.dump_dir.clone(),
        heartbeat: opts.heartbeat,
        token_hex,
        ssh_args: opts.ssh_args.clone(),
        remote_server_bin: opts.remote_server_bin.clone(),
        remote_dir: opts.remote_dir.clone(),
        advertise_host: opts.advertise_host.clone(),
    };
    let (internal_tx, mut internal) = mpsc::unbounded_channel();
    let mut cluster = Cluster {
        topology,
        shared,
        launcher,
        timeout: opts.timeout,
        children: HashMap::new(),
        remote_pids: HashMap::new(),
        links: (0..n).map(|_| None).collect(),
        recovery: None,
        internal_tx,
        fatal: None,
        copied: CopyStats::default(),
        step_began: Instant::now(),
        last_tick: Instant::now(),
        listening_since: Instant::now(),
        installing: None,
    };
    let mut stop = stop_signal(opts.watch_stdin);

    let started = tokio::select! {
        started = cluster.start(&mut events, &mut internal) => started,
        why = &mut stop => Err(Error::Unavailable(format!("{why} during start-up"))),
    };
    let outcome = match started {
        Ok(()) => {
            print!("{}", format_table(&cluster.topology.status()));
            println!("cluster ready: {n} servers, epoch {}", cluster.topology.epoch());
            cluster.serve(&mut events, internal, &mut stop).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome {
        error!(error = %e, "stopping");
    }
    let shut = cluster.shutdown().await;
    cancel.cancel();
    tracker.close();
    outcome.and(shut)
}

/// Resolves with a reason on end of standard input (if watched), SIGINT or SIGTERM. The
/// signals are caught from the call on (not from the first poll: tokio drops a signal that
/// arrives while nobody listens), so a second one can be made ready before it is awaited.
fn stop_signal(watch_stdin: bool) -> StopSignal {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    Box::pin(async move {
        let stdin_closed = async {
            if !watch_stdin {
                return std::future::pending().await;
            }
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 1024];
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            _ = stdin_closed => "end of standard input".to_string(),
            _ = int.recv() => "SIGINT".to_string(),
            _ = term.recv() => "SIGTERM".to_string(),
        }
    })
}

/// The running cluster: topology, processes, control links and the recovery in progress.
struct Cluster {
    topology: Topology,
    shared: Arc<Shared>,
    launcher: Launcher,
    timeout: Duration,
    /// Local server processes by (id, incarnation).
    children: HashMap<(u32, u64), Process>,
    /// Remote server processes by (id, incarnation): their pid on their host.
    remote_pids: HashMap<(u32, u64), u32>,
    links: Vec<Option<ControlLink>>,
    recovery: Option<Recovery>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    /// Set when the service must shut down (two faults): the reason.
    fatal: Option<String>,
    /// The configuration install in progress, if any.
    installing: Option<tokio::task::JoinHandle<()>>,
    /// Snapshot sizes reported during the current recovery's copy (for its summary).
    copied: CopyStats,
    /// When the current recovery step began (each step's duration is logged).
    step_began: Instant,
    /// When the last tick ran (a late one reveals a stall of the coordinator itself).
    last_tick: Instant,
    /// Since when the coordinator has been running without a stall: silence before that
    /// is no evidence against a server (see `on_tick`).
    listening_since: Instant,
}

impl Cluster {
    fn publish(&mut self) {
        self.topology.recovery = self
            .recovery
            .as_ref()
            .map(|r| RecoveryStatus { server: r.failed, step: r.step.number() });
        self.shared.view.send_modify(|view| view.status = self.topology.status());
    }

    /// Spawns every server, waits for all to report, opens control links, and installs the
    /// first configuration.
    async fn start(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) -> Result<()> {
        let n = self.topology.len();
        for id in 0..n {
            let started = self.launcher.spawn(&self.topology.members[id as usize], n).await?;
            self.adopt(id, 0, started);
        }
        let deadline = Instant::now() + STARTUP_LIMIT;
        while self.topology.members.iter().any(|m| !m.live) {
            let event = tokio::select! {
                event = events.recv() => event.ok_or(Error::Closed)?,
                _ = tokio::time::sleep_until(deadline) => {
                    let missing: Vec<u32> = self.topology.members.iter().filter(|m| !m.live).map(|m| m.id).collect();
                    return Err(Error::Unavailable(format!("servers {missing:?} did not start within {STARTUP_LIMIT:?}; see their logs")));
                }
                Some(Internal::Exited { id, status, .. }) = internal.recv() => {
                    let log = self.launcher.log_of(&self.topology.members[id as usize]);
                    return Err(Error::Unavailable(format!("server {id} exited during start-up ({status}); see {log}")));
                }
            };
            match event {
                Event::Started { id, ports, pid, .. } => {
                    self.topology.members[id as usize].started(ports, pid);
                    info!(id, ?ports, pid, "server started");
                }
                Event::ReportLost { id, why, .. } => {
                    return Err(Error::Unavailable(format!(
                        "server {id} lost during start-up: {why}"
                    )));
                }
                Event::Updated { .. } => {}
            }
        }
        for member in &self.topology.members {
            let link =
                ControlLink::connect(member.id, &member.control_addr(), &self.shared.token).await?;
            self.links[member.id as usize] = Some(link);
        }
        let config = self.topology.initial_config();
        let links: Vec<ControlLink> = self.links.iter().flatten().cloned().collect();
        install(&config, &[links]).await.map_err(Error::Unavailable)?;
        self.topology.config = Some(config.clone());
        for member in &mut self.topology.members {
            member.state = ServerState::Running;
        }
        self.shared.view.send_modify(|view| view.config = Some(config));
        self.publish();
        Ok(())
    }

    /// Serves until a stop signal or a fatal failure.
    async fn serve(
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
                    info!(reason = %why, "shutting down");
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
        match event {
            Event::Started { id, incarnation, ports, pid } => {
                let member = &mut self.topology.members[id as usize];
                if member.incarnation != incarnation {
                    return;
                }
                member.started(ports, pid);
                info!(id, incarnation, ?ports, pid, "replacement server started");
                let addr = member.control_addr();
                let token = self.shared.token.clone();
                let tx = self.internal_tx.clone();
                tokio::spawn(async move {
                    let message = match ControlLink::connect(id, &addr, &token).await {
                        Ok(link) => Internal::LinkReady { id, incarnation, link },
                        Err(e) => Internal::Recovery(Input::SpawnFailed {
                            incarnation,
                            why: format!("control link: {e}"),
                        }),
                    };
                    let _ = tx.send(message);
                });
            }
            Event::ReportLost { id, incarnation, why } => {
                let member = &self.topology.members[id as usize];
                if member.incarnation == incarnation && member.live {
                    self.lost(id, format!("report link lost ({why})"), false);
                }
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
                if self
                    .recovery
                    .as_ref()
                    .is_some_and(|r| matches!(r.step, recovery::Step::Copy { .. }))
                {
                    self.copied.entries += copied.entries;
                    self.copied.bytes += copied.bytes;
                }
                self.feed(Input::Updated { into, epoch });
            }
        }
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
                let member = &self.topology.members[id as usize];
                if member.incarnation == incarnation && member.live {
                    self.lost(id, format!("process exited ({status})"), true);
                } else {
                    // Ends the wait for a lost server's lease (step 0), or fails a
                    // replacement that died before it reported (step 1).
                    self.feed(Input::Exited { id, incarnation });
                    let why = format!("the new server exited before reporting ({status})");
                    self.feed(Input::SpawnFailed { incarnation, why });
                }
            }
            Internal::LinkReady { id, incarnation, link } => {
                if self.topology.members[id as usize].incarnation == incarnation {
                    self.links[id as usize] = Some(link);
                    self.feed(Input::Started { incarnation });
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
        let now = Instant::now();
        let gap = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        if gap > STALL {
            warn!(
                stalled_ms = gap.as_millis() as u64,
                "the coordinator was not running; heartbeat silence counts from now"
            );
            self.listening_since = now;
        }
        let silent: Vec<u32> = self
            .topology
            .members
            .iter()
            .filter(|m| {
                let heard = self.shared.last_heartbeat(m.id).max(self.listening_since);
                m.live && now.saturating_duration_since(heard) > self.timeout
            })
            .map(|m| m.id)
            .collect();
        for id in silent {
            self.lost(id, format!("no heartbeat for {:?}", self.timeout), false);
        }
        if let Some(recovery) = &mut self.recovery {
            let actions = recovery.tick(now);
            self.perform(actions);
        }
    }

    /// Server `id` (its current incarnation) is gone.
    /// `exited`: the process is known to be gone (it cannot serve even with a lease).
    fn lost(&mut self, id: u32, why: String, exited: bool) {
        let member = &mut self.topology.members[id as usize];
        member.live = false;
        self.links[id as usize] = None;
        let incarnation = member.incarnation;
        warn!(id, incarnation, reason = %why, "server lost");
        if self.recovery.is_some() {
            return self.feed(Input::Lost { id, incarnation });
        }
        member.state = ServerState::Failed;
        // Fence first, then read the last heartbeat: no lease can be granted after this read.
        self.shared.set_incarnation(id, incarnation + 1);
        let now = Instant::now();
        let lease_end = if exited {
            now
        } else {
            self.shared.last_heartbeat(id) + self.shared.lease + lease_margin(self.shared.lease)
        };
        info!(
            id,
            wait_ms = lease_end.saturating_duration_since(now).as_millis() as u64,
            "recovery: step 0, waiting for the lease to expire"
        );
        self.copied = CopyStats::default();
        self.step_began = now;
        let deadlines = Deadlines {
            lease: self.shared.lease + lease_margin(self.shared.lease),
            ..Deadlines::default()
        };
        self.recovery = Some(Recovery::new(id, incarnation + 1, lease_end, now, deadlines));
        self.publish();
        let actions = self.recovery.as_mut().map(|r| r.tick(now)).unwrap_or_default();
        self.perform(actions);
    }

    fn feed(&mut self, input: Input) {
        let Some(recovery) = &mut self.recovery else {
            return;
        };
        let actions = recovery.step(input, Instant::now());
        self.perform(actions);
    }

    fn perform(&mut self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let Some(recovery) = &self.recovery else {
            return;
        };
        let a = recovery.failed;
        let n = self.topology.len();
        let b = secondary_of(a, n);
        for action in actions {
            let previous_ms = self.step_began.elapsed().as_millis() as u64;
            self.step_began = Instant::now();
            info!(server = a, ?action, previous_step_ms = previous_ms, "recovery");
            match action {
                Action::TakeOver { serial } => {
                    let config = self.next_config(|c| {
                        c.servers[a as usize].state = Replica::Down;
                        c.serving[a as usize] = b;
                    });
                    self.install_async(serial, config, vec![self.live_except(a)], None);
                }
                Action::Spawn { incarnation } => self.spawn_replacement(a, incarnation),
                Action::Join { serial, .. } => {
                    let addr = self.topology.members[a as usize].addr();
                    let config = self.next_config(|c| {
                        c.servers[a as usize] = addr;
                        c.servers[a as usize].state = Replica::Joining;
                        c.serving[a as usize] = b;
                    });
                    let stages = vec![vec![a], self.live_except(a)];
                    self.install_async(serial, config, stages, None);
                }
                Action::HandBack { serial } => {
                    let config = self.next_config(|c| {
                        c.servers[a as usize].state = Replica::Up;
                        c.serving[a as usize] = a;
                    });
                    // b lets go of a's keys (its writes in flight settle) before a+ takes them.
                    let others = self.live_except(a).into_iter().filter(|&id| id != b).collect();
                    self.install_async(serial, config, vec![vec![b], vec![a], others], None);
                }
                Action::RollBack { serial, kill, why, fence } => {
                    self.copied = CopyStats::default();
                    warn!(server = a, %why, "recovery: rolling back to step 1");
                    self.kill(a, kill);
                    self.links[a as usize] = None;
                    let member = &mut self.topology.members[a as usize];
                    member.live = false;
                    member.incarnation = kill + 1;
                    // Fence a+ first (no more leases), then read its last heartbeat.
                    self.shared.set_incarnation(a, kill + 1);
                    let lease_end = self.shared.last_heartbeat(a)
                        + self.shared.lease
                        + lease_margin(self.shared.lease);
                    let config = self.next_config(|c| {
                        c.servers[a as usize].state = Replica::Down;
                        c.serving[a as usize] = b;
                    });
                    let not_before = fence.then_some(lease_end);
                    self.install_async(serial, config, vec![self.live_except(a)], not_before);
                }
                Action::Shutdown { why } => self.fatal = Some(why),
                Action::Finished { took, attempts } => {
                    self.topology.members[a as usize].state = ServerState::Running;
                    info!(
                        server = a,
                        took_ms = took.as_millis() as u64,
                        keys_copied = self.copied.entries,
                        bytes_copied = self.copied.bytes,
                        attempts,
                        epoch = self.topology.epoch(),
                        "recovery complete: full redundancy restored"
                    );
                }
            }
        }
        if self.recovery.as_ref().is_some_and(Recovery::is_done) {
            self.recovery = None;
        }
        self.publish();
    }

    /// Ids of the live servers other than `a`.
    fn live_except(&self, a: u32) -> Vec<u32> {
        self.topology.members.iter().filter(|m| m.live && m.id != a).map(|m| m.id).collect()
    }

    /// The current configuration with `change` applied and the epoch bumped; it becomes the
    /// coordinator's current one (published to clients once installed).
    fn next_config(&mut self, change: impl FnOnce(&mut ClusterConfig)) -> ClusterConfig {
        let mut config = self.topology.config.clone().expect("configured before any recovery");
        config.epoch += 1;
        change(&mut config);
        self.topology.config = Some(config.clone());
        config
    }

    fn publish_config(&mut self, epoch: u64) {
        if let Some(config) = self.topology.config.clone().filter(|c| c.epoch == epoch) {
            info!(epoch, serving = ?config.serving, "configuration published");
            self.shared.view.send_modify(|view| view.config = Some(config));
        }
    }

    /// Installs `config` on the servers of each stage in turn (a stage after the previous
    /// one answered), in a task; the outcome comes back as a recovery input.
    /// `not_before`: wait until then (a fenced server's lease) before the first stage. An
    /// install still running from an earlier action is abandoned.
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
                Err(why) => Input::InstallFailed { serial, why },
            };
            let _ = tx.send(Internal::Recovery(input));
        }));
    }

    /// Recovery step 1: kill what is left of server `a` and start incarnation `incarnation`.
    fn spawn_replacement(&mut self, a: u32, incarnation: u64) {
        let member = &mut self.topology.members[a as usize];
        member.incarnation = incarnation;
        member.live = false;
        member.pid = 0;
        member.state = ServerState::Recovering;
        self.shared.set_incarnation(a, incarnation);
        let stale: Vec<(u32, u64)> = self
            .children
            .keys()
            .chain(self.remote_pids.keys())
            .filter(|&&(id, inc)| id == a && inc < incarnation)
            .copied()
            .collect();
        for (id, inc) in stale {
            self.kill(id, inc);
        }
        let member = self.topology.members[a as usize].clone();
        let launcher = self.launcher.clone();
        let n = self.topology.len();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let message = match launcher.spawn(&member, n).await {
                Ok(started) => Internal::Spawned { id: a, incarnation, started },
                Err(e) => {
                    Internal::Recovery(Input::SpawnFailed { incarnation, why: e.to_string() })
                }
            };
            let _ = tx.send(message);
        });
    }

    /// Keeps track of a server process we started. A local one is watched: its exit is
    /// reported to the main loop. A remote one is known by its pid on its host.
    fn adopt(&mut self, id: u32, incarnation: u64, started: Started) {
        match started {
            Started::Local(child) => {
                info!(id, incarnation, pid = child.id(), "server spawned");
                let tx = self.internal_tx.clone();
                let process = Process::watch(child, move |status| {
                    let _ = tx.send(Internal::Exited { id, incarnation, status });
                });
                self.children.insert((id, incarnation), process);
            }
            Started::Remote { pid } => {
                self.remote_pids.insert((id, incarnation), pid);
            }
        }
    }

    /// Kills a server process we started, best effort: a local one at once (its watcher
    /// reaps it), a remote one over ssh in the background.
    fn kill(&mut self, id: u32, incarnation: u64) {
        if let Some(process) = self.children.get_mut(&(id, incarnation)) {
            info!(id, incarnation, pid = process.pid, "killing server process");
            process.kill();
        }
        if let Some(pid) = self.remote_pids.remove(&(id, incarnation)) {
            let launcher = self.launcher.clone();
            let member = self.topology.members[id as usize].clone();
            tokio::spawn(async move { launcher.kill_remote(&member, incarnation, pid).await });
        }
    }

    /// Drain every server (no write in flight), then have each write its dumps and exit;
    /// finally reap the processes, killing any that did not exit. A server that cannot
    /// write its dumps (a full disk) keeps its data and stays up: it is asked again until it
    /// succeeds, or until a second SIGINT or SIGTERM gives up on it, which leaves it running
    /// (it retries on its own) and is an error.
    async fn shutdown(&mut self) -> Result<()> {
        let began = Instant::now();
        let give_up = stop_signal(false);
        if let Some(install) = self.installing.take() {
            install.abort();
        }
        let live: Vec<ControlLink> = self.links.iter().flatten().cloned().collect();
        let drained =
            join_all(live.iter().map(|l| l.call(ControlRequest::Drain, DRAIN_LIMIT))).await;
        // A server that answered the drain gets all the time its dump needs; one that did
        // not (paused, cut off) only a short try, so it cannot hold the others' exit.
        let dumps = live.iter().zip(&drained).map(|(link, drained)| {
            let limit = if drained.is_ok() { DUMP_LIMIT } else { DRAIN_LIMIT };
            link.call(ControlRequest::Shutdown, limit)
        });
        let results = join_all(dumps).await;
        // Servers lost before the stop (not replaced yet) write no dumps either.
        let mut gone: Vec<u32> =
            (0..).zip(&self.links).filter(|(_, link)| link.is_none()).map(|(id, _)| id).collect();
        let pending = sort_dumps(live.into_iter().zip(results).collect(), 1, &mut gone);
        let abandoned = retry_dumps(pending, give_up, &mut gone).await;
        let reaped = self.children.drain().filter(|((id, _), _)| !abandoned.contains(id)).map(
            |((id, _), process)| async move {
                if !process.reap(Duration::from_secs(1)).await {
                    warn!(id, "server did not exit; killed it");
                }
            },
        );
        join_all(reaped).await;
        info!(elapsed_ms = began.elapsed().as_millis() as u64, "shutdown complete");
        let mut problems = Vec::new();
        if !gone.is_empty() {
            problems.push(format!(
                "server(s) {gone:?} did not answer the shutdown and wrote no dumps (their keys \
                 are in the next servers' secondary dumps)"
            ));
        }
        if !abandoned.is_empty() {
            problems.push(format!(
                "the dumps of server(s) {abandoned:?} are not written; they keep their data and \
                 retry on their own every second (kill them to throw it away)"
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        let problems = problems.join("; ");
        error!(%problems, "shutdown incomplete");
        Err(Error::Unavailable(problems))
    }
}

/// Whether a server's dumps are written, still to be asked for, or beyond asking.
enum Dump {
    Written,
    /// It could not write them and is still up, keeping its data.
    Pending,
    /// It did not answer (dead, paused, cut off).
    Gone,
}

/// Sorts the answers to one round of Shutdowns: returns the servers to ask again, adds
/// those beyond asking to `gone`.
fn sort_dumps(
    answers: Vec<(ControlLink, Result<ControlResponse>)>,
    attempt: u64,
    gone: &mut Vec<u32>,
) -> Vec<ControlLink> {
    let mut pending = Vec::new();
    for (link, result) in answers {
        match dumped(&link, &result, attempt) {
            Dump::Written => {}
            Dump::Pending => pending.push(link),
            Dump::Gone => gone.push(link.id()),
        }
    }
    pending
}

/// Logs the answer to a Shutdown (a failure to write only at the 1st, 2nd, 4th, 8th...
/// `attempt`) and classifies it.
fn dumped(link: &ControlLink, result: &Result<ControlResponse>, attempt: u64) -> Dump {
    let id = link.id();
    match result {
        Ok(ControlResponse::ShutDown { primary_keys, secondary_keys }) => {
            info!(id, primary_keys, secondary_keys, "server dumped and stopped");
            Dump::Written
        }
        Ok(ControlResponse::Failed(why)) => {
            if attempt.is_power_of_two() {
                error!(id, %why, attempt, "server could not write its dumps; it keeps its data");
            }
            Dump::Pending
        }
        other => {
            warn!(id, ?other, "server did not shut down cleanly; no dumps from it");
            Dump::Gone
        }
    }
}

/// Asks the servers in `pending` to write their dumps again every [`DUMP_RETRY`], until all
/// have (or are beyond asking: added to `gone`), or until `give_up` resolves. Returns the
/// ids of those that still have not.
async fn retry_dumps(
    mut pending: Vec<ControlLink>,
    mut give_up: StopSignal,
    gone: &mut Vec<u32>,
) -> Vec<u32> {
    if pending.is_empty() {
        return Vec::new();
    }
    let ids = |links: &[ControlLink]| links.iter().map(ControlLink::id).collect::<Vec<_>>();
    say(&format!(
        "server(s) {:?} could not write their dumps (see the log); they keep their data. \
         Asking again every {} s until they can; SIGINT (ctrl+c) or SIGTERM gives up",
        ids(&pending),
        DUMP_RETRY.as_secs()
    ));
    let mut attempt = 1;
    let gone_before = gone.len();
    while !pending.is_empty() {
        attempt += 1;
        let ask_again = async {
            tokio::time::sleep(DUMP_RETRY).await;
            join_all(pending.iter().map(|l| l.call(ControlRequest::Shutdown, DUMP_LIMIT))).await
        };
        let results = tokio::select! {
            why = &mut give_up => {
                error!(%why, servers = ?ids(&pending), "gave up waiting for dumps");
                return ids(&pending);
            }
            results = ask_again => results,
        };
        pending = sort_dumps(pending.into_iter().zip(results).collect(), attempt, gone);
    }
    let all = gone.len() == gone_before;
    say(if all { "every dump is written" } else { "no server is left to ask" });
    Vec::new()
}

/// A line for whoever runs the coordinator, on standard error, which may be gone (a closed
/// terminal, a pipe whose reader died): never fail on it.
fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("ftkv coordinator: {line}\n").as_bytes());
}

/// Extra wait after a lost server's lease ends, for clock-rate differences between hosts.
fn lease_margin(lease: Duration) -> Duration {
    (lease / 10).max(Duration::from_millis(50))
}

/// Sends `config` to each stage's servers concurrently, stage after stage.
async fn install(config: &ClusterConfig, stages: &[Vec<ControlLink>]) -> Result<(), String> {
    for stage in stages {
        let calls = stage
            .iter()
            .map(|link| link.call(ControlRequest::SetConfig(config.clone()), INSTALL_LIMIT));
        for (link, result) in stage.iter().zip(join_all(calls).await) {
            match result {
                Ok(ControlResponse::Done) => {}
                Ok(other) => {
                    return Err(format!(
                        "server {} refused epoch {}: {other:?}",
                        link.id(),
                        config.epoch
                    ));
                }
                Err(e) => return Err(format!("server {}: {e}", link.id())),
            }
        }
    }
    Ok(())
}
