//! Standby coordinators (`coord --etcd`). Every coordinator of a cluster binds its ports,
//! registers itself in etcd and campaigns; until it wins it is a standby: its ports answer
//! every client and every server with the leader's address. The winner reads the state
//! from etcd and takes the running servers back exactly as a restarted coordinator does
//! (`Cluster::readopt`).
//!
//! A leader that can no longer be sure it leads acts on nothing (see `authority`); when it
//! surely no longer leads (its etcd lease gone or not renewed within the grace, a guarded
//! write failed) [`step_down`] replaces the process with a new start of the same program,
//! which comes back as a standby. Nothing of the old leader
//! survives to act late (a task waking after a pause, a timer already armed), and the
//! servers it started run on in their own sessions, to be taken back by the next leader.

use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::authority::Authority;
use super::etcd::{Candidate, Etcd};
use super::links::Shared;
use super::shutdown::stop_signal;
use super::store::{EtcdStore, Store};
use super::{CoordOptions, MAX_CLIENT_CONNECTIONS, MAX_SERVER_CONNECTIONS};
use crate::connection::{Connection, FRAME_DEADLINE};
use crate::error::{Error, Result};
use crate::lines;
use crate::listener::{self, Gate};
use crate::manifest::utc_time;
use crate::protocol::{
    CoordRequest, CoordResponse, Leadership, ReportRequest, ReportResponse, Role,
};

/// How often a standby asks etcd who leads (for its answers), and a leader who stands by
/// (each lease answer passes the list on to the servers).
const POLL_EVERY: Duration = Duration::from_millis(200);
/// Pause before a call to etcd that failed is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// The ports a coordinator that stepped down had bound, for its next start (`-c 0 -s 0`
/// would otherwise move them, away from where servers and clients know to look).
const PORTS_ENV: &str = "FTKV_COORD_PORTS";
static BOUND: std::sync::OnceLock<(u16, u16)> = std::sync::OnceLock::new();

/// `coord --etcd`: where etcd is, the cluster's name there, and the lease to ask for.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub urls: Vec<String>,
    pub cluster: String,
    pub ttl: Duration,
}

/// On standard output and in the log.
fn say(line: &str) {
    println!("{line}");
    info!("{line}");
}

/// Set once the leader began shutting the service down: a step-down then ends the process
/// instead of starting it again as a standby, which would forget that it was told to stop.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The leader is shutting the service down (see [`STOPPING`]).
pub fn stopping() {
    STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Stops acting as this cluster's coordinator, at once and for good: this process becomes
/// a new start of the same program with the same arguments (same pid), a standby; or, if
/// it was shutting the service down, it exits (status 1).
pub fn step_down(why: &str) -> ! {
    super::launcher::kill_running_ssh();
    if STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
        let line = format!("{}: {why}; it was shutting down: exiting", lines::STEPPED_DOWN);
        println!("{line}");
        error!("{line}");
        std::process::exit(1);
    }
    let line = format!("{}: {why}; starting again as a standby", lines::STEPPED_DOWN);
    println!("{line}");
    error!("{line}");
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "coord".into());
    // /proc/self/exe: the program running now, even if `make all` renamed a new one over
    // its path.
    let mut again = std::process::Command::new("/proc/self/exe");
    again.arg0(argv0).args(args);
    if let Some((clients, servers)) = BOUND.get() {
        again.env(PORTS_ENV, format!("{clients},{servers}"));
    }
    let failed = again.exec();
    eprintln!("coord: cannot start again as a standby: {failed}");
    std::process::exit(3);
}

/// Connects to etcd and takes a lease, trying again every second while etcd cannot be
/// reached or has no quorum (a coordinator that stepped down because it lost etcd comes
/// back as a standby once etcd is back). Says so once.
async fn connect(options: &EtcdOptions) -> Etcd {
    let mut said = false;
    loop {
        match Etcd::connect(&options.urls, &options.cluster, options.ttl).await {
            Ok(etcd) => return etcd,
            Err(e) if !said => {
                say(&format!("waiting for etcd at {}: {e}", options.urls.join(",")));
                said = true;
            }
            Err(e) => warn!(error = %e, "etcd not reachable yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The ports of the start before, if this one follows a step-down.
fn ports_again() -> Option<(u16, u16)> {
    let ports = std::env::var(PORTS_ENV).ok()?;
    let (clients, servers) = ports.split_once(',')?;
    Some((clients.parse().ok()?, servers.parse().ok()?))
}

/// Stands by until elected, then leads (see [`super::lead`]) until the service stops.
pub async fn run(opts: CoordOptions, options: &EtcdOptions) -> Result<()> {
    let etcd = connect(options).await;
    let authority = Arc::new(Authority::leased(etcd.ttl));
    etcd.keep_alive(authority.clone());
    let (clients_port, servers_port) =
        ports_again().unwrap_or((opts.clients_port, opts.servers_port));
    let clients = listener::bind("0.0.0.0", clients_port, "clients").await?;
    let reports = listener::bind("0.0.0.0", servers_port, "servers").await?;
    let ports = (clients.local_addr()?.port(), reports.local_addr()?.port());
    let _ = BOUND.set(ports);
    super::print_ports(ports.0, ports.1);
    let host = opts.advertise_host.clone().unwrap_or_else(|| "127.0.0.1".into());
    let me = Candidate {
        clients: format!("{host}:{}", ports.0),
        servers: format!("{host}:{}", ports.1),
        since: utc_time(std::time::SystemTime::now()),
    };
    retry("registering", Retry::Forever, || etcd.register(&me)).await;
    let before = retry("reading the state", Retry::Forever, || etcd.load()).await;

    let (leader_tx, leader_rx) = watch::channel(None);
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let token = before.as_deref().and_then(|b| Store::decode(b).ok()).map(|s| s.token_hex);
    serve_ports(clients.clone(), reports.clone(), leader_rx, token, &tracker, &cancel);
    let watching = tokio::spawn(watch_leader(etcd.clone(), me.clone(), leader_tx));
    // Ctrl+d (or SIGINT, SIGTERM) while standing by stops this standby alone.
    let mut stop = stop_signal(opts.watch_stdin);
    let key = tokio::select! {
        key = retry("campaigning", Retry::Forever, || etcd.campaign(&me)) => key,
        why = &mut stop => {
            say(&format!("{}: stopping on {why}", lines::STANDBY));
            etcd.revoke().await;
            return Ok(());
        }
    };
    watching.abort();
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    let since = utc_time(std::time::SystemTime::now());
    say(&format!("{}: won the election of cluster {} in etcd", lines::LEADING, options.cluster));

    let leading = Retry::Leading(&authority);
    let now = retry("reading the state", leading, || etcd.load()).await;
    let stopped = now.as_deref().and_then(|b| Store::decode(b).ok()).is_some_and(|s| !s.running);
    if stopped && now != before {
        say(&format!("{}; exiting", lines::CLUSTER_WAS_STOPPED));
        etcd.revoke().await;
        return Ok(());
    }
    let elected = Elected { me: Candidate { since, ..me }, cluster: options.cluster.clone() };
    let store = Store::Etcd(Box::new(EtcdStore::new(etcd.clone(), key, authority.clone())));
    let elected = Some((etcd.clone(), elected));
    let listeners = Some((clients, reports));
    let outcome = super::lead(opts, store, authority, stop, listeners, elected).await;
    // Standbys need not wait out the lease: they learn at once that the cluster stopped.
    etcd.revoke().await;
    outcome
}

/// How a failed call to etcd is tried again (see [`retry`]).
#[derive(Clone, Copy)]
pub enum Retry<'a> {
    /// A standby waits for etcd as it waits for the leader: until it answers.
    Forever,
    /// A leader tries for its authority's grace at most, and only while the authority
    /// holds (see `Authority::ensure`); then it steps down (a call that keeps failing, the
    /// request's fault or etcd's, must not hold the cluster without a coordinator that acts).
    Leading(&'a Authority),
}

/// `call` until it succeeds, every [`RETRY_EVERY`]: etcd down, out of quorum, electing, or a
/// call sent to a member that is gone (etcd's client does that, and the call fails at once).
pub async fn retry<T, F, Fut>(what: &str, how: Retry<'_>, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let began = tokio::time::Instant::now();
    loop {
        match (call().await, how) {
            (Ok(value), _) => return value,
            (Err(e), Retry::Leading(authority)) if began.elapsed() >= authority.grace() => {
                step_down(&format!("{what} in etcd failed ({e})"))
            }
            (Err(e), Retry::Leading(authority)) => {
                warn!(error = %e, "{what} in etcd failed; trying again");
                authority.ensure().await;
            }
            (Err(e), Retry::Forever) => warn!(error = %e, "{what} in etcd failed; trying again"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

/// The leader's own entry, for the status.
#[derive(Clone)]
pub struct Elected {
    pub me: Candidate,
    pub cluster: String,
}

/// A standby: keeps the leader's address current for its answers, and says when it
/// changes.
async fn watch_leader(etcd: Etcd, me: Candidate, leader: watch::Sender<Option<Candidate>>) {
    let mut said = None;
    loop {
        match etcd.leader().await {
            Ok(now) => {
                let now = now.filter(|c| c.clients != me.clients);
                if said.as_ref() != Some(&now) {
                    let who = now.as_ref().map_or("no coordinator".into(), |c| c.clients.clone());
                    say(&format!("{}: {who} leads cluster {}", lines::STANDBY, etcd.cluster));
                    said = Some(now.clone());
                }
                leader.send_replace(now);
            }
            Err(e) => warn!(error = %e, "standby: cannot ask etcd who leads"),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// A leader: keeps the list of coordinators current, for the status and for the servers
/// (each lease answer names them, so that a server finds the next leader).
pub fn follow_standbys(etcd: Etcd, elected: Elected, shared: Arc<Shared>) {
    // The leader is known at once (the status names it from the first answer on); the
    // standbys once etcd has listed them. Until then the servers are told no list (`None`):
    // one naming the leader alone would make them forget the standbys they were given.
    let publish = move |others: Option<&[&Candidate]>| {
        let servers = match others {
            Some(others) => std::iter::once(&elected.me)
                .chain(others.iter().copied())
                .map(|c| c.servers.clone())
                .collect(),
            None => Vec::new(),
        };
        let others = others.unwrap_or_default();
        let leadership = Leadership {
            cluster: elected.cluster.clone(),
            leader: elected.me.clients.clone(),
            since: elected.me.since.clone(),
            standbys: others.iter().map(|c| c.clients.clone()).collect(),
        };
        shared.set_coordinators(servers, leadership);
    };
    publish(None);
    tokio::spawn(async move {
        loop {
            match etcd.coordinators().await {
                Ok(all) => {
                    let others: Vec<&Candidate> = all
                        .iter()
                        .filter(|(lease, _)| *lease != etcd.lease)
                        .map(|(_, c)| c)
                        .collect();
                    publish(Some(&others));
                }
                Err(e) => warn!(error = %e, "cannot list the standby coordinators"),
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    });
}

/// A standby's ports: every request is answered with the leader's address. The servers
/// port checks the cluster's token (of the state etcd held when this coordinator started,
/// if any; a random one otherwise, refusing every server: there was no cluster to redirect).
fn serve_ports(
    clients: Arc<TcpListener>,
    reports: Arc<TcpListener>,
    leader: watch::Receiver<Option<Candidate>>,
    token: Option<String>,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let to_clients = leader.clone();
    listener::serve(
        clients,
        "clients",
        MAX_CLIENT_CONNECTIONS,
        Gate::clients(),
        tracker,
        cancel.clone(),
        move |conn, _| redirect_client(conn, to_clients.clone()),
    );
    let token = token.unwrap_or_else(|| super::new_token().unwrap_or_default());
    listener::serve(
        reports,
        "servers",
        MAX_SERVER_CONNECTIONS,
        Gate::new(|role| matches!(role, Role::Server { .. }), token.as_bytes()),
        tracker,
        cancel.clone(),
        move |conn, _| redirect_server(conn, leader.clone()),
    );
}

async fn redirect_client(
    mut conn: Connection,
    leader: watch::Receiver<Option<Candidate>>,
) -> Result<()> {
    while let Some(request) = conn.recv::<CoordRequest>().await? {
        let leader = leader.borrow().as_ref().map(|c| c.clients.clone());
        conn.send(&CoordResponse::NotLeader { leader }).await?;
        if matches!(request, CoordRequest::Watch) {
            break;
        }
    }
    Ok(())
}

async fn redirect_server(
    mut conn: Connection,
    leader: watch::Receiver<Option<Candidate>>,
) -> Result<()> {
    let first: ReportRequest =
        conn.reader.recv_within(FRAME_DEADLINE, "waiting for Started").await?;
    if !matches!(first, ReportRequest::Started { .. }) {
        return Err(Error::Protocol(format!("{first:?} before Started")));
    }
    let leader = leader.borrow().as_ref().map(|c| c.servers.clone());
    conn.send(&ReportResponse::NotLeader { leader }).await
}
