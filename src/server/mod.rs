//! A storage server: a primary and a secondary table, the replication streams, and three
//! listening ports (clients, servers, coordinator control).

mod batching;
mod clients;
mod control;
mod dumps;
mod durable;
mod errors;
mod lease;
mod load;
mod orphan;
mod outstanding;
mod replication;
mod stats;
mod table;
mod window;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::lines;
use crate::listener::{self, Gate};
use crate::protocol::{Op, Refusal, Role, ServerStats, TableKind};
use crate::routing::{ClusterConfig, Replica, primary_of, secondary_of};
use errors::{ConfigRefused, StreamRefused};

pub use control::{
    DEFAULT_HEARTBEAT_MS, GRACE_WITH_STANDBYS, MAX_HEARTBEAT_MS, parse_heartbeat_ms,
};
pub use lease::Lease;
pub use orphan::{ATTEMPT_LIMIT, BadOrphanTimeout, DEFAULT_ORPHAN_TIMEOUT, parse_orphan_timeout};
pub use replication::{CaughtUp, Mode, Outcome, Replicator, Target};
pub use table::{Applied, Table};

/// Longest a configuration change waits for writes in flight on a slot it hands away.
const SETTLE_LIMIT: Duration = Duration::from_secs(3);

/// How a server is started (from the `server` binary's flags).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub id: u32,
    pub servers: u32,
    /// `host:port` of the coordinator's servers port; with standby coordinators, each
    /// one's (see `coordinators`).
    pub coordinators: Vec<String>,
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
    /// How long a server that joined keeps its data and tries to re-attach after losing its
    /// coordinator, before it writes its dumps and exits.
    pub orphan_timeout: Duration,
    /// When the append-only log is synced (`--fsync`).
    pub fsync: crate::aof::FsyncPolicy,
    /// The log is compacted once at least this long (and twice its live data).
    pub compact_min_bytes: u64,
    /// Keep the log of an earlier start, to load it when told (`--from-log`).
    pub from_log: bool,
}

/// State shared by all of a server's tasks.
pub struct Server {
    pub id: u32,
    pub incarnation: u64,
    pub servers: u32,
    token: Vec<u8>,
    primary: Arc<Table>,
    secondary: Arc<Table>,
    /// Writes to this server's own slot (primary table), copied to its secondary.
    own: Replicator,
    /// Writes to the slot of this server's primary (secondary table) while this server
    /// serves it in that server's place (recovery steps 0-5).
    adopted: Replicator,
    /// Held for reading while a client operation is routed and queued, or a replicated
    /// batch is checked and applied; held for writing to swap it. So nothing is ever
    /// accepted under a configuration that has already been replaced.
    config: RwLock<Option<ClusterConfig>>,
    lease: Lease,
    draining: AtomicBool,
    caught_up: Mutex<Option<mpsc::UnboundedReceiver<CaughtUp>>>,
    /// Serializes configuration changes.
    config_changes: tokio::sync::Mutex<()>,
    /// The newest replication stream per (sender, table): (sender incarnation, stream).
    streams: Mutex<HashMap<(u32, TableKind), (u64, u64)>>,
    dump_dir: PathBuf,
    /// One dump at a time: the coordinator's Shutdown and the retries after losing it would
    /// otherwise write the same temporary files. Holds which files this start wrote (to tell
    /// them from a newer start's) and the count of failed dumps.
    dumping: Mutex<dumps::OwnDumps>,
    /// Client operations answered, for the heartbeat's counters.
    ops: stats::OpCounters,
    /// The append-only log of both tables.
    durable: Arc<durable::Durable>,
    cancel: CancellationToken,
}

impl Server {
    fn new(opts: &ServerOptions, token: Vec<u8>, cancel: CancellationToken) -> Result<Self> {
        let log = opts.dump_dir.join(crate::manifest::dump_name(opts.id, "aof"));
        let primary = Arc::new(Table::default());
        let secondary = Arc::new(Table::default());
        let tables = [primary.clone(), secondary.clone()];
        let compact = durable::CompactWhen { min_bytes: opts.compact_min_bytes, tables };
        let durable = Arc::new(durable::Durable::open(
            log,
            opts.id,
            &token,
            opts.fsync,
            opts.from_log,
            compact,
        ));
        let (caught_tx, caught_rx) = mpsc::unbounded_channel();
        let me = (opts.id, opts.incarnation);
        let start = |table: &Arc<Table>, kind| {
            let (caught, cancel) = (caught_tx.clone(), cancel.clone());
            Replicator::start(
                me,
                token.clone(),
                (table.clone(), kind),
                durable.clone(),
                caught,
                cancel,
            )
        };
        Ok(Server {
            id: opts.id,
            incarnation: opts.incarnation,
            servers: opts.servers,
            own: start(&primary, TableKind::Primary),
            adopted: start(&secondary, TableKind::Secondary),
            token,
            primary,
            secondary,
            config: RwLock::new(None),
            lease: Lease::new(),
            draining: AtomicBool::new(false),
            caught_up: Mutex::new(Some(caught_rx)),
            streams: Mutex::new(HashMap::new()),
            config_changes: tokio::sync::Mutex::new(()),
            dump_dir: opts.dump_dir.clone(),
            dumping: Mutex::new(dumps::OwnDumps::default()),
            ops: stats::OpCounters::default(),
            durable,
            cancel,
        })
    }

    /// The counters sent with the next heartbeat.
    fn stats(&self) -> ServerStats {
        let mut stats = ServerStats {
            primary_keys: self.primary.len() as u64,
            secondary_keys: self.secondary.len() as u64,
            primary_bytes: self.primary.bytes(),
            secondary_bytes: self.secondary.bytes(),
            repl_queue: (self.own.outstanding() + self.adopted.outstanding()) as u64,
            repl_queue_bytes: self.own.queued_bytes() + self.adopted.queued_bytes(),
            own_stalled_ms: self.own.stalled().as_millis() as u64,
            own_connected: self.own.connected(),
            ..ServerStats::default()
        };
        self.ops.read_into(&mut stats);
        stats
    }

    fn config(&self) -> RwLockReadGuard<'_, Option<ClusterConfig>> {
        self.config.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs a newer configuration and sets both replicators' modes from it. A slot
    /// handed away (recovery step 5) is released only once its writes in flight settled.
    async fn set_config(&self, config: ClusterConfig) -> Result<(), ConfigRefused> {
        // One change at a time: modes computed for one configuration must not be applied
        // after a newer one's (a change can wait for writes to settle).
        let _one_at_a_time = self.config_changes.lock().await;
        config.validate()?;
        if config.len() != self.servers {
            return Err(ConfigRefused::WrongSize { got: config.len(), expected: self.servers });
        }
        let me = &config.servers[self.id as usize];
        if me.incarnation != self.incarnation {
            return Err(ConfigRefused::OtherIncarnation { id: self.id, named: me.incarnation });
        }
        let (own, adopted) = self.modes(&config);
        let restoring = config.restoring;
        self.resync_secondary(&config)?;
        {
            let mut current = self.config.write().unwrap_or_else(|p| p.into_inner());
            if let Some(current) = current.as_ref().filter(|c| c.epoch > config.epoch) {
                return Err(ConfigRefused::Older { epoch: config.epoch, current: current.epoch });
            }
            info!(epoch = config.epoch, serving = ?config.serving, "configuration installed");
            *current = Some(config);
        }
        if adopted == Mode::Waiting
            && matches!(self.adopted.mode(), Mode::Stream(_))
            && !self.adopted.settle(SETTLE_LIMIT).await
        {
            return Err(ConfigRefused::NotSettled);
        }
        // The first configuration that serves begins this start's log, with what a restore
        // of dumps loaded. Under a restore (or before `LoadLog`) the old log stays.
        let tables =
            [(&*self.primary, TableKind::Primary), (&*self.secondary, TableKind::Secondary)];
        if !restoring && let Err(why) = self.durable.begin(&tables) {
            // Writes are refused "not stored" until one can be begun.
            warn!(%why, "no log to write to");
        }
        self.own.set_mode(own);
        self.adopted.set_mode(adopted);
        Ok(())
    }

    /// The replication modes a configuration implies for (own slot, adopted slot).
    fn modes(&self, config: &ClusterConfig) -> (Mode, Mode) {
        let stream = |to: u32, into: TableKind, snapshot: bool| {
            Mode::Stream(Target {
                addr: config.servers[to as usize].servers_addr(),
                into,
                epoch: config.epoch,
                snapshot,
                incarnation: config.servers[to as usize].incarnation,
            })
        };
        let next = secondary_of(self.id, self.servers);
        let own = if config.serving[self.id as usize] != self.id {
            Mode::Waiting
        } else {
            match config.servers[next as usize].state {
                // After a crash the copy is filled again from this, the newer one.
                Replica::Up => stream(next, TableKind::Secondary, config.resync),
                Replica::Joining => stream(next, TableKind::Secondary, true),
                Replica::Down => Mode::Local,
            }
        };
        let prev = primary_of(self.id, self.servers);
        let adopted = if config.serving[prev as usize] != self.id {
            Mode::Waiting
        } else {
            match config.servers[prev as usize].state {
                Replica::Joining => stream(prev, TableKind::Primary, true),
                Replica::Down => Mode::Local,
                Replica::Up => Mode::Waiting,
            }
        };
        (own, adopted)
    }

    /// Why this server must not serve an operation on `key` now, or which slot it is:
    /// `Ok(true)` for its own slot, `Ok(false)` for the adopted one.
    fn route(
        &self,
        config: &Option<ClusterConfig>,
        key: &[u8],
        client_epoch: u64,
    ) -> Result<bool, Refusal> {
        self.may_serve()?;
        let Some(config) = config else {
            return Err(Refusal::Unavailable("server not configured yet".into()));
        };
        if client_epoch > config.epoch {
            return Err(Refusal::Unavailable(format!("server still at epoch {}", config.epoch)));
        }
        let slot = config.slot_of(key);
        if config.serving[slot as usize] != self.id {
            return Err(Refusal::WrongOwner { epoch: config.epoch });
        }
        Ok(slot == self.id)
    }

    /// Whether this server may serve anything at all now (not shutting down, lease valid).
    fn may_serve(&self) -> Result<(), Refusal> {
        if self.draining.load(Ordering::SeqCst) {
            return Err(Refusal::Unavailable("server is shutting down".into()));
        }
        if !self.lease.is_valid() {
            return Err(Refusal::Unavailable("server has no valid lease".into()));
        }
        Ok(())
    }

    /// A GET, checked against the configuration it is read under: `f` gets the value (or
    /// why it may not be read) while the table is locked.
    fn read<R>(
        &self,
        key: &[u8],
        client_epoch: u64,
        f: impl FnOnce(Result<Option<&[u8]>, Refusal>) -> R,
    ) -> R {
        let config = self.config();
        match self.route(&config, key, client_epoch) {
            Ok(own) => {
                if own { &self.primary } else { &self.secondary }.with_value(key, |v| f(Ok(v)))
            }
            Err(refusal) => f(Err(refusal)),
        }
    }

    /// Queues a PUT or DEL on the right slot's replicator, atomically with the routing
    /// check (a configuration swap cannot slip in between).
    async fn write(
        &self,
        op: Op,
        client_epoch: u64,
    ) -> Result<oneshot::Receiver<Outcome>, Refusal> {
        loop {
            let (own, epoch) = {
                let config = self.config();
                (
                    self.route(&config, op.key(), client_epoch)?,
                    config.as_ref().map_or(0, |c| c.epoch),
                )
            };
            let replicator = if own { &self.own } else { &self.adopted };
            let slot = replicator
                .reserve(&op)
                .await
                .ok_or_else(|| Refusal::Unavailable("server is shutting down".into()))?;
            // Same epoch: same routing. Only the lease or a shutdown may have changed
            // while waiting for room.
            let config = self.config();
            if config.as_ref().is_some_and(|c| c.epoch == epoch) {
                self.may_serve()?;
                return Ok(slot.submit(op));
            }
        }
    }

    /// The table a replication stream from `from` may write into, under `config`.
    fn stream_table(
        &self,
        config: &Option<ClusterConfig>,
        from: (u32, u64),
        into: TableKind,
    ) -> Result<&Table, StreamRefused> {
        let config = config.as_ref().ok_or(StreamRefused::NotConfigured)?;
        let (id, incarnation) = from;
        let sender = config.servers.get(id as usize).ok_or(StreamRefused::UnknownServer)?;
        if sender.incarnation != incarnation {
            return Err(StreamRefused::SenderReplaced { id, incarnation });
        }
        match into {
            TableKind::Secondary if id == primary_of(self.id, self.servers) => {
                if config.serving[id as usize] != id {
                    return Err(StreamRefused::SenderNotServing { id, epoch: config.epoch });
                }
                Ok(&self.secondary)
            }
            TableKind::Primary if id == secondary_of(self.id, self.servers) => {
                let me = &config.servers[self.id as usize];
                if me.state != Replica::Joining || config.serving[self.id as usize] != id {
                    return Err(StreamRefused::NotBeingFilled { id, epoch: config.epoch });
                }
                Ok(&self.primary)
            }
            _ => Err(StreamRefused::WrongTable { id, into }),
        }
    }

    /// Accepts a new replication stream: it must be meant for this start of this server,
    /// allowed by the configuration, and newer than every earlier stream from the same
    /// sender into the same table (which are refused from now on).
    fn open_stream(
        &self,
        from: (u32, u64),
        into: TableKind,
        target_incarnation: u64,
        stream: u64,
    ) -> Result<(), StreamRefused> {
        if target_incarnation != self.incarnation {
            let this = self.incarnation;
            return Err(StreamRefused::OtherIncarnation { meant: target_incarnation, this });
        }
        self.stream_table(&self.config(), from, into)?;
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let newest = streams.entry((from.0, into)).or_insert((from.1, stream));
        if (from.1, stream) < *newest {
            return Err(StreamRefused::Superseded { stream, id: from.0 });
        }
        *newest = (from.1, stream);
        Ok(())
    }

    /// Logs and applies a replicated batch if `from` may still write `into` this server on
    /// `stream`: checked, logged and applied under the configuration lock, so no swap slips
    /// in between, and the log holds the table's changes in the order they were applied.
    /// Returns the batch's ticket in the log: it is acknowledged once synced.
    fn apply_replicated(
        &self,
        from: (u32, u64),
        into: TableKind,
        stream: u64,
        ops: Vec<Op>,
    ) -> Result<u64, StreamRefused> {
        let config = self.config();
        let table = self.stream_table(&config, from, into)?;
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if streams.get(&(from.0, into)) != Some(&(from.1, stream)) {
            return Err(StreamRefused::Superseded { stream, id: from.0 });
        }
        let kind = if std::ptr::eq(table, &*self.primary) {
            TableKind::Primary
        } else {
            TableKind::Secondary
        };
        let ticket = self.durable.append(kind, &ops).map_err(StreamRefused::NotLogged)?;
        table.apply_all(ops);
        Ok(ticket)
    }

    /// Stops client operations and waits until no replicated write is in flight.
    async fn drain(&self, limit: Duration) {
        self.draining.store(true, Ordering::SeqCst);
        tokio::join!(self.own.settle(limit), self.adopted.settle(limit));
    }
}

/// Most connections served at once on each port. Past it a new client connection is
/// closed after its hello (`client bench` refuses a `-c` above it up front).
pub const MAX_CLIENT_CONNECTIONS: usize = 4096;
const MAX_PEER_CONNECTIONS: usize = 64;
const MAX_CONTROL_CONNECTIONS: usize = 16;

/// Serves the three ports until `cancel`: clients, peers' replication streams, and the
/// coordinator's control link.
fn serve_ports(
    server: &Arc<Server>,
    [clients, peers, control]: [Arc<TcpListener>; 3],
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) {
    let s = server.clone();
    listener::serve(
        clients,
        "clients",
        MAX_CLIENT_CONNECTIONS,
        Gate::clients(),
        tracker,
        cancel.clone(),
        move |conn, _| clients::serve(s.clone(), conn),
    );
    let s = server.clone();
    listener::serve(
        peers,
        "servers",
        MAX_PEER_CONNECTIONS,
        Gate::new(|role| matches!(role, Role::Server { .. }), &server.token),
        tracker,
        cancel.clone(),
        move |conn, role| control::serve_stream(s.clone(), conn, role),
    );
    let s = server.clone();
    listener::serve(
        control,
        "control",
        MAX_CONTROL_CONNECTIONS,
        Gate::new(|role| role == Role::Coordinator, &server.token),
        tracker,
        cancel.clone(),
        move |conn, _| control::serve_control(s.clone(), conn),
    );
}

/// Runs a server until the coordinator shuts it down, replaces it, or stays away for the
/// orphan timeout.
pub async fn run(opts: ServerOptions, token: Vec<u8>) -> Result<()> {
    listener::raise_fd_limit();
    let clients = listener::bind(&opts.bind_host, opts.client_port, "clients").await?;
    let peers = listener::bind(&opts.bind_host, opts.servers_port, "servers").await?;
    let control = listener::bind(&opts.bind_host, opts.control_port, "control").await?;
    let ports = crate::protocol::BoundPorts {
        client: clients.local_addr()?.port(),
        servers: peers.local_addr()?.port(),
        control: control.local_addr()?.port(),
    };
    let cancel = CancellationToken::new();
    let server = Arc::new(Server::new(&opts, token, cancel.clone())?);
    let tracker = TaskTracker::new();
    serve_ports(&server, [clients, peers, control], &tracker, &cancel);
    info!(id = opts.id, incarnation = opts.incarnation, ?ports, "listening");

    let outcome = tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        lost = control::report_to_coordinator(server.clone(), &opts, ports) => lost,
    };
    if !cancel.is_cancelled() {
        server.draining.store(true, Ordering::SeqCst);
        if let Err(Error::Replaced) = outcome {
            // A newer start of this id holds the data now; ours is stale: no dumps.
            warn!("replaced by a newer server; exiting without dumps");
        } else {
            // The coordinator is gone (for the orphan timeout, or before this server joined):
            // stop serving, keep what we hold.
            let reason = outcome.as_ref().err().map(ToString::to_string).unwrap_or_default();
            warn!(%reason, "{}", lines::LOST_COORDINATOR);
            server.dump_until_written().await;
        }
        cancel.cancel();
    }
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_millis(500), tracker.wait()).await;
    match outcome {
        // Never joined (the coordinator refused or could not be reached): a failed start.
        Err(e) if server.config().is_none() => Err(Error::Unavailable(format!(
            "{} of the coordinator at {}: {e}",
            lines::NEVER_JOINED,
            opts.coordinators.join(",")
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::ServerAddr;

    /// Server 1 of 3 (incarnation 0), configured at epoch 1 with every server up.
    pub(super) async fn server() -> Server {
        let opts = ServerOptions {
            id: 1,
            servers: 3,
            coordinators: vec!["127.0.0.1:9".into()],
            bind_host: "127.0.0.1".into(),
            client_port: 0,
            servers_port: 0,
            control_port: 0,
            dump_dir: tempfile::tempdir().unwrap().keep(),
            heartbeat: Duration::from_millis(250),
            incarnation: 0,
            orphan_timeout: Duration::from_secs(60),
            fsync: crate::aof::FsyncPolicy::Always,
            compact_min_bytes: 64 << 20,
            from_log: false,
        };
        let server = Server::new(&opts, b"t".to_vec(), CancellationToken::new()).unwrap();
        let addrs = (0..3)
            .map(|id| ServerAddr {
                id,
                host: "127.0.0.1".into(),
                client_port: 1,
                servers_port: 1,
                incarnation: 0,
                state: Replica::Up,
            })
            .collect();
        server.set_config(ClusterConfig::new(1, addrs)).await.unwrap();
        server
    }

    fn put() -> Vec<Op> {
        vec![Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }]
    }

    #[tokio::test]
    async fn only_the_newest_stream_from_the_primary_may_write() {
        let server = server().await;
        let primary = (0, 0);
        let superseded = |r: Result<(), _>| matches!(r, Err(StreamRefused::Superseded { .. }));
        server.open_stream(primary, TableKind::Secondary, 0, 2).unwrap();
        assert!(superseded(server.open_stream(primary, TableKind::Secondary, 0, 1)), "older");
        assert!(superseded(
            server.apply_replicated(primary, TableKind::Secondary, 1, put()).map(drop)
        ));
        server.apply_replicated(primary, TableKind::Secondary, 2, put()).unwrap();
        server.secondary.with_value(b"k", |v| assert_eq!(v, Some(&b"v"[..])));
        server.open_stream(primary, TableKind::Secondary, 0, 3).unwrap();
        assert!(superseded(
            server.apply_replicated(primary, TableKind::Secondary, 2, put()).map(drop)
        ));
    }

    #[tokio::test]
    async fn streams_from_the_wrong_sender_or_for_another_start_are_refused() {
        let server = server().await;
        let open = |from, into, meant| server.open_stream(from, into, meant, 1).unwrap_err();
        use StreamRefused::*;
        let meant_for_7 = open((0, 0), TableKind::Secondary, 7);
        assert!(matches!(meant_for_7, OtherIncarnation { meant: 7, this: 0 }));
        let replaced = open((0, 1), TableKind::Secondary, 0);
        assert!(matches!(replaced, SenderReplaced { id: 0, incarnation: 1 }));
        let not_my_primary = open((2, 0), TableKind::Secondary, 0);
        assert!(matches!(not_my_primary, WrongTable { id: 2, into: TableKind::Secondary }));
        assert!(matches!(open((2, 0), TableKind::Primary, 0), NotBeingFilled { id: 2, epoch: 1 }));
        assert!(server.secondary.is_empty() && server.primary.is_empty());
    }

    #[tokio::test]
    async fn a_configuration_for_another_cluster_or_start_or_an_older_one_is_refused() {
        let server = server().await;
        let config = server.config().clone().unwrap();
        let mut other_start = config.clone();
        other_start.epoch = 2;
        other_start.servers[1].incarnation = 4;
        let refused = server.set_config(other_start).await;
        assert!(matches!(refused, Err(ConfigRefused::OtherIncarnation { id: 1, named: 4 })));
        let mut older = config.clone();
        older.epoch = 0;
        let refused = server.set_config(older).await;
        assert!(matches!(refused, Err(ConfigRefused::Older { epoch: 0, current: 1 })));
        let mut invalid = config;
        invalid.serving.pop();
        let refused = server.set_config(invalid).await;
        assert!(matches!(refused, Err(ConfigRefused::Invalid(_))), "{refused:?}");
        assert_eq!(server.config().as_ref().unwrap().epoch, 1);
    }

    #[tokio::test]
    async fn a_primary_whose_keys_moved_is_fenced_between_batches() {
        let server = server().await;
        server.open_stream((0, 0), TableKind::Secondary, 0, 1).unwrap();
        let mut config = server.config().clone().unwrap();
        config.epoch = 2;
        config.servers[0].state = Replica::Down;
        config.serving[0] = 1;
        server.set_config(config).await.unwrap();
        let refused = server.apply_replicated((0, 0), TableKind::Secondary, 1, put());
        assert!(matches!(refused, Err(StreamRefused::SenderNotServing { id: 0, epoch: 2 })));
        assert!(server.secondary.is_empty());
        let refused = server.write(put().remove(0), 1).await;
        assert!(refused.is_err(), "no lease yet: nothing is accepted");
    }
}
