//! Starting server processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::config::Host;
use crate::coord::topology::Member;
use crate::error::{Error, Result};

/// Everything needed to start a server, the same for all of them.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub server_bin: PathBuf,
    /// Host name servers use to reach the coordinator.
    pub coord_host: String,
    pub servers_port: u16,
    pub log_dir: PathBuf,
    pub dump_dir: PathBuf,
    pub heartbeat: Duration,
    /// Hex cluster token, written to the server's standard input (never on its command line).
    pub token_hex: String,
}

/// The `server` binary beside this executable.
pub fn default_server_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("server"))
}

impl Launcher {
    /// Starts the server for `member` (its current incarnation) and hands it the token.
    pub async fn spawn(&self, member: &Member, servers: u32) -> Result<Child> {
        let Host::Local(_) = member.spec.host else {
            return Err(Error::Unavailable(format!(
                "server {}: host {:?} needs ssh, which this version cannot start",
                member.id,
                member.spec.host.name()
            )));
        };
        if !self.server_bin.is_file() {
            return Err(Error::Unavailable(format!(
                "server binary not found at {} (use --server-bin)",
                self.server_bin.display()
            )));
        }
        let mut child = Command::new(&self.server_bin)
            .args(self.args(member, servers))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                Error::Unavailable(format!("cannot start {}: {e}", self.server_bin.display()))
            })?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(format!("{}\n", self.token_hex).as_bytes()).await?;
        drop(stdin);
        Ok(child)
    }

    fn args(&self, member: &Member, servers: u32) -> Vec<String> {
        let log = path_string(&self.log_dir.join(format!("server_{}.log", member.id)));
        let spec = &member.spec;
        vec![
            "-h".into(),
            self.coord_host.clone(),
            "-m".into(),
            self.servers_port.to_string(),
            "-c".into(),
            spec.client_port.to_string(),
            "-s".into(),
            spec.servers_port.to_string(),
            "-M".into(),
            spec.coord_port.to_string(),
            "-S".into(),
            member.id.to_string(),
            "-n".into(),
            servers.to_string(),
            "-l".into(),
            log,
            "--dump-dir".into(),
            path_string(&self.dump_dir),
            "--incarnation".into(),
            member.incarnation.to_string(),
            "--heartbeat-ms".into(),
            self.heartbeat.as_millis().to_string(),
        ]
    }
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}
