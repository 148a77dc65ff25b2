//! Every message that crosses a socket, defined once.
//!
//! Each TCP connection starts with a [`Hello`] from the side that connected, then carries
//! frames of exactly one request enum one way and its response enum the other way:
//!
//! | port                  | connector     | request            | response            |
//! |-----------------------|---------------|--------------------|---------------------|
//! | server, clients port  | client        | [`ClientRequest`]  | [`ClientResponse`]  |
//! | server, servers port  | primary       | [`ReplMessage`]    | [`ReplAck`]         |
//! | server, control port  | coordinator   | [`ControlRequest`] | [`ControlResponse`] |
//! | coord, clients port   | client        | [`CoordRequest`]   | [`CoordResponse`]   |
//! | coord, servers port   | server        | [`ReportRequest`]  | [`ReportResponse`]  |
//!
//! Payloads are bincode 2 (serde) inside length-delimited frames (see [`crate::connection`]).

use serde::{Deserialize, Serialize};

use crate::routing::ClusterConfig;

/// Bumped on any incompatible change of the messages below. 2: [`ReportResponse::Replaced`]
/// (a server of version 1 would take it for a lost coordinator and write stale dumps).
/// 3: [`ControlResponse::ShutDown`] describes the dump files (for the dumps manifest).
/// 4: [`ClusterConfig::restoring`] (an older server would write dumps during a restore),
/// [`ControlRequest::Load`].
/// 5: heartbeats carry [`ServerStats`]; [`CoordRequest::Watch`] streams [`WatchMessage`]s.
pub const PROTOCOL_VERSION: u32 = 8;
/// Largest key accepted anywhere (64 KiB).
pub const MAX_KEY_LEN: usize = 64 * 1024;
/// Largest value accepted anywhere (16 MiB).
pub const MAX_VALUE_LEN: usize = 16 * 1024 * 1024;
/// Largest frame: one maximal entry plus room for the envelope. Replication batches are
/// cut so that they never exceed it either.
pub const MAX_FRAME_LEN: usize = MAX_VALUE_LEN + MAX_KEY_LEN + 64 * 1024;

/// Who is on the other end of a connection; checked against the port it connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Client,
    /// A server: its id, and which start of that id it is (older ones are fenced off).
    Server {
        id: u32,
        incarnation: u64,
    },
    Coordinator,
}

/// First frame of every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub role: Role,
    /// The cluster token on server-side ports (control, replication, reports); empty for clients.
    #[serde(with = "serde_bytes")]
    pub token: Vec<u8>,
}

impl Hello {
    pub fn new(role: Role, token: &[u8]) -> Self {
        Hello { version: PROTOCOL_VERSION, role, token: token.to_vec() }
    }
}

/// One key-value operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Get {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    Del {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Get { key } | Op::Del { key } => key,
        }
    }

    /// Checks the size limits; the same check runs in the client and in the server.
    pub fn check_limits(&self) -> Result<(), Refusal> {
        if self.key().is_empty() {
            return Err(Refusal::EmptyKey);
        }
        if self.key().len() > MAX_KEY_LEN {
            return Err(Refusal::KeyTooLarge { len: self.key().len(), max: MAX_KEY_LEN });
        }
        if let Op::Put { value, .. } = self
            && value.len() > MAX_VALUE_LEN
        {
            return Err(Refusal::ValueTooLarge { len: value.len(), max: MAX_VALUE_LEN });
        }
        Ok(())
    }
}

/// A client operation, stamped with the configuration epoch the client routed it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    pub epoch: u64,
    pub op: Op,
}

/// The encoding side of [`ClientRequest`] over a borrowed operation: the same bytes, without
/// copying the value for every attempt (a test holds them equal).
#[derive(Debug, Serialize)]
pub struct ClientRequestRef<'a> {
    pub epoch: u64,
    pub op: &'a Op,
}

/// Answer to a [`ClientRequest`]; answers come back in request order on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// PUT stored on both copies.
    Stored,
    /// GET result: `None` when the key does not exist.
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// DEL done; `existed` tells whether there was a value to delete.
    Deleted { existed: bool },
    /// The operation was not applied.
    Refused(Refusal),
}

/// The encoding side of a GET's [`ClientResponse::Value`] over a borrowed value: the same
/// bytes (same variant positions; a test holds them equal), written straight from the table
/// into the connection's buffer.
#[derive(Debug, Serialize)]
pub enum ClientResponseRef<'a> {
    Stored,
    Value(#[serde(with = "serde_bytes")] Option<&'a [u8]>),
}

/// Why an operation was not applied. Every variant means "nothing changed".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("this server does not own the key in epoch {epoch}")]
    WrongOwner { epoch: u64 },
    #[error("server unavailable: {0}")]
    Unavailable(String),
    #[error("key of {len} bytes is larger than {max}")]
    KeyTooLarge { len: usize, max: usize },
    #[error("value of {len} bytes is larger than {max}")]
    ValueTooLarge { len: usize, max: usize },
    #[error("empty key")]
    EmptyKey,
    /// The write was not stored anywhere (the owner's log refused it: a full disk, an
    /// I/O error); nothing changed.
    #[error("not stored: {0}")]
    NotStored(String),
}

/// Which table of the receiving server a replication stream writes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TableKind {
    Primary,
    Secondary,
}

/// Primary -> secondary: an ordered stream of writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplMessage {
    /// First message after the hello: which table the stream fills, in which epoch, on
    /// which start of the receiver; `stream` grows with each connection of the sender, and
    /// the receiver refuses every stream but the newest (a stale connection's retransmitted
    /// batches must never land after a newer one's).
    Open { into: TableKind, epoch: u64, target_incarnation: u64, stream: u64 },
    /// Writes `first_seq`, `first_seq + 1`, ... in order. Only Put and Del appear here.
    Batch { first_seq: u64, ops: Vec<Op> },
}

/// The encoding side of [`ReplMessage`], over borrowed operations: the same bytes without a
/// copy of every queued write (same variants in the same order; a test holds them equal).
#[derive(Debug, Serialize)]
pub enum ReplMessageRef<'a> {
    Open { into: TableKind, epoch: u64, target_incarnation: u64, stream: u64 },
    Batch { first_seq: u64, ops: Vec<&'a Op> },
}

/// Secondary -> primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplAck {
    /// The stream is accepted; batches may follow.
    Opened,
    /// Every write up to and including `seq` is applied.
    Applied { seq: u64 },
    /// The stream is refused (wrong sender, wrong epoch, shutting down); the primary must not
    /// count anything after the last `Applied` as stored.
    Refused(String),
}

/// Coordinator -> server, on the server's control port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// The topology: whom to replicate to and which keys to serve.
    SetConfig(ClusterConfig),
    /// Stop taking client operations and wait until no replicated write is in flight.
    Drain,
    /// Write the dump files and exit.
    Shutdown,
    /// Under a restoring configuration (a restore with N unchanged), load the two dump
    /// files in the server's dump directory into its tables, each checked against its
    /// entry (size, MD5, key count; `n` must be its configuration's) before either table is
    /// touched. Answered by [`ControlResponse::Loaded`].
    Load { n: u32, primary: DumpFile, secondary: DumpFile },
    /// The start after a crash (the server was started with `--from-log`): load the
    /// append-only log into the tables, then append to it; nothing is written to it yet.
    /// Answered by [`ControlResponse::LogLoaded`].
    LoadLog,
}

/// Server -> coordinator, on the control port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    Done,
    /// Dumps written (`None`: none, the server never got a configuration); the coordinator
    /// logs them and lists them in the dumps manifest, without reading the files (a remote
    /// server's are on its host).
    ShutDown {
        dumps: Option<Dumps>,
    },
    /// The dumps are loaded: the keys in the primary table, and their bytes (keys and
    /// values).
    Loaded {
        keys: u64,
        bytes: u64,
    },
    LogLoaded(LogLoaded),
    Failed(String),
}

/// What a server found in its append-only log at a start after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLoaded {
    /// The log's path on the server's host.
    pub file: String,
    pub records: u64,
    pub primary_keys: u64,
    pub secondary_keys: u64,
    /// Keys and values of both tables.
    pub bytes: u64,
    /// A last record cut short by the crash, cut off: where it began, and its bytes.
    pub torn: Option<(u64, u64)>,
}

/// One dump file as its server wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpFile {
    /// The file's name in the dump directory (`server_<id>.primary`).
    pub name: String,
    pub bytes: u64,
    pub keys: u64,
    /// MD5 of the file's bytes, lowercase hex.
    pub md5: String,
}

/// Both dump files of one server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dumps {
    pub primary: DumpFile,
    pub secondary: DumpFile,
}

/// Client -> coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordRequest {
    GetConfig,
    Status,
    /// Subscribe: answered by a stream of [`CoordResponse::Watch`] until the connection
    /// closes (`client watch`). Nothing else is read on that connection afterwards.
    Watch,
}

/// Coordinator -> client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CoordResponse {
    /// `None` while the cluster is still starting.
    Config(Option<ClusterConfig>),
    Status(StatusReport),
    Watch(WatchMessage),
    /// From a standby coordinator (`coord --etcd`): ask the leader instead, at this
    /// `host:port` of its clients port (`None` while no coordinator leads).
    NotLeader {
        leader: Option<String>,
    },
}

/// State of one server as the coordinator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerState {
    Starting,
    Running,
    Failed,
    Recovering,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Starting => "starting",
            ServerState::Running => "running",
            ServerState::Failed => "failed",
            ServerState::Recovering => "recovering",
        }
    }
}

/// One row of `client status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub id: u32,
    pub host: String,
    pub client_port: u16,
    pub servers_port: u16,
    pub coord_port: u16,
    pub pid: u32,
    pub state: ServerState,
}

/// A recovery in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryStatus {
    pub server: u32,
    pub step: u8,
}

/// Answer to [`CoordRequest::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub epoch: u64,
    pub servers: Vec<ServerStatus>,
    pub recovery: Option<RecoveryStatus>,
    /// Replication streams the coordinator sees cut now (see `coord::cut`).
    pub cuts: Vec<StreamCutStatus>,
    /// With standby coordinators (`coord --etcd`): who leads, since when, who stands by.
    pub coordinators: Option<Leadership>,
}

/// The coordinators of a cluster elected through etcd, as the leader sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    /// The cluster's name (`--cluster`): its prefix in etcd.
    pub cluster: String,
    /// The leader's clients port, `host:port`.
    pub leader: String,
    /// When it won its election (UTC, RFC 3339).
    pub since: String,
    /// The standbys' clients ports.
    pub standbys: Vec<String>,
}

/// A replication stream seen cut: `owner`'s writes to its copy on `copy` have waited
/// `stalled_ms` with none acknowledged, as of its last heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCutStatus {
    pub owner: u32,
    pub copy: u32,
    pub stalled_ms: u64,
    /// Whether the owner's stream was connected (a cut that drops packets keeps it so
    /// until the stream's own timeout).
    pub connected: bool,
}

/// Size of a recovery snapshot, for the coordinator's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyStats {
    pub entries: u64,
    pub bytes: u64,
}

/// The ports a server really bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundPorts {
    pub client: u16,
    pub servers: u16,
    pub control: u16,
}

/// Server -> coordinator, on the coordinator's servers port (one long-lived connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportRequest {
    /// Sent right after the hello (again after each reconnect); `epoch`: the newest
    /// configuration the server holds (0: none).
    Started { ports: BoundPorts, pid: u32, incarnation: u64, epoch: u64 },
    /// Sent periodically; answered with a lease. Carries the server's counters, so that
    /// watching and metrics cost no message per operation.
    Heartbeat(ServerStats),
    /// Recovery steps 3 and 4: the snapshot streamed `into` the new server's table for
    /// configuration `epoch` is fully acknowledged.
    Updated { into: TableKind, epoch: u64, copied: CopyStats },
}

/// Coordinator -> server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportResponse {
    /// The server may serve clients for `lease_ms` from the moment it sent the heartbeat.
    /// `coordinators`: the servers ports (`host:port`) of every coordinator of the
    /// cluster, leader first, where to look for the next leader if this one goes (empty
    /// without standbys: the server keeps the address it was started with).
    Lease { lease_ms: u64, coordinators: Vec<String> },
    /// Started (or Updated) acknowledged.
    Welcome,
    /// A newer start of this server id took its place: it must exit without writing dumps
    /// (they would overwrite the newer data).
    Replaced,
    /// From a standby coordinator: the leader's servers port (`None` while none leads).
    NotLeader { leader: Option<String> },
}

/// Which kind of client operation a counter counts (index into [`ServerStats::ops`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Get = 0,
    Put = 1,
    Del = 2,
}

impl OpKind {
    pub const ALL: [OpKind; 3] = [OpKind::Get, OpKind::Put, OpKind::Del];

    pub fn of(op: &Op) -> Self {
        match op {
            Op::Get { .. } => OpKind::Get,
            Op::Put { .. } => OpKind::Put,
            Op::Del { .. } => OpKind::Del,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::Del => "del",
        }
    }
}

/// A server's counters, sent with every heartbeat (`client watch`, `coord --metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    pub primary_keys: u64,
    pub secondary_keys: u64,
    /// Bytes of keys and values in each table.
    pub primary_bytes: u64,
    pub secondary_bytes: u64,
    /// Client operations answered since this server started, by [`OpKind`], each as
    /// `[done, refused]`.
    pub ops: [[u64; 2]; 3],
    /// Writes waiting for their copy's acknowledgement (both streams): the replication lag.
    pub repl_queue: u64,
    pub repl_queue_bytes: u64,
    /// The stream of this server's own writes to its secondary: how long writes have
    /// waited with none acknowledged (0: none waits), and whether it is connected. The
    /// coordinator declares the stream cut from these (`coord::cut`).
    pub own_stalled_ms: u64,
    pub own_connected: bool,
}

impl ServerStats {
    /// Operations answered, of every kind and outcome.
    pub fn total_ops(&self) -> u64 {
        // Figures a peer sent: saturating, never a panic on overflow.
        self.ops.iter().flatten().fold(0u64, |sum, &n| sum.saturating_add(n))
    }
}

/// One message of a [`CoordRequest::Watch`] stream: a snapshot first and then every
/// 100 ms, and every event as it happens (a recovery's steps take milliseconds each, less
/// than a snapshot's interval).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WatchMessage {
    Snapshot(ClusterSnapshot),
    Event(ClusterEvent),
}

/// The cluster as the coordinator sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSnapshot {
    pub status: StatusReport,
    /// Per server id: its last heartbeat's counters and its operations per second
    /// (`None`: none heard from its current start yet).
    pub stats: Vec<Option<(ServerStats, f64)>>,
    pub recovery: Option<RecoveryProgress>,
}

/// A recovery in progress: the steps done with their durations, and the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryProgress {
    pub server: u32,
    pub attempts: u32,
    pub done: Vec<StepTime>,
    /// The current step and how long it has run so far.
    pub current: StepTime,
    pub total_ms: u64,
}

/// A recovery step ("0 lease wait", "2 copy", ...) and how long it took (or has taken).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTime {
    pub step: String,
    pub ms: u64,
}

/// Something that happened, stamped with the coordinator's wall clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEvent {
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// `cause`: a short label (`process_exited`, `heartbeat_timeout`, ...).
    ServerLost {
        server: u32,
        pid: u32,
        why: String,
        cause: String,
    },
    RecoveryStarted {
        server: u32,
    },
    StepDone {
        server: u32,
        step: String,
        ms: u64,
    },
    /// The lost server's keys are served again (by its secondary), `ms` after the loss.
    KeysServed {
        server: u32,
        ms: u64,
    },
    ServerStarted {
        server: u32,
        pid: u32,
        incarnation: u64,
    },
    RolledBack {
        server: u32,
        why: String,
        attempt: u32,
    },
    RecoveryComplete {
        server: u32,
        ms: u64,
        keys: u64,
        bytes: u64,
        attempts: u32,
    },
    ConfigPublished {
        epoch: u64,
    },
    /// The service is shutting down on a fault (two servers lost).
    Fatal {
        why: String,
    },
    /// `owner`'s replication stream to `copy` is cut (writes waited `stalled_ms` with none
    /// acknowledged); `replaced`: the owner is replaced (else: within the backoff).
    StreamCut {
        owner: u32,
        copy: u32,
        stalled_ms: u64,
        replaced: bool,
    },
    /// A stream seen cut acknowledges writes again.
    StreamHealed {
        owner: u32,
        copy: u32,
    },
}
