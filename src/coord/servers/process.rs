//! Server processes. Each local one is watched by a task that reports its exit at once: a
//! process known to be dead cannot serve, so its keys can move without waiting for its
//! lease to run out.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use tokio::process::Child;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::Host;
use crate::coord::servers::launcher::{Launcher, Started, remote_gone};
use crate::coord::state::Member;

/// A server process this coordinator started.
pub struct Process {
    pub pid: Option<u32>,
    kill: Option<oneshot::Sender<()>>,
    watcher: JoinHandle<()>,
}

impl Process {
    /// Watches `child`; `on_exit` gets its exit status once it ended.
    pub fn watch(mut child: Child, on_exit: impl FnOnce(String) + Send + 'static) -> Self {
        let pid = child.id();
        let (kill, killed) = oneshot::channel::<()>();
        let watcher = tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                // Only an explicit kill: a dropped `Process` leaves its server running.
                Ok(()) = killed => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            on_exit(status.map_or_else(|e| e.to_string(), |s| s.to_string()));
        });
        Process { pid, kill: Some(kill), watcher }
    }

    /// Sends SIGKILL (the watcher reaps the process).
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }

    /// Waits up to `limit` for the process to exit, then kills it; true if it exited alone.
    pub async fn reap(mut self, limit: Duration) -> bool {
        if tokio::time::timeout(limit, &mut self.watcher).await.is_ok() {
            return true;
        }
        self.kill();
        let _ = self.watcher.await;
        false
    }
}

/// Whether process `pid` (0: none) runs `server_bin` (a zombie, or a pid reused by another
/// program, does not).
pub fn runs_server(pid: u32, server_bin: &Path) -> bool {
    pid != 0 && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == server_bin)
}

/// Whether every server of `members` is surely gone: a local one whose process no longer
/// runs, a remote one whose host says so over ssh ([`remote_gone`]; asked only once every
/// local one is gone, all at once, and the first that may still run ends the question).
/// Without asking, remote servers all killed at once (a crash) were taken for a running
/// cluster: the take-back waited `-t` for servers that never came back and stopped with a
/// double fault, where their logs would have brought everything back.
pub async fn all_gone(members: &[Member], server_bin: &Path, ssh_args: &[String]) -> bool {
    let (local, remote): (Vec<&Member>, Vec<&Member>) =
        members.iter().partition(|m| matches!(m.spec.host, Host::Local(_)));
    if !local.iter().all(|m| gone(m, server_bin)) {
        return false;
    }
    let mut asked: FuturesUnordered<_> = remote.iter().map(|m| remote_gone(ssh_args, m)).collect();
    while let Some(gone) = asked.next().await {
        if !gone {
            return false;
        }
    }
    true
}

/// Whether `member` is surely gone: a local server whose process no longer runs.
pub fn gone(member: &Member, server_bin: &Path) -> bool {
    matches!(member.spec.host, Host::Local(_)) && !runs_server(member.pid, server_bin)
}

/// Kills the local servers of `members` that still run (another coordinator's), and waits
/// up to five seconds for them to be gone. Remote ones are left to their orphan timeout:
/// under a restoring configuration they exit without writing dumps.
pub async fn kill_all(members: &[Member], server_bin: &Path) {
    let local: Vec<&Member> =
        members.iter().filter(|m| matches!(m.spec.host, Host::Local(_))).collect();
    for member in &local {
        kill_orphan(member.pid, server_bin);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while local.iter().any(|m| runs_server(m.pid, server_bin))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILL to `pid` if it still runs `server_bin`: it is not our child, so its pid may
/// belong to another program by now.
fn kill_orphan(pid: u32, server_bin: &Path) {
    if runs_server(pid, server_bin) {
        info!(pid, "killing a server started by an earlier coordinator");
        // SAFETY: kill(2) with a pid checked just above; no memory is involved.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// The server processes this coordinator started, by (id, incarnation): local children,
/// watched, and remote ones, known by their pid on their host.
pub struct Processes {
    pub launcher: Launcher,
    local: HashMap<(u32, u64), Process>,
    remote: HashMap<(u32, u64), u32>,
    /// Local servers a coordinator that died started: known by pid only (not our children).
    orphans: HashMap<(u32, u64), u32>,
}

impl Processes {
    pub fn new(launcher: Launcher) -> Self {
        Processes {
            launcher,
            local: HashMap::new(),
            remote: HashMap::new(),
            orphans: HashMap::new(),
        }
    }

    /// Keeps track of the running server of `member` that a coordinator before this one
    /// started (taken back after a restart): it can still be killed.
    pub fn take_back(&mut self, member: &Member) {
        let key = (member.id, member.incarnation);
        match member.spec.host {
            Host::Local(_) => self.orphans.insert(key, member.pid),
            Host::Ssh { .. } => self.remote.insert(key, member.pid),
        };
    }

    /// Keeps track of a server process we started. A local one is watched: `on_exit` gets
    /// its exit status once it ended.
    pub fn adopt(
        &mut self,
        id: u32,
        incarnation: u64,
        started: Started,
        on_exit: impl FnOnce(String) + Send + 'static,
    ) {
        match started {
            Started::Local(child) => {
                info!(id, incarnation, pid = child.id(), "server spawned");
                self.local.insert((id, incarnation), Process::watch(child, on_exit));
            }
            Started::Remote { pid } => {
                self.remote.insert((id, incarnation), pid);
            }
        }
    }

    /// Kills start `incarnation` of `member`, best effort: a local one at once (its watcher
    /// reaps it), a remote one over ssh in the background.
    pub fn kill(&mut self, member: &Member, incarnation: u64) {
        if let Some(process) = self.local.get_mut(&(member.id, incarnation)) {
            info!(id = member.id, incarnation, pid = process.pid, "killing server process");
            process.kill();
        }
        if let Some(pid) = self.orphans.remove(&(member.id, incarnation)) {
            kill_orphan(pid, &self.launcher.server_bin);
        }
        if let Some(pid) = self.remote.remove(&(member.id, incarnation)) {
            let launcher = self.launcher.clone();
            let member = member.clone();
            tokio::spawn(async move { launcher.kill_remote(&member, incarnation, pid).await });
        }
    }

    /// Kills every start of `member` older than `incarnation`.
    pub fn kill_older(&mut self, member: &Member, incarnation: u64) {
        let stale: Vec<u64> = self
            .local
            .keys()
            .chain(self.remote.keys())
            .chain(self.orphans.keys())
            .filter(|&&(id, inc)| id == member.id && inc < incarnation)
            .map(|&(_, inc)| inc)
            .collect();
        for inc in stale {
            self.kill(member, inc);
        }
    }

    /// Waits for the local processes to exit (killing any that do not within a second),
    /// except those of the servers in `left_running`.
    pub async fn reap(&mut self, left_running: &[u32]) {
        let reaped = self.local.drain().filter(|((id, _), _)| !left_running.contains(id)).map(
            |((id, _), process)| async move {
                if !process.reap(Duration::from_secs(1)).await {
                    warn!(id, "server did not exit; killed it");
                }
            },
        );
        join_all(reaped).await;
    }
}
