//! Standby coordinators for tests of `coord --etcd`: more `coord` processes on the same
//! configuration and etcd, each in a directory of its own (its log and its output there),
//! all in the first coordinator's process group, so that dropping the cluster ends them.
//! Servers they start write their logs and dumps in the cluster's directory, as the first
//! coordinator's do.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::mpsc;
use std::time::Duration;

use super::cluster::{Cluster, await_line_in, kill, spawn_coord, wait_child, wait_until};
use super::ports::{Held, hold_behind};

pub struct Standby {
    pub dir: PathBuf,
    pub coord: Child,
    stdin: Option<ChildStdin>,
    pub stdout: mpsc::Receiver<String>,
    pub clients_port: u16,
    pub servers_port: u16,
    /// Its two ports, held while it lives (one that steps down execs itself again and binds
    /// them again).
    _held: [Held; 2],
    /// The address it registers in etcd and answers with (`--advertise-host`, else
    /// 127.0.0.1).
    pub host: String,
}

/// The flags every coordinator of an etcd test gets: etcd at `urls`, cluster `name`, a
/// 1 s heartbeat timeout, and an orphan timeout long enough to outlast any failover.
pub fn etcd_flags(urls: &str, name: &str) -> Vec<String> {
    ["--etcd", urls, "--cluster", name, "-t", "1", "--orphan-timeout", "30"]
        .map(String::from)
        .to_vec()
}

impl Cluster {
    /// Starts coordinator number `n` (1, 2, ...) with `extra` in `standby-<n>` of the
    /// cluster's directory, on two ports it holds; returns once it printed them.
    pub fn spawn_standby(&self, n: usize, extra: &[String]) -> Standby {
        self.spawn_standby_on(n, &[], extra)
    }

    /// [`spawn_standby`](Self::spawn_standby) behind `prefix` (e.g. `ip netns exec NS`: on
    /// another test host, which `extra` should name with `--advertise-host`).
    pub fn spawn_standby_on(&self, n: usize, prefix: &[String], extra: &[String]) -> Standby {
        let dir = self.path(&format!("standby-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(self.path("config.txt"), dir.join("config.txt")).unwrap();
        let here = self.dir.path().to_str().unwrap().to_string();
        let mut args: Vec<&str> = extra.iter().map(String::as_str).collect();
        args.extend(["--log-dir", &here, "--dump-dir", &here]);
        let held = [hold_behind(prefix), hold_behind(prefix)];
        let on = held.each_ref().map(|held| held.port);
        let (coord, stdin, stdout) =
            spawn_coord(&dir, prefix, on, &args, self.coord_group()).expect("spawn a standby");
        let host = extra
            .iter()
            .position(|flag| flag == "--advertise-host")
            .and_then(|at| extra.get(at + 1))
            .map_or("127.0.0.1".to_string(), String::clone);
        let mut standby = Standby {
            dir,
            coord,
            stdin,
            stdout,
            clients_port: 0,
            servers_port: 0,
            _held: held,
            host,
        };
        let ports = standby.await_line("ftkv coordinator: clients port ", Duration::from_secs(10));
        let rest = ports.strip_prefix("ftkv coordinator: clients port ").unwrap();
        let (clients, servers) = rest.split_once(", servers port ").unwrap();
        standby.clients_port = clients.parse().unwrap();
        standby.servers_port = servers.parse().unwrap();
        assert_eq!([standby.clients_port, standby.servers_port], on, "on the held ports");
        standby
    }

    /// Waits (10 s at most) until every server logged (its log in `logs`) a list of
    /// coordinators naming `standby`'s servers port: from then on a server that loses the
    /// leader tries it.
    pub fn await_servers_know(&self, standby: &Standby, logs: &Path) {
        // As the list is logged: `listed=["host:port", ...]`.
        let servers_port = format!(":{}\"", standby.servers_port);
        let knows = |id: usize| {
            let log = std::fs::read_to_string(logs.join(format!("server_{id}.log")));
            log.unwrap_or_default().lines().any(|line| {
                line.contains(ftkv::lines::COORDINATORS_LISTED) && line.contains(&servers_port)
            })
        };
        let known = wait_until(Duration::from_secs(10), || (0..self.servers()).all(knows));
        assert!(known, "every server learns of the standby at {servers_port}");
    }

    /// Every coordinator's clients port, the first one's first, as clients take them.
    pub fn coord_addrs(&self, standbys: &[&Standby]) -> String {
        let mut addrs = vec![self.coord_addr()];
        addrs.extend(standbys.iter().map(|s| s.addr()));
        addrs.join(",")
    }
}

impl Standby {
    /// Reads its standard output until a line that starts with `prefix` (within `limit`).
    pub fn await_line(&mut self, prefix: &str, limit: Duration) -> String {
        await_line_in(&self.stdout, prefix, limit, || self.log())
    }

    /// Waits (up to `limit`) until its log holds `text`.
    pub fn await_log(&self, text: &str, limit: Duration) {
        let logged = super::cluster::wait_until(limit, || self.log().contains(text));
        assert!(logged, "the standby never logged {text:?}; log:\n{}", self.log());
    }

    /// Every line it printed since the last read.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.try_iter().collect()
    }

    pub fn pid(&self) -> u32 {
        self.coord.id()
    }

    /// Its clients port, as the leader lists it and clients take it.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.clients_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("coord.log")).unwrap_or_default()
    }

    /// End of its standard input (ctrl+d): a leader shuts the cluster down.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits up to `limit` for it to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_child(&mut self.coord, limit)
    }

    pub fn kill(&mut self) {
        kill(self.pid(), "KILL");
        let _ = self.coord.wait();
    }
}

/// Killed with the test, even if the cluster's process group was not (a coordinator that
/// re-executed itself stays in the group, but a test may end between its steps).
impl Drop for Standby {
    fn drop(&mut self) {
        let _ = self.coord.kill();
        let _ = self.coord.wait();
    }
}
