//! One interactive or scripted client session: parses lines, runs them, prints results in
//! the original's format, and remembers the worst outcome for the exit status.

use std::io::Write;

use crate::client::line::{Command, Parsed, parse_line};
use crate::client::{Client, OpError};
use crate::protocol::StatusReport;
use crate::text::quote;

/// Exit status: 0 all succeeded, 1 only `Key not found` failures, 2 any other failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Ok = 0,
    NotFound = 1,
    Failed = 2,
}

pub struct Session {
    client: Client,
    operations: u64,
    worst: Outcome,
}

impl Session {
    pub fn new(client: Client) -> Self {
        Session { client, operations: 0, worst: Outcome::Ok }
    }

    pub fn outcome(&self) -> Outcome {
        self.worst
    }

    /// Runs one input line (blank lines and `#` comments are skipped).
    pub async fn run_line(&mut self, line: &str) {
        match parse_line(line) {
            Ok(Parsed::Empty) => {}
            Ok(Parsed::Command(command)) => self.run(command).await,
            Err(e) => self.reject_line(&e.to_string()),
        }
    }

    /// Counts a line that is not an operation, and says why.
    pub fn reject_line(&mut self, why: &str) {
        self.operations += 1;
        self.fail(&format!("Invalid operation format ({why})"), Outcome::Failed);
    }

    /// Runs one parsed operation and prints its result.
    pub async fn run(&mut self, command: Command) {
        self.operations += 1;
        let result = match command {
            Command::Put { key, value } => self
                .client
                .put(&key, &value)
                .await
                .map(|()| format!("value[{}] <- {}", quote(&key), quote(&value))),
            Command::Get { key } => match self.client.get(&key).await {
                Ok(Some(value)) => Ok(format!("value[{}] == {}", quote(&key), quote(&value))),
                Ok(None) => Err(OpError::NotFound),
                Err(e) => Err(e),
            },
            Command::Del { key } => match self.client.del(&key).await {
                Ok(true) => Ok(format!("value[{}] deleted", quote(&key))),
                Ok(false) => Err(OpError::NotFound),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(text) => {
                let mut out = std::io::stdout().lock();
                match writeln!(out, "{text}").and_then(|()| out.flush()) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => end_by_sigpipe(),
                    Err(e) => self.fail(&format!("writing the result: {e}"), Outcome::Failed),
                    Ok(()) => {}
                }
            }
            Err(OpError::NotFound) => self.fail("Key not found", Outcome::NotFound),
            Err(e) => self.fail(&e.to_string(), Outcome::Failed),
        }
    }

    /// The operation under way was abandoned (ctrl+c on a terminal): it fails, and every
    /// connection is closed, since its answer may still come. A write may have been applied.
    pub fn interrupted(&mut self) {
        self.client.close_connections();
        self.fail(
            "Interrupted (ctrl+c: the operation was abandoned; a write may or may not have been applied)",
            Outcome::Failed,
        );
    }

    fn fail(&mut self, reason: &str, outcome: Outcome) {
        eprintln!("Operation #{} failed with: {reason}", self.operations);
        self.worst = self.worst.max(outcome);
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }
}

/// Standard output's reader went away (`client ... | head -1`): end as any Unix filter does,
/// by SIGPIPE. Only for standard output: Rust ignores SIGPIPE so that a server closing a
/// socket is an error to handle, and it stays so.
pub fn end_by_sigpipe() -> ! {
    // SAFETY: plain libc calls; the process ends here.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

/// `client status --json`: exactly one JSON object in the documented shape.
pub fn status_json(report: &StatusReport) -> String {
    let servers: Vec<serde_json::Value> = report
        .servers
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "host": s.host,
                "client_port": s.client_port,
                "servers_port": s.servers_port,
                "coord_port": s.coord_port,
                "pid": s.pid,
                "state": s.state.as_str(),
            })
        })
        .collect();
    let recovery =
        report.recovery.map(|r| serde_json::json!({ "server": r.server, "step": r.step }));
    // `cuts`: {owner, copy, stalled_ms, connected} each; `coordinators`, with standby
    // coordinators: {cluster, leader, since, standbys}. Both as their types serialize.
    serde_json::json!({
        "epoch": report.epoch,
        "servers": servers,
        "recovery": recovery,
        "cuts": report.cuts,
        "coordinators": report.coordinators,
    })
    .to_string()
}
