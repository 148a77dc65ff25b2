//! Appending to a log, and syncing it.
//!
//! An append encodes a batch of changes and writes it with one `write(2)` at the end of the
//! file (under a short lock, never held across an `.await`); it returns a ticket, the
//! file's length after it. [`Log::durable`] resolves once the file is synced past a ticket.
//! With `always`, a thread of its own syncs (`fdatasync`) whatever was written while its
//! previous sync ran: writes that arrive together share one sync (group commit), and the
//! sync overlaps the copy's round trip. With `everysec` it syncs once a second and a ticket
//! is durable at once; with `no` nothing is synced here.
//!
//! A failed write is cut off the file again (a partial record must not stand before later
//! ones) and reported: the write is not stored, and later writes may succeed (a disk that
//! was full and has room again). A failed sync is different: the kernel may have dropped
//! the pages it could not write, so no later sync can prove them on disk. Every write not
//! synced before it fails, and so does every write after it: the log refuses writes until
//! the server starts again (and loads what is really on disk).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use super::format::{self, Change};
use super::load::{self, Loaded};
use super::{FsyncPolicy, LogError};
use crate::protocol::{Op, TableKind};

/// A server's log: cheap to clone, shared by every task that writes.
#[derive(Clone)]
pub struct Log {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) path: PathBuf,
    pub(super) id: u32,
    pub(super) cluster: [u8; 16],
    policy: FsyncPolicy,
    pub(super) appender: Mutex<Appender>,
    pub(super) sync: Arc<Syncs>,
    records: AtomicU64,
    /// The file's length, read without the appender's lock (whether to compact).
    pub(super) file_len: AtomicU64,
    pub(super) compaction: super::rewrite::Compaction,
}

/// Tickets are positions in the log's history, not in its file: a compaction makes the
/// file shorter, and a ticket handed out before must still mean the same records.
pub(super) struct Appender {
    pub(super) file: Arc<File>,
    /// The file's length.
    pub(super) len: u64,
    /// Ticket minus file offset: what compactions took out of the file so far.
    pub(super) shift: u64,
    buf: Vec<u8>,
}

/// What the sync thread and the appenders share.
pub(super) struct Syncs {
    pub(super) state: Mutex<SyncState>,
    wake: Condvar,
    /// How far the log is on disk (a ticket), or why no more of it will be.
    pub(super) synced: watch::Sender<Synced>,
    count: AtomicU64,
}

pub(super) struct SyncState {
    pub(super) file: Arc<File>,
    /// The ticket of the last write.
    written: u64,
    stop: bool,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Synced {
    pub(super) upto: u64,
    failed: Option<String>,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn io<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |err| LogError::Io { path: path.into(), what, err }
}

impl Log {
    /// A new, empty log at `path`, replacing what was there: written aside, synced, renamed
    /// over, and the directory synced, so that a crash leaves the old file or the new one.
    pub fn create(
        path: &Path,
        id: u32,
        cluster: [u8; 16],
        policy: FsyncPolicy,
    ) -> Result<Log, LogError> {
        let tmp = path.with_extension("aof.new");
        let mut file = File::create(&tmp).map_err(io(&tmp, "creating"))?;
        file.write_all(&format::header(id, cluster)).map_err(io(&tmp, "writing"))?;
        file.sync_all().map_err(io(&tmp, "syncing"))?;
        std::fs::rename(&tmp, path).map_err(io(path, "renaming the new log over"))?;
        sync_dir(path)?;
        Log::open(path, id, cluster, format::HEADER_LEN as u64, policy)
    }

    /// Loads the log at `path` (see [`load`]): each change goes to `apply`, in order; a
    /// torn last record is cut off the file. Then the log is open for appending.
    pub fn load(
        path: &Path,
        id: u32,
        cluster: [u8; 16],
        policy: FsyncPolicy,
        apply: impl FnMut(TableKind, Change),
    ) -> Result<(Log, Loaded), LogError> {
        let bytes = load::read_bytes(path)?;
        let loaded = load::parse(path, &bytes, id, cluster, apply)?;
        if loaded.torn.is_some() {
            let file = OpenOptions::new().write(true).open(path).map_err(io(path, "opening"))?;
            file.set_len(loaded.len).map_err(io(path, "cutting the torn tail"))?;
            file.sync_all().map_err(io(path, "syncing"))?;
        }
        Ok((Log::open(path, id, cluster, loaded.len, policy)?, loaded))
    }

    fn open(
        path: &Path,
        id: u32,
        cluster: [u8; 16],
        len: u64,
        policy: FsyncPolicy,
    ) -> Result<Log, LogError> {
        super::rewrite::remove_leftover(path);
        let file = OpenOptions::new().append(true).open(path).map_err(io(path, "opening"))?;
        let file = Arc::new(file);
        let sync = Arc::new(Syncs {
            state: Mutex::new(SyncState { file: file.clone(), written: len, stop: false }),
            wake: Condvar::new(),
            synced: watch::Sender::new(Synced { upto: len, failed: None }),
            count: AtomicU64::new(0),
        });
        if policy != FsyncPolicy::No {
            let (s, p) = (sync.clone(), path.to_path_buf());
            std::thread::Builder::new()
                .name("aof-sync".into())
                .spawn(move || sync_loop(&s, &p, policy))
                .map_err(io(path, "starting its sync thread"))?;
        }
        let appender = Mutex::new(Appender { file, len, shift: 0, buf: Vec::new() });
        let inner = Inner {
            path: path.into(),
            id,
            cluster,
            policy,
            appender,
            sync,
            records: AtomicU64::new(0),
            file_len: AtomicU64::new(len),
            compaction: Default::default(),
        };
        Ok(Log { inner: Arc::new(inner) })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends the puts and deletes of `ops` to `table`'s changes; returns the ticket to
    /// wait for with [`durable`](Self::durable).
    pub fn append(&self, table: TableKind, ops: &[Op]) -> Result<u64, LogError> {
        self.write(ops.len() as u64, |buf| {
            for op in ops {
                format::encode_op(buf, table, op);
            }
        })
    }

    /// Appends "`table` was emptied".
    pub fn append_clear(&self, table: TableKind) -> Result<u64, LogError> {
        self.write(1, |buf| format::encode_clear(buf, table))
    }

    fn write(&self, records: u64, encode: impl FnOnce(&mut Vec<u8>)) -> Result<u64, LogError> {
        let mut appender = lock(&self.inner.appender);
        if let Some(why) = &self.inner.sync.synced.borrow().failed {
            return Err(LogError::NotStored(why.clone()));
        }
        let Appender { file, len, shift, buf } = &mut *appender;
        buf.clear();
        encode(buf);
        if buf.is_empty() {
            return Ok(*len + *shift);
        }
        if let Err(e) = (&**file).write_all(buf) {
            // Cut what may have been written of it: later records must not follow a part.
            if let Err(cut) = file.set_len(*len) {
                self.fail(format!("{e}; cutting the partial record off failed too: {cut}"));
            }
            return Err(LogError::NotStored(e.to_string()));
        }
        *len += buf.len() as u64;
        self.inner.file_len.store(*len, Ordering::Relaxed);
        if buf.capacity() > 1 << 20 {
            *buf = Vec::new();
        }
        self.inner.records.fetch_add(records, Ordering::Relaxed);
        let ticket = *len + *shift;
        let mut state = lock(&self.inner.sync.state);
        state.written = ticket;
        match self.inner.policy {
            FsyncPolicy::Always => self.inner.sync.wake.notify_one(),
            // Synced on the thread's next second; acknowledged at once.
            FsyncPolicy::EverySec => {}
            FsyncPolicy::No => self.inner.sync.synced.send_modify(|s| s.upto = ticket),
        }
        Ok(ticket)
    }

    /// No write is stored from now on.
    pub(super) fn fail(&self, why: String) {
        error!(path = %self.inner.path.display(), %why, "log unusable until a restart");
        self.inner.sync.synced.send_modify(|s| s.failed = Some(why));
    }

    /// Resolves once the log is on disk past `ticket` (at once but with `always`), or with
    /// the error that keeps it from getting there.
    pub fn durable(
        &self,
        ticket: u64,
    ) -> impl Future<Output = Result<(), LogError>> + Send + 'static {
        let mut synced = self.inner.sync.synced.subscribe();
        let policy = self.inner.policy;
        async move {
            if policy != FsyncPolicy::Always {
                return Ok(());
            }
            loop {
                {
                    let now = synced.borrow_and_update();
                    if now.upto >= ticket {
                        return Ok(());
                    }
                    if let Some(why) = &now.failed {
                        return Err(LogError::NotStored(why.clone()));
                    }
                }
                if synced.changed().await.is_err() {
                    return Err(LogError::NotStored("the log was closed".into()));
                }
            }
        }
    }

    /// Syncs done and records appended since the log was opened.
    pub fn stats(&self) -> (u64, u64) {
        (self.inner.sync.count.load(Ordering::Relaxed), self.inner.records.load(Ordering::Relaxed))
    }

    /// The file's length now.
    pub fn file_len(&self) -> u64 {
        self.inner.file_len.load(Ordering::Relaxed)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.sync.state).stop = true;
        self.sync.wake.notify_one();
    }
}

/// The sync thread: with `always`, syncs as soon as there is something to sync; with
/// `everysec`, once a second.
fn sync_loop(sync: &Syncs, path: &Path, policy: FsyncPolicy) {
    loop {
        let (file, target) = {
            let mut state = lock(&sync.state);
            loop {
                if state.stop {
                    return;
                }
                let behind = state.written > sync.synced.borrow().upto;
                if behind && policy == FsyncPolicy::Always {
                    break;
                }
                let wait = Duration::from_secs(1);
                let (next, waited) =
                    sync.wake.wait_timeout(state, wait).unwrap_or_else(|p| p.into_inner());
                state = next;
                let behind = state.written > sync.synced.borrow().upto;
                if waited.timed_out() && policy == FsyncPolicy::EverySec && behind {
                    break;
                }
            }
            (state.file.clone(), state.written)
        };
        // SAFETY: fdatasync(2) on a descriptor this `File` owns, kept open by the Arc.
        let synced = unsafe { libc::fdatasync(file.as_raw_fd()) };
        sync.count.fetch_add(1, Ordering::Relaxed);
        if synced == 0 {
            sync.synced.send_modify(|s| s.upto = s.upto.max(target));
        } else {
            let err = std::io::Error::last_os_error();
            error!(path = %path.display(), error = %err, "sync failed: the log refuses writes until a restart");
            sync.synced.send_modify(|s| s.failed = Some(format!("syncing failed: {err}")));
            info!("the server must start again to load what is on disk");
            return;
        }
    }
}

/// Syncs the directory holding `path` (a rename is durable only then).
pub(super) fn sync_dir(path: &Path) -> Result<(), LogError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir, "syncing the directory"))
}
