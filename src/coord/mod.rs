//! The coordinator: starts the servers, publishes the configuration, grants leases, and
//! shuts the service down in order.

mod launcher;
mod links;
mod topology;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::ServerSpec;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::protocol::{ControlRequest, ControlResponse, ServerState};

pub use launcher::{Launcher, default_server_bin};
pub use links::{ControlLink, Event, Shared, View};
pub use topology::{Member, Topology, format_table};

/// How long all servers may take to start and report.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// Deadline of each shutdown phase.
const SHUTDOWN_STEP_LIMIT: Duration = Duration::from_secs(3);

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
}

/// Binds both ports, starts the cluster, serves until asked to stop, then shuts down.
pub async fn run(opts: CoordOptions) -> Result<()> {
    let clients = bind(opts.clients_port, "clients").await?;
    let reports = bind(opts.servers_port, "servers").await?;
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
    let (view_tx, _) = watch::channel(View {
        config: None,
        status: topology.status(),
    });
    // The lease must end before the coordinator gives up on a silent server (by a margin).
    let lease = opts.timeout / 2;
    let shared = Arc::new(Shared::new(
        n,
        token_hex.as_bytes().to_vec(),
        lease,
        events_tx,
        view_tx,
    ));

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let s = shared.clone();
    accept_loop(clients, "clients", &tracker, cancel.clone(), move |conn| {
        links::serve_client(s.clone(), conn)
    });
    let s = shared.clone();
    accept_loop(reports, "servers", &tracker, cancel.clone(), move |conn| {
        links::serve_report(s.clone(), conn)
    });

    let launcher = Launcher {
        server_bin: opts.server_bin.clone(),
        coord_host: "127.0.0.1".into(),
        servers_port,
        log_dir: opts.log_dir.clone(),
        dump_dir: opts.dump_dir.clone(),
        heartbeat: opts.heartbeat,
        token_hex,
    };
    let mut cluster = Cluster {
        topology,
        shared,
        launcher,
        children: Vec::new(),
        links: Vec::new(),
    };
    let mut stop = stop_signal(opts.watch_stdin);

    let started = tokio::select! {
        started = cluster.start(&mut events) => started,
        why = &mut stop => Err(Error::Unavailable(format!("{why} during start-up"))),
    };
    let outcome = match started {
        Ok(()) => {
            print!("{}", format_table(&cluster.topology.status()));
            println!(
                "cluster ready: {n} servers, epoch {}",
                cluster.topology.epoch()
            );
            cluster.serve(&mut events, &mut stop).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome {
        error!(error = %e, "stopping");
    }
    cluster.shutdown().await;
    cancel.cancel();
    tracker.close();
    outcome
}

async fn bind(port: u16, what: &str) -> Result<TcpListener> {
    TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on port {port} ({what} port): {e}")))
}

fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    tracker: &TaskTracker,
    cancel: CancellationToken,
    handle: F,
) where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    crate::server::accept_loop(listener, what, tracker, cancel, handle)
}

/// Resolves with a reason on end of standard input (if watched), SIGINT or SIGTERM.
fn stop_signal(
    watch_stdin: bool,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>> {
    Box::pin(async move {
        let stdin_closed = async {
            if !watch_stdin {
                return std::future::pending().await;
            }
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 1024];
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = stdin_closed => "end of standard input".to_string(),
            _ = tokio::signal::ctrl_c() => "SIGINT".to_string(),
            _ = term.recv() => "SIGTERM".to_string(),
        }
    })
}

/// The running cluster: topology, processes and control links.
struct Cluster {
    topology: Topology,
    shared: Arc<Shared>,
    launcher: Launcher,
    children: Vec<Child>,
    links: Vec<Option<ControlLink>>,
}

impl Cluster {
    fn publish(&self) {
        self.shared.view.send_replace(View {
            config: self.topology.config.clone(),
            status: self.topology.status(),
        });
    }

    /// Spawns every server, waits for all to report, opens control links, and installs the
    /// first configuration.
    async fn start(&mut self, events: &mut mpsc::UnboundedReceiver<Event>) -> Result<()> {
        let n = self.topology.len();
        for member in &self.topology.members {
            let child = self.launcher.spawn(member, n).await?;
            info!(id = member.id, pid = child.id(), "server spawned");
            self.children.push(child);
        }
        let deadline = Instant::now() + STARTUP_LIMIT;
        while self.topology.members.iter().any(|m| m.ports.is_none()) {
            let event = tokio::select! {
                event = events.recv() => event.ok_or(Error::Closed)?,
                _ = tokio::time::sleep_until(deadline) => {
                    let missing: Vec<u32> = self.topology.members.iter().filter(|m| m.ports.is_none()).map(|m| m.id).collect();
                    return Err(Error::Unavailable(format!("servers {missing:?} did not start within {STARTUP_LIMIT:?}; see their logs")));
                }
                exited = first_exit(&mut self.children) => {
                    let (id, status) = exited;
                    return Err(Error::Unavailable(format!("server {id} exited during start-up ({status}); see server_{id}.log")));
                }
            };
            match event {
                Event::Started { id, ports, pid, .. } => {
                    let member = &mut self.topology.members[id as usize];
                    member.ports = Some(ports);
                    member.pid = pid;
                    info!(id, ?ports, pid, "server started");
                }
                Event::ReportLost { id, why, .. } => {
                    return Err(Error::Unavailable(format!(
                        "server {id} lost during start-up: {why}"
                    )));
                }
            }
        }
        for member in &self.topology.members {
            let link =
                ControlLink::connect(member.id, &member.control_addr(), &self.shared.token).await?;
            self.links.push(Some(link));
        }
        let config = self.topology.initial_config();
        let calls = self
            .links
            .iter()
            .flatten()
            .map(|link| link.call(ControlRequest::SetConfig(config.clone()), STARTUP_LIMIT));
        for (id, result) in join_all(calls).await.into_iter().enumerate() {
            match result? {
                ControlResponse::Done => {}
                other => {
                    return Err(Error::Unavailable(format!(
                        "server {id} refused the configuration: {other:?}"
                    )));
                }
            }
        }
        self.topology.config = Some(config);
        for member in &mut self.topology.members {
            member.state = ServerState::Running;
        }
        self.publish();
        Ok(())
    }

    /// Serves until a stop signal. (Failure handling is logged only.)
    async fn serve(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        stop: &mut std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>,
    ) -> Result<()> {
        loop {
            tokio::select! {
                why = &mut *stop => {
                    info!(reason = %why, "shutting down");
                    return Ok(());
                }
                event = events.recv() => match event.ok_or(Error::Closed)? {
                    Event::ReportLost { id, why, .. } => {
                        warn!(id, reason = %why, "server lost");
                        self.topology.members[id as usize].state = ServerState::Failed;
                        self.publish();
                    }
                    Event::Started { id, .. } => warn!(id, "unexpected Started"),
                },
            }
        }
    }

    /// Drain every server (no write in flight), then have each write its dumps and exit;
    /// finally reap the processes, killing any that did not exit.
    async fn shutdown(&mut self) {
        let began = Instant::now();
        let live: Vec<ControlLink> = self.links.iter().flatten().cloned().collect();
        join_all(
            live.iter()
                .map(|l| l.call(ControlRequest::Drain, SHUTDOWN_STEP_LIMIT)),
        )
        .await;
        let results = join_all(
            live.iter()
                .map(|l| l.call(ControlRequest::Shutdown, SHUTDOWN_STEP_LIMIT)),
        )
        .await;
        for (link, result) in live.iter().zip(results) {
            match result {
                Ok(ControlResponse::ShutDown {
                    primary_keys,
                    secondary_keys,
                }) => {
                    info!(
                        id = link_id(link),
                        primary_keys, secondary_keys, "server dumped and stopped"
                    );
                }
                other => warn!(
                    id = link_id(link),
                    ?other,
                    "server did not shut down cleanly"
                ),
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(1), child.wait())
                .await
                .is_err()
            {
                warn!(pid = child.id(), "server did not exit; killing it");
                let _ = child.kill().await;
            }
        }
        info!(
            elapsed_ms = began.elapsed().as_millis() as u64,
            "shutdown complete"
        );
    }
}

fn link_id(link: &ControlLink) -> u32 {
    link.id()
}

/// Resolves when any child exits, with its index and status.
async fn first_exit(children: &mut [Child]) -> (u32, String) {
    let waits = children.iter_mut().enumerate().map(|(i, c)| {
        Box::pin(async move {
            let status = c
                .wait()
                .await
                .map_or_else(|e| e.to_string(), |s| s.to_string());
            (i as u32, status)
        })
    });
    futures::future::select_all(waits).await.0
}
