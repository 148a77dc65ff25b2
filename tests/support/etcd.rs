//! A real etcd for tests (Debian's etcd 3.4; scripts/test-deps.sh installs it as root): the
//! standby coordinators elect their leader there, so their tests need members they can kill,
//! restart, and take the quorum from. Two shapes:
//!
//! - [`Etcd`]: one throwaway member on loopback, on two ports it holds (a restarted member
//!   gets them back), its data in a temporary directory. [`Timings::Tuned`] by default, so that leases, and failovers, can be 1 s.
//! - [`EtcdCluster`]: three members (or any number), one per network-namespace host
//!   (tests/support/netns.rs), each on its host's address, for tests that already cut and
//!   kill hosts. Only processes inside those namespaces can reach them (run the client with
//!   [`run_in`](super::netns::run_in)).
//!
//! Every member is killed (SIGKILL, then reaped) on drop, even when the test fails (and it
//! stays in the test's process group, which nextest kills when a test times out). A member
//! that does not become healthy in time, or exits, fails the test with its log.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{Hosts, addr};
use super::ports::{Held, hold};

/// How long a single member may take to be healthy. Measured here: 0.1-1.1 s, most of it
/// etcd creating and syncing its 64 MB write-ahead log on a fresh data dir (so it grows with
/// the disk's load); with the default timings about 1.1 s.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How long the members of a cluster may take to elect a leader and be healthy (0.3-0.7 s
/// measured here; generous, as members on a loaded 2-core machine can miss their first
/// elections).
const CLUSTER_START_LIMIT: Duration = Duration::from_secs(20);

/// The ports members listen on in their own network namespace, where nothing else takes them.
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

/// etcd's raft timings, which bound the smallest lease it grants: `ceil(1.5 x election
/// timeout)` in whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timings {
    /// `--heartbeat-interval 50 --election-timeout 500`: leases as short as 1 s, and a new etcd
    /// leader within about a second of losing one (etcd needs election >= 5 x heartbeat).
    Tuned,
    /// etcd's own defaults (100 ms, 1000 ms), as a production etcd runs: the smallest lease is
    /// 2 s (a 1 s request is granted 2).
    Defaults,
}

impl Timings {
    fn args(self) -> &'static [&'static str] {
        match self {
            Timings::Tuned => &["--heartbeat-interval", "50", "--election-timeout", "500"],
            Timings::Defaults => &[],
        }
    }
}

/// Whether `etcd` and `etcdctl` are installed; as root their absence fails the test (the
/// packages step of scripts/test-deps.sh should have installed them), otherwise it skips.
fn have_etcd() -> bool {
    let found = [("etcd", "--version"), ("etcdctl", "version")].iter().all(|(tool, version)| {
        let mut command = Command::new(tool);
        command.arg(version).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    });
    if !found {
        // SAFETY: geteuid(2) has no preconditions.
        assert!(unsafe { libc::geteuid() } != 0, "etcd is missing: scripts/test-deps.sh");
        eprintln!("skipped: etcd not found (scripts/test-deps.sh installs it as root)");
    }
    found
}

/// One etcd process and everything needed to start it again on the same data: a restarted
/// member keeps its identity, its log and its keys, as after a crash.
struct Member {
    name: String,
    /// `ip netns exec NS`, or nothing: where the member (and etcdctl for it) runs.
    prefix: Vec<String>,
    host: String,
    client_port: u16,
    peer_port: u16,
    /// Its two ports, held while the member lives: those of a loopback member (the members in
    /// namespaces of their own have fixed ports below the ephemeral range, which the kernel
    /// hands to no one).
    _held: Vec<Held>,
    /// `--initial-cluster`: every member's `name=peer URL`.
    initial_cluster: String,
    /// `--initial-cluster-token`: unique to one cluster, so that members never join another's.
    token: String,
    data_dir: PathBuf,
    /// The member's standard output and error, across restarts.
    log: PathBuf,
    timings: Timings,
    child: Option<Child>,
}

impl Member {
    fn client_url(&self) -> String {
        format!("http://{}:{}", self.host, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://{}:{}", self.host, self.peer_port)
    }

    /// `program` behind the member's prefix.
    fn command(&self, program: &str) -> Command {
        let mut command = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut command = Command::new(first);
                command.args(rest).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.env("ETCDCTL_API", "3");
        command
    }

    /// Starts the process (which must not be running). With `ip netns exec` in front the child
    /// is etcd itself (it execs), so its pid and its kill are etcd's.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd member {} is already running", self.name);
        let log = OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let (client, peer) = (self.client_url(), self.peer_url());
        let child = self
            .command("etcd")
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", &self.token])
            .args(["--log-level", "warn", "--logger", "zap"])
            .args(self.timings.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting etcd member {}: {e}", self.name));
        self.child = Some(child);
    }

    /// SIGKILL and reap: a crash, with nothing flushed that etcd had not already synced.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pid(&self) -> u32 {
        let child = self.child.as_ref();
        child.unwrap_or_else(|| panic!("etcd member {} is stopped", self.name)).id()
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `etcdctl endpoint health` on this member alone: a linearizable read through raft, so
    /// true only while the member is part of a quorum with a leader. Short timeouts keep each
    /// poll short: before it listens etcdctl would dial for 2 s, and while it listens but does
    /// not serve yet (no leader) a request waits out the whole command timeout.
    fn healthy(&self) -> bool {
        self.command("etcdctl")
            .args(["--endpoints", &self.client_url()])
            .args(["--dial-timeout", "300ms", "--command-timeout", "500ms", "endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Waits until healthy; fails the test with the member's log after `limit`, or at once if
    /// the process exited (a port taken, a damaged data dir).
    fn wait_healthy(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.child = None;
                panic!("etcd member {} exited ({status}); its log:\n{}", self.name, self.log());
            }
            if self.healthy() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd member {} not healthy after {limit:?}; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One throwaway etcd member on loopback. Its data dir (about 125 MB: etcd preallocates its
/// 64 MB write-ahead log file, and the next one) lives in a temporary directory that goes
/// with it.
pub struct Etcd {
    member: Member,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// A member with [`Timings::Tuned`] (leases as short as 1 s), healthy. `None` (the test
    /// skips with a message) when etcd is not installed and the test does not run as root.
    pub fn start() -> Option<Etcd> {
        Self::start_with(Timings::Tuned)
    }

    /// A member with etcd's default timings (the smallest lease is 2 s), healthy.
    pub fn start_with_defaults() -> Option<Etcd> {
        Self::start_with(Timings::Defaults)
    }

    /// A member with `timings`, healthy.
    pub fn start_with(timings: Timings) -> Option<Etcd> {
        if !have_etcd() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let held = vec![hold(), hold()];
        let (client_port, peer_port) = (held[0].port, held[1].port);
        let name = "t1".to_string();
        let host = "127.0.0.1".to_string();
        let initial_cluster = format!("{name}=http://{host}:{peer_port}");
        let mut member = Member {
            name,
            prefix: Vec::new(),
            host,
            client_port,
            peer_port,
            _held: held,
            initial_cluster,
            token: token(dir.path()),
            data_dir: dir.path().join("data"),
            log: dir.path().join("etcd.log"),
            timings,
            child: None,
        };
        member.spawn();
        member.wait_healthy(START_LIMIT);
        Some(Etcd { member, dir })
    }

    /// Its client URLs, comma-separated (one here), as an etcd endpoints flag takes them.
    pub fn urls(&self) -> String {
        self.member.client_url()
    }

    /// The etcd process (to pause it with SIGSTOP, say). Panics while stopped.
    pub fn pid(&self) -> u32 {
        self.member.pid()
    }

    /// Kills the member (SIGKILL, reaped); its data dir stays for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        self.member.kill();
    }

    /// Starts the same member again (killing it first if it runs) on its data dir and ports,
    /// and waits until it is healthy: its keys are back, and so are its unexpired leases (etcd
    /// gives each its full TTL again when it becomes leader). Its ports are held meanwhile.
    pub fn restart(&mut self) {
        self.member.kill();
        self.member.spawn();
        self.member.wait_healthy(START_LIMIT);
    }

    pub fn running(&self) -> bool {
        self.member.running()
    }

    /// What the member logged (warnings and errors), across restarts.
    pub fn log(&self) -> String {
        self.member.log()
    }

    pub fn data_dir(&self) -> &Path {
        &self.member.data_dir
    }
}

/// An `--initial-cluster-token` unique to this run of this fixture.
fn token(dir: &Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    format!("ftkv-test-{}-{name}", std::process::id())
}

/// An etcd cluster of one member per network-namespace host, each listening on its host's
/// address ([`CLIENT_PORT`], [`PEER_PORT`]). Members are numbered in the order given.
pub struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// One member per `(namespace, address)`, started together, each healthy (a leader is
    /// elected). Needs root (the namespaces do): etcd missing fails the test.
    pub fn start_on<N: AsRef<str>, A: AsRef<str>>(hosts: &[(N, A)]) -> EtcdCluster {
        Self::start_on_with(hosts, Timings::Tuned)
    }

    /// [`start_on`](Self::start_on) with `timings`.
    pub fn start_on_with<N: AsRef<str>, A: AsRef<str>>(
        hosts: &[(N, A)],
        timings: Timings,
    ) -> EtcdCluster {
        assert!(have_etcd(), "etcd is missing: scripts/test-deps.sh");
        let dir = tempfile::tempdir().unwrap();
        let token = token(dir.path());
        let names: Vec<String> = (0..hosts.len()).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(hosts)
            .map(|(name, (_, host))| format!("{name}=http://{}:{PEER_PORT}", host.as_ref()))
            .collect::<Vec<_>>()
            .join(",");
        let members = names
            .into_iter()
            .zip(hosts)
            .map(|(name, (ns, host))| Member {
                prefix: ["ip", "netns", "exec", ns.as_ref()].map(String::from).to_vec(),
                host: host.as_ref().to_string(),
                client_port: CLIENT_PORT,
                peer_port: PEER_PORT,
                _held: Vec::new(),
                initial_cluster: initial_cluster.clone(),
                token: token.clone(),
                data_dir: dir.path().join(&name),
                log: dir.path().join(format!("{name}.log")),
                timings,
                child: None,
                name,
            })
            .collect();
        let mut cluster = EtcdCluster { members, dir };
        // All first: a member alone has no quorum, so none is healthy before a majority runs.
        for member in &mut cluster.members {
            member.spawn();
        }
        for member in &mut cluster.members {
            member.wait_healthy(CLUSTER_START_LIMIT);
        }
        cluster
    }

    /// A member on each of hosts `which` of `hosts` (their namespaces and addresses).
    pub fn start_on_hosts(hosts: &Hosts, which: &[usize]) -> EtcdCluster {
        let pairs: Vec<(String, String)> = which.iter().map(|&i| (hosts.ns(i), addr(i))).collect();
        Self::start_on(&pairs)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Every member's client URL, in member order (stopped members too).
    pub fn member_urls(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Every member's client URL, comma-separated, as an etcd endpoints flag takes them.
    pub fn urls(&self) -> String {
        self.member_urls().join(",")
    }

    /// Member `i`'s etcd process. Panics while it is stopped.
    pub fn pid(&self, i: usize) -> u32 {
        self.members[i].pid()
    }

    pub fn running(&self, i: usize) -> bool {
        self.members[i].running()
    }

    /// Kills member `i` (SIGKILL, reaped); its data dir stays for
    /// [`restart_member`](Self::restart_member).
    pub fn kill_member(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again (killing it first if it runs) on its data dir. Waits until it is
    /// healthy if a majority of the members then runs; otherwise (no quorum yet) it cannot be,
    /// and this returns once it is started: restart enough members, then
    /// [`wait_healthy`](Self::wait_healthy).
    pub fn restart_member(&mut self, i: usize) {
        self.members[i].kill();
        self.members[i].spawn();
        if self.has_majority() {
            self.members[i].wait_healthy(CLUSTER_START_LIMIT);
        }
    }

    /// Waits until every running member is healthy (fails the test with the first one's log
    /// that is not, after the cluster start limit).
    pub fn wait_healthy(&mut self) {
        for member in self.members.iter_mut().filter(|m| m.running()) {
            member.wait_healthy(CLUSTER_START_LIMIT);
        }
    }

    /// Whether a majority of the members runs.
    fn has_majority(&self) -> bool {
        self.members.iter().filter(|m| m.running()).count() * 2 > self.members.len()
    }

    /// The member that is etcd's raft leader now, as the running members report it
    /// (`etcdctl endpoint status`); `None` when none reports one (no quorum, an election
    /// under way).
    pub fn leader(&self) -> Option<usize> {
        let running: Vec<&Member> = self.members.iter().filter(|m| m.running()).collect();
        let urls: Vec<String> = running.iter().map(|m| m.client_url()).collect();
        let out = running
            .first()?
            .command("etcdctl")
            .args(["--endpoints", &urls.join(",")])
            .args(["--dial-timeout", "300ms", "--command-timeout", "1s"])
            .args(["endpoint", "status", "-w", "json"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let statuses: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let leader = statuses.as_array()?.iter().find(|status| {
            let id = &status["Status"]["header"]["member_id"];
            id.as_u64().is_some_and(|id| id != 0 && Some(id) == status["Status"]["leader"].as_u64())
        })?;
        let url = leader["Endpoint"].as_str()?;
        self.members.iter().position(|m| m.client_url() == url)
    }

    /// What member `i` logged (warnings and errors), across restarts.
    pub fn log(&self, i: usize) -> String {
        self.members[i].log()
    }

    pub fn data_dir(&self, i: usize) -> &Path {
        &self.members[i].data_dir
    }
}
