//! A real cluster for tests: the `coord` binary in a temporary directory, which starts the
//! real `server` binaries. Everything is killed on drop. The coordinator's two ports are
//! held by the cluster for its whole life ([`super::ports`]): a coordinator killed and
//! started again binds them again, and while none runs they stay refused (another process
//! can take a freed port).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ftkv::client::Client;
use ftkv::client::line::{Command as Line, Parsed, parse_line};
use ftkv::routing::{secondary_of, slot_of};

use super::ports::{Held, hold_behind};

pub const COORD: &str = env!("CARGO_BIN_EXE_coord");
pub const CLIENT: &str = env!("CARGO_BIN_EXE_client");
pub const SERVER: &str = env!("CARGO_BIN_EXE_server");

/// `--orphan-timeout` of the servers of a test that does not choose one: a test that
/// kills its coordinator expects the servers' dumps soon after (as before servers outlived
/// their coordinator), not a minute later; half a second still takes them through a few
/// attempts at re-attaching first. A test that restarts its coordinator sets a longer one.
pub const ORPHAN_TIMEOUT: &str = "0.5";

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub coord: Child,
    /// The process group of the first coordinator and every server (see `spawn_coord`).
    pgid: u32,
    stdin: Option<ChildStdin>,
    pub clients_port: u16,
    pub servers_port: u16,
    /// The coordinator's clients and servers ports, held while the cluster lives: every
    /// coordinator it starts is given them (`-c`, `-s`).
    held: [Held; 2],
    /// Lines the coordinator printed on standard output after "ready".
    pub stdout: mpsc::Receiver<String>,
    /// The coordinator's "restored ..." line, if its last start restored dumps.
    pub restored: Option<String>,
    pub pids: Vec<u32>,
    /// Address clients use for the coordinator.
    pub coord_host: String,
    /// Prefix that runs the client program where clients live (e.g. `ip netns exec ...`).
    pub client_prefix: Vec<String>,
    /// The port of `/metrics`, when started with `--metrics`.
    pub metrics_port: Option<u16>,
    /// Prefix the coordinator runs behind (restarts too).
    coord_prefix: Vec<String>,
}

impl Cluster {
    /// Starts `n` local servers with default options.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// Starts `n` local servers; `extra` goes on the coordinator's command line.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let mut config = format!("{n}\n");
        for _ in 0..n {
            config.push_str("localhost 0 0 0\n");
        }
        Self::launch(&config, &[], extra)
    }

    /// Starts `coord` on `config` behind `prefix` (e.g. `ip netns exec NS`), on two ports
    /// held where it runs; `extra` goes on its command line. Servers get [`ORPHAN_TIMEOUT`]
    /// unless `extra` sets `--orphan-timeout`.
    pub fn launch(config: &str, prefix: &[String], extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("config.txt"), config).unwrap();
        let held = [hold_behind(prefix), hold_behind(prefix)];
        let ports = held.each_ref().map(|held| held.port);
        let (coord, stdin, stdout) =
            spawn_coord(dir.path(), prefix, ports, extra, 0).expect("spawn coord");
        let mut cluster = Cluster {
            dir,
            pgid: coord.id(),
            coord,
            stdin,
            clients_port: 0,
            servers_port: 0,
            held,
            stdout,
            restored: None,
            pids: Vec::new(),
            coord_host: "127.0.0.1".into(),
            client_prefix: Vec::new(),
            coord_prefix: prefix.to_vec(),
            metrics_port: None,
        };
        cluster.await_ready();
        assert_eq!(cluster.pids.len(), cluster.servers(), "pids from the coordinator's table");
        assert_eq!([cluster.clients_port, cluster.servers_port], ports, "on the held ports");
        cluster
    }

    /// The coordinator's clients and servers ports, held by the cluster.
    pub fn held_ports(&self) -> [u16; 2] {
        self.held.each_ref().map(|held| held.port)
    }

    /// Reads the coordinator's standard output until "cluster ready": its ports and the
    /// pids of the servers it shows running.
    pub fn await_ready(&mut self) {
        self.pids.clear();
        self.restored = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .stdout
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("coordinator not ready; log:\n{}", self.coord_log()));
            if let Some(rest) = line.strip_prefix("ftkv coordinator: clients port ") {
                let (clients, servers) = rest.split_once(", servers port ").unwrap();
                self.clients_port = clients.parse().unwrap();
                self.servers_port = servers.parse().unwrap();
            } else if let Some(pid) = table_pid(&line) {
                self.pids.push(pid);
            } else if let Some(url) = line.strip_prefix("metrics: http://") {
                let port = url.trim_end_matches("/metrics").rsplit_once(':').unwrap().1;
                self.metrics_port = Some(port.parse().unwrap());
            } else if line.starts_with(ftkv::lines::RESTORED) {
                self.restored = Some(line);
            } else if line.starts_with("cluster ready") {
                break;
            }
        }
    }

    /// The process group of the first coordinator and every server.
    pub fn coord_group(&self) -> u32 {
        self.pgid
    }

    /// How many servers the cluster file names.
    pub fn servers(&self) -> usize {
        let config = std::fs::read_to_string(self.path("config.txt")).unwrap();
        config.lines().next().unwrap().trim().parse().unwrap()
    }

    /// kill -9 of the coordinator alone: its servers go on.
    pub fn kill_coord(&mut self) {
        kill(self.coord.id(), "KILL");
        let _ = self.coord.wait();
    }

    /// Starts a coordinator again in the cluster's directory (so on the state of the one
    /// before), in the cluster's process group, and waits until it is ready.
    /// If the group is gone (everything in it exited), the new coordinator leads a new one.
    /// A crash of every process at once: `kill -9` of the coordinator and every server at
    /// the same moment (their process group); returns once none of them runs.
    pub fn crash(&mut self) {
        let pids = self.server_pids();
        assert!(!pids.is_empty(), "servers running");
        // SAFETY: kill(2) of the cluster's own process group.
        unsafe { libc::kill(-(self.pgid as i32), libc::SIGKILL) };
        let _ = self.coord.wait();
        let gone = wait_until(Duration::from_secs(10), || pids.iter().all(|&pid| !alive(pid)));
        assert!(gone, "servers {pids:?} still running after kill -9");
    }

    pub fn restart_coord(&mut self, extra: &[&str]) {
        self.spawn_coord_again(extra);
        self.await_ready();
    }

    /// [`restart_coord`](Self::restart_coord) without waiting until it is ready. It gets
    /// the held ports (a coordinator taking back running servers binds its state's, the same).
    pub fn spawn_coord_again(&mut self, extra: &[&str]) {
        let (dir, prefix, ports) = (self.dir.path(), &self.coord_prefix, self.held_ports());
        let (coord, stdin, stdout) = match spawn_coord(dir, prefix, ports, extra, self.pgid) {
            Ok(spawned) => spawned,
            Err(_) => {
                let spawned = spawn_coord(dir, prefix, ports, extra, 0).expect("spawn coord");
                self.pgid = spawned.0.id();
                spawned
            }
        };
        (self.coord, self.stdin, self.stdout) = (coord, stdin, stdout);
    }

    /// Reads the coordinator's standard output until a line that starts with `prefix`
    /// (within `limit`), and returns it.
    pub fn await_line(&mut self, prefix: &str, limit: Duration) -> String {
        await_line_in(&self.stdout, prefix, limit, || self.coord_log())
    }

    /// Runs a coordinator in the cluster's directory that is expected to refuse to start
    /// (some refusals come after its servers started: it ignores its standard input, and
    /// one that did start is killed after 20 s); returns its output.
    pub fn refused_start(&self, extra: &[&str]) -> std::process::Output {
        let mut coord = coord_in(self.dir.path(), "coord.log")
            .arg("--ignore-stdin")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run coord");
        wait_child(&mut coord, Duration::from_secs(20));
        let _ = coord.kill();
        coord.wait_with_output().expect("coord's output")
    }

    /// Every file in the cluster's directory (not below it) but the logs, with its bytes.
    pub fn files(&self) -> std::collections::BTreeMap<String, Vec<u8>> {
        files_in(self.dir.path())
    }

    pub fn coord_addr(&self) -> String {
        format!("{}:{}", self.coord_host, self.clients_port)
    }

    pub fn client(&self) -> Client {
        Client::new(self.coord_addr(), Duration::from_secs(10))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn coord_log(&self) -> String {
        std::fs::read_to_string(self.path("coord.log")).unwrap_or_default()
    }

    /// Runs the client binary with `args` after `-h 127.0.0.1 -p PORT`, feeding `input`.
    pub fn run_client(&self, args: &[&str], input: impl AsRef<[u8]>) -> ClientRun {
        let port = self.clients_port.to_string();
        let mut child = command(&self.client_prefix, CLIENT)
            .args(["-h", &self.coord_host, "-p", &port])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn client");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.as_ref().to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        ClientRun {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Closes the coordinator's standard input (ctrl+d) and waits for it to exit.
    pub fn ctrl_d(&mut self) -> ExitStatus {
        self.ctrl_d_within(Duration::from_secs(10))
    }

    /// [`ctrl_d`](Self::ctrl_d) for a cluster whose dumps take long to write.
    pub fn ctrl_d_within(&mut self, limit: Duration) -> ExitStatus {
        self.close_stdin();
        self.wait_coord(limit).expect("coordinator did not exit after ctrl+d")
    }

    /// End of the coordinator's standard input (ctrl+d), without waiting for it to exit.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    pub fn wait_coord(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.coord, limit)
    }

    /// The cluster's status as JSON, through the real client program.
    pub fn status(&self) -> serde_json::Value {
        let run = self.run_client(&["status", "--json"], "");
        assert_eq!(run.code, 0, "status: {}", run.stderr);
        serde_json::from_str(&run.stdout).expect("status JSON")
    }

    pub fn pid_of(&self, id: u32) -> u32 {
        self.status()["servers"][id as usize]["pid"].as_u64().unwrap() as u32
    }

    /// Waits until no recovery runs, every server is running, and the epoch is past `after`.
    pub fn wait_recovered(&self, after: u64, limit: Duration) -> serde_json::Value {
        let mut last = serde_json::Value::Null;
        let ok = wait_until(limit, || {
            last = self.status();
            last["recovery"].is_null()
                && last["epoch"].as_u64().unwrap() > after
                && last["servers"].as_array().unwrap().iter().all(|s| s["state"] == "running")
        });
        assert!(ok, "not recovered within {limit:?}: {last}\n{}", self.coord_log());
        last
    }

    /// After ctrl+d: every final value is on its owner's primary and the next server's
    /// secondary, and nothing else is anywhere.
    pub fn assert_dumps_match(&self, finals: &HashMap<Vec<u8>, Option<Vec<u8>>>) {
        let n = self.servers() as u32;
        let primaries: Vec<_> = (0..n).map(|id| self.dump(id, "primary")).collect();
        let secondaries: Vec<_> = (0..n).map(|id| self.dump(id, "secondary")).collect();
        for (key, value) in finals {
            let owner = slot_of(key, n);
            let copy = secondary_of(owner, n);
            assert_eq!(primaries[owner as usize].get(key), value.as_ref(), "primary of {owner}");
            assert_eq!(secondaries[copy as usize].get(key), value.as_ref(), "secondary on {copy}");
        }
        let present = finals.values().filter(|v| v.is_some()).count();
        let total: usize = primaries.iter().chain(&secondaries).map(HashMap::len).sum();
        assert_eq!(total, 2 * present, "exactly two copies of each live key");
    }

    /// Reads `server_<id>.<kind>` back into a map.
    pub fn dump(&self, id: u32, kind: &str) -> HashMap<Vec<u8>, Vec<u8>> {
        read_dump(&self.path(&format!("server_{id}.{kind}")))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The whole group: the coordinator and every local server it started, including
        // replacements (which would otherwise outlive the test until their lease ran out).
        // Only while the coordinator is unreaped, so that its id cannot belong to anyone else.
        if let Ok(None) = self.coord.try_wait() {
            // SAFETY: kill(2) on a process group id; no memory is involved.
            unsafe { libc::kill(-(self.pgid as i32), libc::SIGKILL) };
        }
        let _ = self.coord.wait();
        // Servers left running after their coordinator exited (they outlive it for their
        // orphan timeout), replacements and servers of a restarted coordinator included: every
        // server process whose command line names this cluster's directory (its log file). A
        // pid whose server was reaped may belong to another process by now: the program is
        // checked too.
        let mut pids = self.server_pids();
        pids.extend(self.pids.iter().copied().filter(|&pid| is_server(pid)));
        for pid in pids {
            kill(pid, "KILL");
        }
    }
}

/// `coord` in `dir` on its config.txt, free ports, logging to `log`: a second coordinator a
/// test starts by hand next to (or instead of) the cluster's.
pub fn coord_in(dir: &Path, log: &str) -> Command {
    let mut command = Command::new(COORD);
    command.current_dir(dir).args(["-c", "0", "-s", "0", "-C", "config.txt", "-l", log]);
    command
}

/// Waits up to `limit` for `child` to exit; its status, or `None` if it still runs.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Reads `lines` (a coordinator's standard output) until one that starts with `prefix`
/// (within `limit`), and returns it; panics with `log()` otherwise.
pub fn await_line_in(
    lines: &mpsc::Receiver<String>,
    prefix: &str,
    limit: Duration,
    log: impl Fn() -> String,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            panic!("no line {prefix:?} from the coordinator; log:\n{}", log());
        };
        if line.starts_with(prefix) {
            return line;
        }
    }
}

/// Starts `coord` in `dir` on its config.txt, on `[clients, servers]` ports `ports` (held
/// by the caller, see [`super::ports`]), with `extra` on its command line, in process group
/// `pgid` (0: a new one of its own); returns it, its standard input, and its output lines.
/// Servers get [`ORPHAN_TIMEOUT`] unless `extra` sets `--orphan-timeout`.
pub fn spawn_coord(
    dir: &Path,
    prefix: &[String],
    ports: [u16; 2],
    extra: &[&str],
    pgid: u32,
) -> std::io::Result<(Child, Option<ChildStdin>, mpsc::Receiver<String>)> {
    let [clients, servers] = ports.map(|port| port.to_string());
    let mut coord = command(prefix, COORD)
        .current_dir(dir)
        .args(["-c", &clients, "-s", &servers, "-C", "config.txt", "-l", "coord.log"])
        .args(extra)
        .args(if extra.contains(&"--orphan-timeout") {
            &[][..]
        } else {
            &["--orphan-timeout", ORPHAN_TIMEOUT][..]
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // A group of its own, with the local servers it starts (replacements too), so that
        // dropping the cluster ends them all, and a test can signal the group as a
        // terminal's ctrl+c does. A restarted coordinator joins the group of the first.
        .process_group(pgid as i32)
        .spawn()?;
    let stdin = coord.stdin.take();
    let stdout = coord.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((coord, stdin, rx))
}

/// Whether process `pid` runs the `server` binary.
fn is_server(pid: u32) -> bool {
    let program = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    program.split(|&b| b == 0).next() == Some(SERVER.as_bytes())
}

impl Cluster {
    /// Every live `server` process of this cluster (whoever started it): those whose command
    /// line names a path in the cluster's directory.
    pub fn server_pids(&self) -> Vec<u32> {
        // As given, and as the coordinator's getcwd spells it (symbolic links resolved).
        let dirs: Vec<Vec<u8>> =
            [Some(self.dir.path().to_path_buf()), self.dir.path().canonicalize().ok()]
                .into_iter()
                .flatten()
                .map(|dir| [dir.as_os_str().as_encoded_bytes(), b"/"].concat())
                .collect();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let mut words = cmdline.split(|&b| b == 0);
                words.next() == Some(SERVER.as_bytes())
                    && words.any(|word| dirs.iter().any(|dir| word.starts_with(dir)))
                    && alive(pid)
            })
            .collect()
    }
}

/// `program` run behind `prefix` (e.g. `ip netns exec NS`), or directly.
fn command(prefix: &[String], program: &str) -> Command {
    match prefix.split_first() {
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest).arg(program);
            command
        }
        None => Command::new(program),
    }
}

pub struct ClientRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A row of the coordinator's cluster table: `id host client servers coord pid state`.
fn table_pid(line: &str) -> Option<u32> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() == 7 && words[0].parse::<u32>().is_ok() && words[6] == "running" {
        return words[5].parse().ok();
    }
    None
}

/// Every file in `dir` (not below it) but the logs, with its bytes.
pub fn files_in(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.ends_with(".log"))
        .map(|name| (name.clone(), std::fs::read(dir.join(&name)).unwrap()))
        .collect()
}

pub fn read_dump(path: &Path) -> HashMap<Vec<u8>, Vec<u8>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|line| match parse_line(line) {
            Ok(Parsed::Command(Line::Put { key, value })) => (key, value),
            other => panic!("bad dump line {line:?}: {other:?}"),
        })
        .collect()
}

pub fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

pub fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        }
        Err(_) => false,
    }
}

/// Waits until `cond` holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
