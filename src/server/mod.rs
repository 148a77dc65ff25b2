//! A storage server: a primary and a secondary table, the replication stream to the next
//! server, and three listening ports (clients, servers, coordinator control).

mod clients;
mod control;
mod lease;
mod replication;
mod table;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::protocol::{Refusal, TableKind};
use crate::routing::{ClusterConfig, primary_of, secondary_of};

pub use lease::Lease;
pub use replication::{Replicator, Target};
pub use table::{Applied, Table};

/// How a server is started (from the `server` binary's flags).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub id: u32,
    pub servers: u32,
    /// `host:port` of the coordinator's servers port.
    pub coordinator: String,
    /// Address the listeners bind to.
    pub bind_host: String,
    pub client_port: u16,
    pub servers_port: u16,
    pub control_port: u16,
    /// Where `server_<id>.primary` and `.secondary` are written.
    pub dump_dir: PathBuf,
    pub heartbeat: Duration,
    /// Which start of this server id this is (given by the coordinator).
    pub incarnation: u64,
}

/// State shared by all of a server's tasks.
pub struct Server {
    pub id: u32,
    pub servers: u32,
    token: Vec<u8>,
    primary: Arc<Table>,
    secondary: Arc<Table>,
    /// Writes to this server's own slot, copied to its secondary.
    own: Replicator,
    /// Writes to the slot of this server's primary, while this server serves it for them.
    adopted: Replicator,
    config: RwLock<Option<Arc<ClusterConfig>>>,
    lease: Lease,
    draining: AtomicBool,
    dump_dir: PathBuf,
    cancel: CancellationToken,
}

impl Server {
    fn new(opts: &ServerOptions, token: Vec<u8>, cancel: CancellationToken) -> Self {
        let primary = Arc::new(Table::default());
        let secondary = Arc::new(Table::default());
        let own = Replicator::start(opts.id, token.clone(), primary.clone(), cancel.clone());
        let adopted = Replicator::start(opts.id, token.clone(), secondary.clone(), cancel.clone());
        Server {
            id: opts.id,
            servers: opts.servers,
            token,
            primary,
            secondary,
            own,
            adopted,
            config: RwLock::new(None),
            lease: Lease::new(),
            draining: AtomicBool::new(false),
            dump_dir: opts.dump_dir.clone(),
            cancel,
        }
    }

    pub fn config(&self) -> Option<Arc<ClusterConfig>> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs a newer configuration and points the replication streams at it.
    fn set_config(&self, config: ClusterConfig) -> Result<(), String> {
        config.validate()?;
        if config.len() != self.servers {
            return Err(format!(
                "{} servers in the configuration, {} expected",
                config.len(),
                self.servers
            ));
        }
        let mut current = self.config.write().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|c| c.epoch > config.epoch) {
            return Err(format!(
                "epoch {} is older than {}",
                config.epoch,
                current.as_ref().map_or(0, |c| c.epoch)
            ));
        }
        let secondary = &config.servers[secondary_of(self.id, self.servers) as usize];
        self.own.set_target(
            Some(Target {
                addr: secondary.servers_addr(),
                into: TableKind::Secondary,
                epoch: config.epoch,
            }),
            false,
        );
        info!(epoch = config.epoch, secondary = %secondary.servers_addr(), "configuration installed");
        *current = Some(Arc::new(config));
        Ok(())
    }

    /// The table and replication stream for a client operation on `key`, or why this
    /// server must not serve it now.
    fn route(&self, key: &[u8], client_epoch: u64) -> Result<(&Table, &Replicator), Refusal> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Refusal::Unavailable("server is shutting down".into()));
        }
        if !self.lease.is_valid() {
            return Err(Refusal::Unavailable("server has no valid lease".into()));
        }
        let Some(config) = self.config() else {
            return Err(Refusal::Unavailable("server not configured yet".into()));
        };
        if client_epoch > config.epoch {
            return Err(Refusal::Unavailable(format!(
                "server still at epoch {}",
                config.epoch
            )));
        }
        let slot = config.slot_of(key);
        if config.serving[slot as usize] != self.id {
            return Err(Refusal::WrongOwner {
                epoch: config.epoch,
            });
        }
        if slot == self.id {
            Ok((&self.primary, &self.own))
        } else if slot == primary_of(self.id, self.servers) {
            Ok((&self.secondary, &self.adopted))
        } else {
            Err(Refusal::WrongOwner {
                epoch: config.epoch,
            })
        }
    }

    /// The table a replication stream from `from` may write into, checked against the
    /// current configuration.
    fn stream_table(&self, from: u32, into: TableKind) -> Result<&Table, String> {
        let config = self.config().ok_or("not configured yet")?;
        match into {
            TableKind::Secondary if from == primary_of(self.id, self.servers) => {
                if config.serving[from as usize] != from {
                    return Err(format!("server {from} no longer serves its keys"));
                }
                Ok(&self.secondary)
            }
            _ => Err(format!(
                "server {from} may not stream into my {into:?} table"
            )),
        }
    }

    /// Writes both dump files; returns the entry counts.
    fn dump(&self) -> std::io::Result<(u64, u64)> {
        let path = |suffix: &str| self.dump_dir.join(format!("server_{}.{suffix}", self.id));
        let primary = self.primary.dump(&path("primary"))?;
        let secondary = self.secondary.dump(&path("secondary"))?;
        info!(primary, secondary, dir = %self.dump_dir.display(), "dumps written");
        Ok((primary, secondary))
    }
}

async fn bind(host: &str, port: u16, what: &str) -> Result<TcpListener> {
    TcpListener::bind((host, port)).await.map_err(|e| {
        Error::Unavailable(format!("cannot listen on {host}:{port} ({what} port): {e}"))
    })
}

/// Accepts connections until cancelled, each handled in its own tracked task.
pub(crate) fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    tracker: &TaskTracker,
    cancel: CancellationToken,
    handle: F,
) where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let inner = tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(port = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(conn) = Connection::new(stream) else {
                continue;
            };
            let peer = conn.peer();
            let work = handle(conn);
            let cancel = cancel.clone();
            inner.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    result = work => if let Err(e) = result {
                        warn!(port = what, %peer, error = %e, "connection closed");
                    }
                }
            });
        }
    });
}

/// Runs a server until the coordinator shuts it down or disappears.
pub async fn run(opts: ServerOptions, token: Vec<u8>) -> Result<()> {
    let clients = bind(&opts.bind_host, opts.client_port, "clients").await?;
    let peers = bind(&opts.bind_host, opts.servers_port, "servers").await?;
    let control = bind(&opts.bind_host, opts.control_port, "control").await?;
    let ports = crate::protocol::BoundPorts {
        client: clients.local_addr()?.port(),
        servers: peers.local_addr()?.port(),
        control: control.local_addr()?.port(),
    };
    let cancel = CancellationToken::new();
    let server = Arc::new(Server::new(&opts, token, cancel.clone()));
    let tracker = TaskTracker::new();
    let s = server.clone();
    accept_loop(clients, "clients", &tracker, cancel.clone(), move |conn| {
        clients::serve(s.clone(), conn)
    });
    let s = server.clone();
    accept_loop(peers, "servers", &tracker, cancel.clone(), move |conn| {
        control::serve_stream(s.clone(), conn)
    });
    let s = server.clone();
    accept_loop(control, "control", &tracker, cancel.clone(), move |conn| {
        control::serve_control(s.clone(), conn)
    });
    info!(id = opts.id, ?ports, "listening");

    let outcome = tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        lost = control::report_to_coordinator(server.clone(), &opts, ports) => lost,
    };
    if !cancel.is_cancelled() {
        // The coordinator is gone: stop serving once the lease lapses, keep what we hold.
        warn!(reason = ?outcome.as_ref().err().map(ToString::to_string), "lost the coordinator; shutting down");
        server.draining.store(true, Ordering::SeqCst);
        server.dump()?;
        cancel.cancel();
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_millis(500), tracker.wait()).await;
    outcome.or(Ok(()))
}
