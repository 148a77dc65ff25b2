//! The server's append-only log (`server_<id>.aof` in its dump directory): a new one at a
//! start, or the one kept and loaded when the coordinator says so after a crash
//! (`--from-log`, `ControlRequest::LoadLog`); written again from the tables after a restore
//! of dumps, whose keys reach the tables without passing through it.
//!
//! A new log replaces the old file only once this start surely holds data of its own: at
//! its first configuration that is not a restore's, its first write, or the end of a load
//! of dumps. A start refused during a restore (a damaged dump) leaves the old log as it was.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tracing::{error, info, warn};

use crate::aof::{self, FsyncPolicy, Log, LogError};
use crate::protocol::{ControlResponse, LogLoaded, Op, TableKind};
use crate::routing::ClusterConfig;
use crate::server::{Server, Table};

/// When a log is compacted (see `aof::rewrite`): once its file is at least `min_bytes`
/// long and twice what the tables' entries would take in a log of their own.
pub struct CompactWhen {
    pub min_bytes: u64,
    pub tables: [Arc<Table>; 2],
}

impl CompactWhen {
    /// What the tables' entries take in a log: one put each.
    fn live_bytes(&self) -> u64 {
        let per_entry = aof::entry_len(0);
        self.tables.iter().map(|t| t.bytes() + t.len() as u64 * per_entry).sum()
    }
}

/// The log of a server: open once a start decided whether it is new or loaded.
pub struct Durable {
    log: RwLock<Option<Log>>,
    compact: CompactWhen,
    /// Whether this start begins a new log (else it waits for `LoadLog`).
    new: bool,
    path: PathBuf,
    id: u32,
    cluster: [u8; 16],
    policy: FsyncPolicy,
}

/// Why a write was not stored: the log refused it (a full disk, an I/O error).
#[derive(Debug, Clone, thiserror::Error)]
#[error("server {id} cannot write its log: {why}")]
pub struct NotLogged {
    pub id: u32,
    pub why: String,
}

impl Durable {
    /// The log at `path`; `from_log`: kept as it is until [`Server::load_log`], else
    /// replaced by a new, empty one now.
    pub fn open(
        path: PathBuf,
        id: u32,
        token: &[u8],
        policy: FsyncPolicy,
        from_log: bool,
        compact: CompactWhen,
    ) -> Self {
        let cluster = aof::cluster_digest(token);
        Durable { log: RwLock::new(None), compact, new: !from_log, path, id, cluster, policy }
    }

    /// Begins this start's new log now, if it is to have one and has none yet, holding what
    /// `tables` hold (the keys of a restore of dumps, loaded without passing through it).
    pub fn begin(&self, tables: &[(&Table, TableKind)]) -> Result<Log, NotLogged> {
        let mut log = self.log.write().unwrap_or_else(|p| p.into_inner());
        if let Some(log) = log.as_ref() {
            return Ok(log.clone());
        }
        if !self.new {
            return Err(NotLogged { id: self.id, why: "its log is not loaded yet".into() });
        }
        let created = self.create(tables).map_err(|e| self.refusal(&e))?;
        info!(path = %self.path.display(), policy = %self.policy, "new log");
        *log = Some(created.clone());
        Ok(created)
    }

    /// A new log holding `tables`' entries, on disk.
    fn create(&self, tables: &[(&Table, TableKind)]) -> Result<Log, LogError> {
        let log = Log::create(&self.path, self.id, self.cluster, self.policy)?;
        let mut last = 0;
        for (table, kind) in tables {
            for chunk in table.snapshot().chunks(4096) {
                let ops: Vec<Op> = chunk
                    .iter()
                    .map(|(key, value)| Op::Put { key: key.clone(), value: value.clone() })
                    .collect();
                last = log.append(*kind, &ops)?;
            }
        }
        if last > 0 {
            futures::executor::block_on(log.durable(last))?;
        }
        Ok(log)
    }

    fn set(&self, log: Log) {
        *self.log.write().unwrap_or_else(|p| p.into_inner()) = Some(log);
    }

    /// A new log in a directory of its own, for unit tests.
    #[cfg(test)]
    pub fn for_tests() -> Arc<Durable> {
        let dir = tempfile::tempdir().expect("a temporary directory").keep();
        let path = dir.join("server_1.aof");
        let tables = [Arc::default(), Arc::default()];
        let compact = CompactWhen { min_bytes: u64::MAX, tables };
        Arc::new(Durable::open(path, 1, b"token", FsyncPolicy::Always, false, compact))
    }

    /// The open log (begun now if need be), or why there is none.
    pub fn log(&self) -> Result<Log, NotLogged> {
        let open = self.log.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Begun by a first write: the tables are empty (a new copy, a restore written in).
        open.map_or_else(|| self.begin(&[]), Ok)
    }

    /// Waits until the log is on disk past `ticket`. A sync that failed stops the server:
    /// the kernel may have dropped the pages it could not write, so nothing this process
    /// holds can be proved stored any more (PostgreSQL stops for the same reason); the
    /// coordinator replaces it from its copy.
    pub async fn wait(&self, ticket: u64) {
        let Ok(log) = self.log() else { return };
        if let Err(e) = log.durable(ticket).await {
            error!(error = %e, "the log cannot be synced: stopping");
            eprintln!("server {}: the log cannot be synced ({e}): stopping", self.id);
            std::process::exit(70);
        }
    }

    /// `error` as the refusal a client reads.
    pub fn refusal(&self, error: &LogError) -> NotLogged {
        NotLogged { id: self.id, why: error.to_string() }
    }

    /// Appends a batch of changes to `table`; returns its ticket. Starts a compaction in the
    /// background if the log has grown enough for one.
    pub fn append(&self, table: TableKind, ops: &[Op]) -> Result<u64, NotLogged> {
        let log = self.log()?;
        let ticket = log.append(table, ops).map_err(|e| self.refusal(&e))?;
        if log.file_len() >= self.compact.min_bytes {
            log.compact_if_grown(self.compact.live_bytes(), self.compact.min_bytes);
        }
        Ok(ticket)
    }
}

/// Why a `LoadLog` was refused; the tables and the file are as they were.
#[derive(Debug, thiserror::Error)]
enum LoadLogRefused {
    #[error("a log is loaded only once, into the tables of a start after a crash")]
    NotNow,
    #[error(transparent)]
    Log(#[from] LogError),
}

impl Server {
    /// Answers a `LoadLog` (see `ControlRequest::LoadLog`), on a blocking thread.
    pub(super) async fn load_log(self: &Arc<Self>) -> ControlResponse {
        let server = self.clone();
        let loaded = tokio::task::spawn_blocking(move || server.load_log_now());
        match loaded.await {
            Ok(Ok(loaded)) => ControlResponse::LogLoaded(loaded),
            Ok(Err(why)) => ControlResponse::Failed(why.to_string()),
            Err(e) => ControlResponse::Failed(format!("loading the log: {e}")),
        }
    }

    /// Loads the kept log into the empty tables, once, before any configuration.
    fn load_log_now(&self) -> Result<LogLoaded, LoadLogRefused> {
        let durable = &self.durable;
        if durable.new || durable.log.read().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Err(LoadLogRefused::NotNow);
        }
        let began = std::time::Instant::now();
        let (primary, secondary) = (&self.primary, &self.secondary);
        let (log, summary) =
            Log::load(&durable.path, durable.id, durable.cluster, durable.policy, |table, op| {
                match table {
                    TableKind::Primary => primary.apply_loaded(op),
                    TableKind::Secondary => secondary.apply_loaded(op),
                }
            })?;
        if let Some((offset, bytes)) = summary.torn {
            let file = durable.path.display();
            warn!(%file, offset, bytes, "{}", crate::lines::TORN_TAIL_CUT);
        }
        durable.set(log);
        let loaded = LogLoaded {
            file: durable.path.display().to_string(),
            records: summary.records,
            primary_keys: primary.len() as u64,
            secondary_keys: secondary.len() as u64,
            bytes: primary.bytes() + secondary.bytes(),
            torn: summary.torn,
        };
        let took_ms = began.elapsed().as_millis() as u64;
        info!(?loaded, took_ms, "log loaded");
        Ok(loaded)
    }

    /// The first configuration after a crash (`resync`): if this server's primary serves
    /// its own keys, the secondary table is emptied, in the log first: the primary's copy
    /// is the newer one (its writes that were never acknowledged may differ), and it is
    /// streamed here next. Done before the configuration is installed, so that no batch of
    /// that stream can land before it.
    pub(super) fn resync_secondary(&self, config: &ClusterConfig) -> Result<(), NotLogged> {
        let primary = crate::routing::primary_of(self.id, self.servers) as usize;
        let owner_up = config.servers[primary].state == crate::routing::Replica::Up
            && config.serving[primary] as usize == primary;
        let first = self.config().is_none();
        if !config.resync || !first || !owner_up || self.secondary.is_empty() {
            return Ok(());
        }
        let log = self.durable.log()?;
        let cleared =
            log.append_clear(TableKind::Secondary).map_err(|e| self.durable.refusal(&e))?;
        futures::executor::block_on(log.durable(cleared)).map_err(|e| self.durable.refusal(&e))?;
        info!(keys = self.secondary.len(), "secondary emptied: its primary fills it again");
        self.secondary.clear();
        Ok(())
    }
}
