//! The coordinator: starts the servers, publishes the configuration, grants leases, detects
//! failures, runs recoveries, and shuts the service down in order.
//!
//! This file holds the options and the wiring (ports, token, tasks): [`run`] and `lead`.
//! The rest is grouped by concern, and the arrows run one way, from the top of this list
//! down (a folder uses only those below it, and `state`):
//! - `cluster/`: the event loop, owner of the [`CoordState`]; its start (new, restored or
//!   taken back) and its answer to cuts; `standby`: a coordinator standing by until elected;
//! - `restore/`: whether a start takes running servers back, restores a set of dumps, or
//!   starts empty (`begin`), and the restore of a set (`gather`, the restore itself);
//! - `ha/`: who may act as coordinator and for how long: the state file or etcd (`store`,
//!   `etcd`, `retry`), the leader's `authority`, and `step_down`;
//! - `servers/`: the servers' processes (`launcher`, `process`), the ports and control
//!   links (`links`), heartbeats and fencing (`liveness`), and stopping in order
//!   (`shutdown`);
//! - `observe/`: what operators see: the event hub (`events`), a recovery's steps with
//!   their durations (`progress`), `client watch`'s stream (`watchers`), and the Prometheus
//!   metrics with their HTTP port (`metrics`, `scrape`);
//! - `recovery/`: the recovery state machine, the lease arithmetic and the cut rule: plain
//!   values, no I/O;
//! - `state`: the [`CoordState`], one serializable value, and the [`View`] published to
//!   clients.

mod cluster;
mod ha;
mod observe;
pub mod recovery;
pub mod restore;
mod servers;
mod standby;
mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

use crate::config::ServerSpec;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::listener::{self, Gate};
use crate::protocol::Role;
use crate::text::format_table;

use cluster::Cluster;
use ha::authority::Authority;
use ha::store::{StateFile, Store};
use recovery::Lease;
use restore::begin::{self, Begin};
use servers::launcher::Launcher;
pub use servers::launcher::default_server_bin;
use servers::links::{self, Shared};
use servers::process::Processes;
use servers::shutdown::{StopSignal, stop_signal};
pub use standby::EtcdOptions;
use state::View;
pub use state::{CoordState, Member};

/// Most connections served at once on the clients port and on the servers port.
const MAX_CLIENT_CONNECTIONS: usize = 1024;
const MAX_SERVER_CONNECTIONS: usize = 256;
const _: () = assert!(MAX_SERVER_CONNECTIONS >= 2 * crate::config::MAX_SERVERS);

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
    /// Where the coordinator keeps its state (`coord.state`) and its lock.
    pub state_dir: PathBuf,
    /// Passed to every server: how long it outlives this coordinator, waiting to re-attach.
    pub orphan_timeout: Duration,
    /// Start empty, moving an earlier set of dumps aside instead of restoring it.
    pub fresh: bool,
    /// Passed to every server: when it syncs its log (`--fsync`).
    pub fsync: crate::aof::FsyncPolicy,
    /// Passed to every server: the size from which it compacts its log (`--compact-min-mib`).
    pub compact_min_mib: u64,
    /// Serve `/metrics` (Prometheus text format) on this `ADDR:PORT`; off when `None`.
    pub metrics: Option<String>,
    /// Keep the state in etcd and stand by until elected (`--etcd`); `None`: the state
    /// file.
    pub etcd: Option<EtcdOptions>,
}

/// A fresh cluster token, hex: servers and the coordinator authenticate each other with it.
fn new_token() -> Result<String> {
    let mut token = [0u8; 32];
    getrandom::fill(&mut token).map_err(|e| Error::Unavailable(format!("no randomness: {e}")))?;
    Ok(token.iter().map(|b| format!("{b:02x}")).collect())
}

/// Serves the clients port (configuration and status) and the servers port (reports and
/// heartbeats) until `cancel`.
fn serve_ports(
    clients: Arc<TcpListener>,
    reports: Arc<TcpListener>,
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let s = shared.clone();
    listener::serve(
        clients,
        "clients",
        MAX_CLIENT_CONNECTIONS,
        Gate::clients(),
        tracker,
        cancel.clone(),
        move |conn: Connection, _| links::serve_client(s.clone(), conn),
    );
    let s = shared.clone();
    let n = shared.liveness.servers();
    listener::serve(
        reports,
        "servers",
        MAX_SERVER_CONNECTIONS,
        Gate::new(move |role| matches!(role, Role::Server { id, .. } if id < n), &shared.token),
        tracker,
        cancel.clone(),
        move |conn: Connection, role| links::serve_report(s.clone(), conn, role),
    );
}

/// Runs the coordinator until the service stops: with its state file, at once; with
/// `--etcd`, once elected (a standby until then).
pub async fn run(opts: CoordOptions) -> Result<()> {
    listener::raise_fd_limit();
    match opts.etcd.clone() {
        None => {
            let store = Store::File(StateFile::lock(&opts.state_dir)?);
            let stop = stop_signal(opts.watch_stdin);
            lead(opts, store, Arc::new(Authority::lifelong()), stop, None, None).await
        }
        Some(etcd) => standby::run(opts, &etcd).await,
    }
}

/// Starts the cluster (or takes back the one a coordinator that died left running) on
/// `listeners` (a standby's, once elected) or on the state's ports, serves until `stop`,
/// then shuts down. `elected`: etcd and this leader's entry, to name the standbys.
async fn lead(
    opts: CoordOptions,
    store: Store,
    authority: Arc<Authority>,
    mut stop: StopSignal,
    listeners: Option<(Arc<TcpListener>, Arc<TcpListener>)>,
    elected: Option<(ha::etcd::Etcd, standby::Elected)>,
) -> Result<()> {
    let (mut state, begin) = begin::begin(&opts, &store).await?;
    let (clients, reports) = ports(listeners, &mut state).await?;
    if matches!(begin, Begin::TakeBack) {
        println!("taking back the running cluster of {}", store.describe());
    }

    let n = opts.specs.len() as u32;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (view_tx, _) = watch::channel(View { config: None, status: state.status() });
    let lease = Lease::for_timeout(opts.timeout);
    let token = state.token_hex.as_bytes().to_vec();
    let shared = Arc::new(Shared::new(n, token, lease, authority, events_tx, view_tx));
    if let Some((etcd, elected)) = elected {
        standby::follow_standbys(etcd, elected, shared.clone());
    }
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    serve_ports(clients, reports, &shared, &tracker, &cancel);
    if let Some(addr) = &opts.metrics {
        serve_metrics(addr, &shared, &cancel).await?;
    }

    let processes = Processes::new(launcher(&opts, &state, &shared));
    let (internal_tx, mut internal) = mpsc::unbounded_channel();
    let mut cluster = Cluster::new(state, store, shared, processes, opts.timeout, internal_tx);

    let started = tokio::select! {
        started = cluster.begin(begin, &mut events, &mut internal) => started,
        why = &mut stop => Err(Error::Unavailable(format!("{why} during start-up"))),
    };
    let outcome = match started {
        Ok(()) => {
            print!("{}", format_table(&cluster.state.status()));
            println!("cluster ready: {n} servers, epoch {}", cluster.state.epoch());
            cluster.serve(&mut events, internal, &mut stop).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome {
        error!(error = %e, "stopping");
    }
    ha::step_down::stopping();
    let shut = cluster.shutdown().await;
    cancel.cancel();
    tracker.close();
    outcome.and(shut)
}

/// The clients and servers ports: a standby's, once elected, or bound now on the state's
/// (which then records the ports really bound).
async fn ports(
    listeners: Option<(Arc<TcpListener>, Arc<TcpListener>)>,
    state: &mut CoordState,
) -> Result<(Arc<TcpListener>, Arc<TcpListener>)> {
    let (clients, reports) = match listeners {
        Some(bound) => bound,
        None => {
            let clients = listener::bind("0.0.0.0", state.clients_port, "clients").await?;
            let reports = listener::bind("0.0.0.0", state.servers_port, "servers").await?;
            print_ports(clients.local_addr()?.port(), reports.local_addr()?.port());
            (clients, reports)
        }
    };
    state.clients_port = clients.local_addr()?.port();
    state.servers_port = reports.local_addr()?.port();
    Ok((clients, reports))
}

/// The line tests and operators read the ports from.
fn print_ports(clients: u16, servers: u16) {
    println!("ftkv coordinator: clients port {clients}, servers port {servers}");
}

/// Serves `/metrics` on `addr` (`--metrics`) until `cancel`; prints where.
async fn serve_metrics(addr: &str, shared: &Arc<Shared>, cancel: &CancellationToken) -> Result<()> {
    let s = shared.clone();
    let render =
        Arc::new(move || s.hub.metrics.encode(&observe::watchers::snapshot(&s.hub, &s.view)));
    let port = observe::scrape::serve(addr, render, cancel.clone()).await?;
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    println!("metrics: http://{host}:{port}/metrics");
    Ok(())
}

/// How to start this cluster's servers.
fn launcher(opts: &CoordOptions, state: &CoordState, shared: &Shared) -> Launcher {
    Launcher {
        server_bin: opts.server_bin.clone(),
        servers_port: state.servers_port,
        log_dir: opts.log_dir.clone(),
        dump_dir: opts.dump_dir.clone(),
        heartbeat: opts.heartbeat,
        token_hex: state.token_hex.clone(),
        ssh_args: opts.ssh_args.clone(),
        remote_server_bin: opts.remote_server_bin.clone(),
        remote_dir: opts.remote_dir.clone(),
        advertise_host: opts.advertise_host.clone(),
        orphan_timeout: opts.orphan_timeout,
        fsync: opts.fsync,
        compact_min_mib: opts.compact_min_mib,
        from_log: false,
        coordinators: shared.coordinators.clone(),
    }
}
