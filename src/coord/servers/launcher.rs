//! Starting and killing server processes: local children, or detached processes on other
//! hosts started over ssh.

use std::net::{ToSocketAddrs, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::config::Host;
use crate::coord::ha::step_down::KilledOnStepDown;
use crate::coord::servers::links::Coordinators;
use crate::coord::state::Member;
use crate::error::{Error, Result};
use crate::lines;

/// Options on every ssh call: never prompt, never hang on a dead host.
const SSH_DEFAULTS: [&str; 6] =
    ["-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", "ServerAliveInterval=2"];
/// Longest an ssh start or kill may take.
const SSH_LIMIT: Duration = Duration::from_secs(10);

/// Everything needed to start a server, the same for all of them.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub server_bin: PathBuf,
    pub servers_port: u16,
    pub log_dir: PathBuf,
    pub dump_dir: PathBuf,
    pub heartbeat: Duration,
    /// Hex cluster token, written to the server's standard input (never on its command line).
    pub token_hex: String,
    /// Extra options for every ssh call (`--ssh-args`).
    pub ssh_args: Vec<String>,
    /// The server program on remote hosts.
    pub remote_server_bin: String,
    /// Directory on remote hosts for logs and dumps (relative: to the login directory).
    pub remote_dir: String,
    /// Address remote servers use to reach the coordinator; `None`: the coordinator's
    /// source address on the route to each host.
    pub advertise_host: Option<String>,
    /// `--orphan-timeout` of every server.
    pub orphan_timeout: Duration,
    /// `--fsync` of every server.
    pub fsync: crate::aof::FsyncPolicy,
    /// `--compact-min-mib` of every server.
    pub compact_min_mib: u64,
    /// Servers started now keep their log, to load it when told (`--from-log`: the start
    /// after a crash); otherwise each starts a new one.
    pub from_log: bool,
    /// The standby coordinators, given to every server after this one's address.
    pub coordinators: Coordinators,
}

/// A started server process.
pub enum Started {
    Local(Child),
    /// Detached on another host; `pid` there.
    Remote {
        pid: u32,
    },
}

/// The `server` binary beside this executable.
pub fn default_server_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("server"))
}

/// This machine's source address on the route to `host` (no packet is sent: connecting a
/// UDP socket only picks the route).
fn source_address_towards(host: &str) -> Result<String> {
    let target = (host, 9)
        .to_socket_addrs()
        .map_err(|e| Error::Unavailable(format!("cannot resolve host {host}: {e}")))?
        .next()
        .ok_or_else(|| Error::Unavailable(format!("host {host} has no address")))?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(target).map_err(|e| Error::Unavailable(format!("no route to {host}: {e}")))?;
    Ok(socket.local_addr()?.ip().to_string())
}

/// Quotes one word for a POSIX shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn ssh_destination(user: &Option<String>, host: &str) -> String {
    match user {
        Some(user) => format!("{user}@{host}"),
        None => host.to_string(),
    }
}

impl Launcher {
    /// Starts the server for `member` (its current incarnation) and hands it the token.
    pub async fn spawn(&self, member: &Member, servers: u32) -> Result<Started> {
        match &member.spec.host {
            Host::Local(_) => self.spawn_local(member, servers).await.map(Started::Local),
            Host::Ssh { user, host } => {
                let pid =
                    tokio::time::timeout(SSH_LIMIT, self.spawn_remote(member, servers, user, host))
                        .await
                        .map_err(|_| Error::Unavailable(format!("ssh to {host} timed out")))??;
                Ok(Started::Remote { pid })
            }
        }
    }

    async fn spawn_local(&self, member: &Member, servers: u32) -> Result<Child> {
        if !self.server_bin.is_file() {
            return Err(Error::Unavailable(format!(
                "server binary not found at {} (use --server-bin)",
                self.server_bin.display()
            )));
        }
        let log = self.log_of(member);
        let dumps = self.dump_dir.to_string_lossy().into_owned();
        let mut child = Command::new(&self.server_bin)
            .args(self.args(member, servers, "127.0.0.1", &log, &dumps))
            // The token goes on standard input; one in our environment (which the server
            // would read first) is not this cluster's.
            .env_remove("FTKV_CLUSTER_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::Unavailable(format!("cannot start {}: {e}", self.server_bin.display()))
            })?;
        // Until the token is handed over, the process is nobody's: if this is cancelled (a
        // stop during start-up) or fails, kill it rather than leave it untracked.
        let mut unclaimed = KillUnlessClaimed(child.id());
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(format!("{}\n", self.token_hex).as_bytes()).await.map_err(|e| {
            Error::Unavailable(format!(
                "server {}: cannot hand it the cluster token ({e}); did it exit at once? see {log}",
                member.id
            ))
        })?;
        unclaimed.0 = None;
        Ok(child)
    }

    /// Where server `member` logs (on its host, for a remote one).
    pub fn log_of(&self, member: &Member) -> String {
        let name = format!("server_{}.log", member.id);
        match &member.spec.host {
            Host::Local(_) => self.log_dir.join(name).to_string_lossy().into_owned(),
            Host::Ssh { host, .. } => format!("{host}:{}/{name}", self.remote_dir),
        }
    }

    /// `ssh [user@]host '<server> ... --daemon'`: the server reads the token from standard
    /// input (forwarded by ssh), detaches, prints its pid and lets ssh return.
    async fn spawn_remote(
        &self,
        member: &Member,
        servers: u32,
        user: &Option<String>,
        host: &str,
    ) -> Result<u32> {
        let coord_host = match &self.advertise_host {
            Some(addr) => addr.clone(),
            None => source_address_towards(host)?,
        };
        let log = format!("{}/server_{}.log", self.remote_dir, member.id);
        let mut words = vec![self.remote_server_bin.clone()];
        words.extend(self.args(member, servers, &coord_host, &log, &self.remote_dir));
        words.push("--daemon".into());
        let remote_command = words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ");
        let destination = ssh_destination(user, host);
        let mut child = Command::new("ssh")
            .args(SSH_DEFAULTS)
            .args(&self.ssh_args)
            .arg(&destination)
            .arg(&remote_command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Unavailable(format!("cannot run ssh: {e}")))?;
        let _running = KilledOnStepDown::new(child.id());
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(format!("{}\n", self.token_hex).as_bytes()).await?;
        drop(stdin);
        let (mut out, mut err) = (String::new(), String::new());
        let (mut stdout, mut stderr) =
            (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
        // Both at once: a chatty remote side must not block on a pipe nobody reads.
        let (read_out, read_err) =
            tokio::join!(stdout.read_to_string(&mut out), stderr.read_to_string(&mut err));
        read_out?;
        read_err?;
        let status = child.wait().await?;
        let pid = out
            .lines()
            .find_map(|l| l.strip_prefix("ftkv-server pid "))
            .and_then(|p| p.trim().parse().ok());
        match pid {
            Some(pid) if status.success() => {
                info!(id = member.id, %destination, pid, coord_host, log, "remote server started over ssh");
                Ok(pid)
            }
            _ => Err(Error::Unavailable(format!(
                "starting server {} on {destination} {} ({status}): {}",
                member.id,
                lines::SSH_FAILED,
                err.trim()
            ))),
        }
    }

    /// Kills a remote server over ssh, best effort: an unreachable host is fenced by the
    /// lease, not by this.
    pub async fn kill_remote(&self, member: &Member, incarnation: u64, pid: u32) {
        let Host::Ssh { user, host } = &member.spec.host else { return };
        let destination = ssh_destination(user, host);
        let run = Command::new("ssh")
            .args(SSH_DEFAULTS)
            .args(&self.ssh_args)
            .arg(&destination)
            // Only if that pid is still this server (pids are reused).
            .arg(format!("{} && kill -9 {pid}", runs_there(pid, member.id, incarnation)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let run = async {
            let mut child = run?;
            let _running = KilledOnStepDown::new(child.id());
            child.wait().await
        };
        match tokio::time::timeout(SSH_LIMIT, run).await {
            Ok(Ok(status)) => info!(id = member.id, %destination, pid, %status, "kill over ssh"),
            Ok(Err(e)) => {
                warn!(id = member.id, %destination, pid, error = %e, "kill {}", lines::SSH_FAILED)
            }
            Err(_) => warn!(id = member.id, %destination, pid, "kill over ssh timed out"),
        }
    }

    fn args(
        &self,
        member: &Member,
        servers: u32,
        coord_host: &str,
        log: &str,
        dumps: &str,
    ) -> Vec<String> {
        let spec = &member.spec;
        // The leader (this coordinator) first, then the standbys.
        let standbys = self.coordinators.get().into_iter().skip(1);
        let hosts = std::iter::once(format!("{coord_host}:{}", self.servers_port)).chain(standbys);
        [
            ("-h", hosts.collect::<Vec<_>>().join(",")),
            ("-m", self.servers_port.to_string()),
            ("-c", spec.client_port.to_string()),
            ("-s", spec.servers_port.to_string()),
            ("-M", spec.coord_port.to_string()),
            ("-S", member.id.to_string()),
            ("-n", servers.to_string()),
            ("-l", log.to_string()),
            ("--dump-dir", dumps.to_string()),
            ("--incarnation", member.incarnation.to_string()),
            ("--heartbeat-ms", self.heartbeat.as_millis().to_string()),
            ("--orphan-timeout", self.orphan_timeout.as_secs_f64().to_string()),
            ("--fsync", self.fsync.to_string()),
            ("--compact-min-mib", self.compact_min_mib.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .chain(self.from_log.then(|| "--from-log".to_string()))
        .collect()
    }
}

/// The shell test, run on a server's host, that process `pid` is still start `incarnation`
/// of server `id` (pids are reused; a pid that is gone fails it too).
fn runs_there(pid: u32, id: u32, incarnation: u64) -> String {
    format!(
        "tr '\\0' ' ' < /proc/{pid}/cmdline 2>/dev/null | grep -q -- '-S {id} .*--incarnation {incarnation} '"
    )
}

/// Whether the server start that remote `member` names (its pid and incarnation) is surely
/// gone: its host answered over ssh that the pid is not that server any more. A start after
/// a crash of every process needs this to tell a dead cluster from one to take back (a
/// local server's process is looked up in /proc, a remote one can only be asked for). A
/// host that cannot be asked (cut off, its sshd down) may still run it: not gone.
pub async fn remote_gone(ssh_args: &[String], member: &Member) -> bool {
    let Host::Ssh { user, host } = &member.spec.host else { return false };
    let destination = ssh_destination(user, host);
    let test = runs_there(member.pid, member.id, member.incarnation);
    let ask = Command::new("ssh")
        .args(SSH_DEFAULTS)
        .args(ssh_args)
        .arg(&destination)
        .arg(format!("if {test}; then echo running; else echo gone; fi"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let answer = match tokio::time::timeout(SSH_LIMIT, ask).await {
        Ok(Ok(out)) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(Ok(out)) => format!("ssh {}", out.status),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".into(),
    };
    info!(id = member.id, %destination, pid = member.pid, answer = answer.trim(), "asked over ssh whether the server still runs");
    answer.trim() == "gone"
}

/// Kills process `pid` when dropped, unless cleared first.
struct KillUnlessClaimed(Option<u32>);

impl Drop for KillUnlessClaimed {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) on our own unreaped child, so the pid is still its own.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_remote_shell() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    /// The test run on a host: true for the pid of that server's start, false for another
    /// start of it and once the process is gone.
    #[test]
    fn the_remote_test_knows_a_start_by_its_pid_id_and_incarnation() {
        let run = |test: String| std::process::Command::new("sh").arg("-c").arg(test).status();
        // Waits on a builtin (no child left behind) with a server's words on its command line.
        let mut server = std::process::Command::new("sh")
            .args(["-c", "read line", "server", "-S", "1", "-n", "3", "--incarnation", "2", "-x"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = server.id();
        assert!(run(runs_there(pid, 1, 2)).unwrap().success());
        assert!(!run(runs_there(pid, 1, 3)).unwrap().success(), "another incarnation");
        assert!(!run(runs_there(pid, 2, 2)).unwrap().success(), "another server");
        server.kill().unwrap();
        server.wait().unwrap();
        assert!(!run(runs_there(pid, 1, 2)).unwrap().success(), "gone");
    }

    #[test]
    fn source_address_of_loopback_is_loopback() {
        assert_eq!(source_address_towards("127.0.0.1").unwrap(), "127.0.0.1");
    }
}
