//! Standby coordinators (`coord --etcd`). Every coordinator of a cluster binds its ports,
//! registers itself in etcd and campaigns; until it wins it is a standby: its ports answer
//! every client and every server with the leader's address. The winner reads the state
//! from etcd and takes the running servers back exactly as a restarted coordinator does
//! (`Cluster::readopt`).
//!
//! A leader that can no longer be sure it leads acts on nothing (see `authority`); when it
//! surely no longer leads (its etcd lease gone or not renewed within the grace, a guarded
//! write failed) [`step_down`](ha::step_down) replaces the process with a new start of the same program,
//! which comes back as a standby. Nothing of the old leader
//! survives to act late (a task waking after a pause, a timer already armed), and the
//! servers it started run on in their own sessions, to be taken back by the next leader.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::connection::{Connection, FRAME_DEADLINE};
use crate::coord::ha::authority::Authority;
use crate::coord::ha::etcd::{Candidate, Etcd};
use crate::coord::ha::retry::{Retry, retry};
use crate::coord::ha::step_down;
use crate::coord::ha::store::{EtcdStore, Store};
use crate::coord::servers::links::Shared;
use crate::coord::servers::shutdown::stop_signal;
use crate::coord::{CoordOptions, MAX_CLIENT_CONNECTIONS, MAX_SERVER_CONNECTIONS};
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

/// Stands by until elected, then leads (see [`crate::coord::lead`]) until the service stops.
pub async fn run(opts: CoordOptions, options: &EtcdOptions) -> Result<()> {
    let etcd = connect(options).await;
    let authority = Arc::new(Authority::leased(etcd.ttl));
    etcd.keep_alive(authority.clone());
    let (clients_port, servers_port) =
        step_down::ports_before().unwrap_or((opts.clients_port, opts.servers_port));
    let clients = listener::bind("0.0.0.0", clients_port, "clients").await?;
    let reports = listener::bind("0.0.0.0", servers_port, "servers").await?;
    let ports = (clients.local_addr()?.port(), reports.local_addr()?.port());
    step_down::remember_ports(ports.0, ports.1);
    crate::coord::print_ports(ports.0, ports.1);
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
    let outcome = crate::coord::lead(opts, store, authority, stop, listeners, elected).await;
    // Standbys need not wait out the lease: they learn at once that the cluster stopped.
    etcd.revoke().await;
    outcome
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
    let token = token.unwrap_or_else(|| crate::coord::new_token().unwrap_or_default());
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
