//! The coordinator's connections: control links to servers, and the handlers of its two
//! listening ports (clients asking for the configuration, servers reporting).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::connection::{Connection, FRAME_DEADLINE};
use crate::coord::ha::authority::Authority;
use crate::coord::observe::events::Hub;
use crate::coord::recovery::Lease;
use crate::coord::servers::liveness::Liveness;
use crate::coord::state::View;
use crate::error::{Error, Result};
use crate::protocol::{
    BoundPorts, ControlRequest, ControlResponse, CoordRequest, CoordResponse, Hello, Leadership,
    ReportRequest, ReportResponse, Role,
};
use crate::protocol::{CopyStats, TableKind};

/// What the report port tells the coordinator's main loop.
#[derive(Debug)]
pub enum Event {
    Started {
        id: u32,
        incarnation: u64,
        ports: BoundPorts,
        pid: u32,
        /// The newest configuration the server holds (0: none).
        epoch: u64,
        /// Which report link this is (see `Shared::next_link`).
        link: u64,
    },
    ReportLost {
        id: u32,
        incarnation: u64,
        link: u64,
        why: String,
    },
    /// Recovery steps 3 and 4.
    Updated {
        id: u32,
        into: TableKind,
        epoch: u64,
        copied: CopyStats,
    },
}

/// Servers ports of a cluster's coordinators, leader first (with standbys; else empty),
/// shared by the report port (leases name them) and the launcher (servers start with them).
#[derive(Debug, Clone, Default)]
pub struct Coordinators(Arc<std::sync::RwLock<Vec<String>>>);

impl Coordinators {
    pub fn get(&self) -> Vec<String> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, servers: Vec<String>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = servers;
    }
}

/// State shared by the coordinator's port handlers and its main loop.
pub struct Shared {
    pub token: Vec<u8>,
    pub liveness: Liveness,
    pub events: mpsc::UnboundedSender<Event>,
    pub view: watch::Sender<View>,
    /// Events and the servers' counters, for watchers and metrics.
    pub hub: Hub,
    /// Whether this coordinator may act, and how long a lease it may grant.
    pub authority: Arc<Authority>,
    /// Servers ports of every coordinator, leader first, for the servers (see
    /// `ReportResponse::Lease`); empty without standbys.
    pub coordinators: Coordinators,
    /// Numbers the report links: a server that re-attaches has a new one, and the end of
    /// its old one is no evidence against it.
    links: AtomicU64,
}

impl Shared {
    pub fn new(
        servers: u32,
        token: Vec<u8>,
        lease: Lease,
        authority: Arc<Authority>,
        events: mpsc::UnboundedSender<Event>,
        view: watch::Sender<View>,
    ) -> Self {
        Shared {
            token,
            liveness: Liveness::new(servers, lease),
            events,
            view,
            hub: Hub::new(servers),
            authority,
            coordinators: Default::default(),
            links: AtomicU64::new(0),
        }
    }

    /// The coordinators as the leader last listed them: servers ports for the servers, and
    /// who leads and stands by for the status.
    pub fn set_coordinators(&self, servers: Vec<String>, leadership: Leadership) {
        self.coordinators.set(servers);
        self.view.send_if_modified(|view| {
            let changed = view.status.coordinators.as_ref() != Some(&leadership);
            view.status.coordinators = Some(leadership);
            changed
        });
    }

    fn next_link(&self) -> u64 {
        self.links.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A client on the coordinator's clients port.
pub async fn serve_client(shared: Arc<Shared>, mut conn: Connection) -> Result<()> {
    while let Some(request) = conn.recv::<CoordRequest>().await? {
        let view = shared.view.borrow().clone();
        let response = match request {
            CoordRequest::GetConfig => CoordResponse::Config(view.config),
            CoordRequest::Status => CoordResponse::Status(view.status),
            CoordRequest::Watch => {
                let (hub, view) = (&shared.hub, &shared.view);
                return crate::coord::observe::watchers::serve_watch(hub, view, conn).await;
            }
        };
        conn.send(&response).await?;
    }
    Ok(())
}

/// A server on the coordinator's servers port: `Started`, then heartbeats answered with
/// leases. The end of this link is reported as evidence that the server is gone.
pub async fn serve_report(shared: Arc<Shared>, mut conn: Connection, role: Role) -> Result<()> {
    let Role::Server { id, .. } = role else { unreachable!("checked by the gate") };
    let first: ReportRequest =
        conn.reader.recv_within(FRAME_DEADLINE, "waiting for Started").await?;
    let ReportRequest::Started { ports, pid, incarnation, epoch } = first else {
        return Err(Error::Protocol(format!("server {id} sent {first:?} before Started")));
    };
    let liveness = &shared.liveness;
    if !liveness.is_current(id, incarnation) {
        conn.send(&ReportResponse::Replaced).await?;
        return Err(Error::Protocol(format!(
            "server {id} incarnation {incarnation} is not current"
        )));
    }
    liveness.heartbeat(id);
    let link = shared.next_link();
    let _ = shared.events.send(Event::Started { id, incarnation, ports, pid, epoch, link });
    conn.send(&ReportResponse::Welcome).await?;
    let lease = liveness.lease;
    let outcome = async {
        while let Some(request) = conn.recv::<ReportRequest>().await? {
            if matches!(request, ReportRequest::Heartbeat(_)) {
                // Recorded before the incarnation check: see `Liveness::fence`.
                liveness.heartbeat(id);
            }
            if !liveness.is_current(id, incarnation) {
                conn.send(&ReportResponse::Replaced).await?;
                return Err(Error::Protocol("report from a replaced server".into()));
            }
            match request {
                ReportRequest::Heartbeat(stats) => {
                    shared.hub.heard(id, incarnation, stats);
                    // Never past this coordinator's own authority (see `authority`).
                    let granted = shared.authority.lease(lease.granted, lease.margin());
                    let lease_ms = granted.as_millis() as u64;
                    let coordinators = shared.coordinators.get();
                    conn.send(&ReportResponse::Lease { lease_ms, coordinators }).await?
                }
                ReportRequest::Updated { into, epoch, copied } => {
                    let _ = shared.events.send(Event::Updated { id, into, epoch, copied });
                    conn.send(&ReportResponse::Welcome).await?;
                }
                ReportRequest::Started { .. } => {
                    return Err(Error::Protocol("second Started on one link".into()));
                }
            }
        }
        Err::<(), Error>(Error::Closed)
    }
    .await;
    let why = outcome.err().map_or_else(String::new, |e| e.to_string());
    let _ = shared.events.send(Event::ReportLost { id, incarnation, link, why });
    Ok(())
}

type Call = (ControlRequest, Duration, oneshot::Sender<Result<ControlResponse>>);

/// A control link to one server, served by its own task so that a slow server never
/// blocks the coordinator: callers wait on their own answer, with a deadline.
#[derive(Clone)]
pub struct ControlLink {
    id: u32,
    tx: mpsc::Sender<Call>,
}

impl ControlLink {
    /// Connects once (so that a server that cannot be reached fails here); later calls
    /// reconnect if the connection failed.
    pub async fn connect(id: u32, addr: &str, shared: &Shared) -> Result<Self> {
        let token = &shared.token;
        let hello = Hello::new(Role::Coordinator, token);
        let connected = Connection::connect(addr, &hello).await.map_err(|e| {
            Error::Unavailable(format!("server {id}: connecting to its control port {addr}: {e}"))
        })?;
        let mut conn = Some(connected);
        let (tx, mut rx) = mpsc::channel::<Call>(16);
        let addr_owned = addr.to_string();
        let authority = shared.authority.clone();
        tokio::spawn(async move {
            while let Some((request, limit, reply)) = rx.recv().await {
                // No command goes out while this coordinator's authority may have lapsed,
                // not even one queued before a pause (see `Authority::ensure`).
                authority.ensure().await;
                let result = async {
                    let live = match conn.as_mut() {
                        Some(live) => live,
                        None => conn.insert(Connection::connect(&addr_owned, &hello).await?),
                    };
                    // A reconnect may have taken a while: looked at again.
                    authority.ensure().await;
                    live.call(&request, limit, "waiting for a server").await
                }
                .await;
                if result.is_err() {
                    // A late answer on this connection must never be taken for the next
                    // call's: drop it and reconnect next time.
                    conn = None;
                }
                let _ = reply.send(result);
            }
        });
        info!(id, addr, "control link open");
        Ok(ControlLink { id, tx })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends one command and waits at most `limit` for its answer.
    /// The limit counts from when the link's task takes the call up, so time spent queued
    /// behind an earlier call (itself bounded) does not eat into it.
    pub async fn call(&self, request: ControlRequest, limit: Duration) -> Result<ControlResponse> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((request, limit, reply)).await.map_err(|_| Error::Closed)?;
        let result = answer.await.map_err(|_| Error::Closed)?;
        if let Err(e) = &result {
            warn!(id = self.id, error = %e, "control call failed");
        }
        result
    }
}
