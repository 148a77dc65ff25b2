//! Compaction: a log that has outgrown its live data is rewritten in the background, while
//! writes go on, into a new file holding one put per live entry, then what was appended
//! during the rewrite, synced, and renamed over the old one (then the directory synced).
//!
//! The new file is made from the log itself, not from the tables: a batch is in the log
//! before it is in its table (it is applied once durable), so a table read at the moment the
//! rewrite starts may lack records that the log already holds, and those would be in neither
//! the snapshot nor the tail. Replaying the log up to an offset gives exactly the state of
//! that offset, and the bytes after it, copied as they are, give the rest.
//!
//! Writes are never stopped for long: the old file's tail is copied in rounds without the
//! appender's lock until what is left is small; only that last piece, its sync, the rename
//! and the directory's sync happen under the lock (two short syncs). A crash at any point
//! leaves the old file complete (renamed over only once the new one is on disk) or the new
//! one complete; a leftover `.aof.rewrite` is removed at the next open.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use tracing::{info, warn};

use super::LogError;
use super::format::{self, Change};
use super::load;
use super::writer::{Appender, Inner, Log, io, lock, sync_dir};
use crate::protocol::{Op, TableKind};

/// The part of the tail still to copy below which the last copy is made under the lock.
// Small in unit tests, so that they go through the rounds without the lock too.
const LAST_PIECE: u64 = if cfg!(test) { 512 } else { 256 << 10 };

/// The new file is synced every this many bytes as it is written (Redis's
/// `aof-rewrite-incremental-fsync`): one sync of tens of MiB at the end would fill the disk's
/// queue, and every write's own `fdatasync` would wait behind it.
const INCREMENTAL_SYNC: u64 = 4 << 20;

/// A log's compactions: whether one runs, and when the next may start.
#[derive(Default)]
pub(super) struct Compaction {
    running: AtomicBool,
    /// A failed rewrite (a full disk) is not tried again before the file reaches this.
    not_before: AtomicU64,
    done: AtomicU64,
}

/// What a rewrite did.
#[derive(Debug, Clone, Copy)]
pub struct Rewritten {
    pub before: u64,
    pub after: u64,
    pub entries: u64,
    pub millis: u64,
}

fn rewrite_path(path: &Path) -> PathBuf {
    path.with_extension("aof.rewrite")
}

/// Removes what a rewrite interrupted by a crash left (the old log is whole).
pub(super) fn remove_leftover(path: &Path) {
    let _ = std::fs::remove_file(rewrite_path(path));
}

impl Log {
    /// Starts a rewrite on a thread of its own if the file is at least `min` bytes and at
    /// least twice `live` (what the entries the tables hold take in a log); returns whether
    /// one started. Cheap enough to ask after every append.
    pub fn compact_if_grown(&self, live: u64, min: u64) -> bool {
        let c = &self.inner.compaction;
        let len = self.file_len();
        if len < min.max(live.saturating_mul(2)) || len < c.not_before.load(Ordering::Relaxed) {
            return false;
        }
        if c.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        let log = self.clone();
        let spawned = std::thread::Builder::new().name("aof-rewrite".into()).spawn(move || {
            lower_priority();
            match rewrite(&log) {
                Ok(done) => {
                    log.inner.compaction.done.fetch_add(1, Ordering::Relaxed);
                    info!(path = %log.path().display(), ?done, "log compacted");
                }
                Err(e) => {
                    let retry = log.file_len().saturating_add(min);
                    log.inner.compaction.not_before.store(retry, Ordering::Relaxed);
                    warn!(error = %e, retry_at_bytes = retry, "log compaction failed; the log goes on as it was");
                }
            }
            log.inner.compaction.running.store(false, Ordering::Release);
        });
        if spawned.is_err() {
            c.running.store(false, Ordering::Release);
        }
        spawned.is_ok()
    }

    /// Rewrites done since the log was opened.
    pub fn compactions(&self) -> u64 {
        self.inner.compaction.done.load(Ordering::Relaxed)
    }

    /// Whether a rewrite runs now.
    pub fn compacting(&self) -> bool {
        self.inner.compaction.running.load(Ordering::Acquire)
    }

    /// Rewrites the log now, on this thread (unit tests: nothing else may rewrite it then).
    #[cfg(test)]
    pub(super) fn compact(&self) -> Result<Rewritten, LogError> {
        rewrite(self)
    }
}

/// The rewrite runs at a lower priority than the server's threads: it is background work.
fn lower_priority() {
    // SAFETY: setpriority(2) on this thread's own id (on Linux a thread has its own nice).
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 10);
    }
}

fn rewrite(log: &Log) -> Result<Rewritten, LogError> {
    let began = Instant::now();
    let inner = &*log.inner;
    let path = &inner.path;
    let old = File::open(path).map_err(io(path, "opening for a rewrite"))?;
    let from = lock(&inner.appender).len;
    let tmp = rewrite_path(path);
    let written = live_entries(inner, &old, from).and_then(|tables| {
        let file = File::create(&tmp).map_err(io(&tmp, "creating"))?;
        let (len, entries) = write_entries(&tmp, &file, inner, tables)?;
        let after = copy_tail(log, &old, &file, &tmp, from, len)?;
        Ok((after, entries))
    });
    let (after, entries) = written.inspect_err(|_| remove_leftover(path))?;
    let millis = began.elapsed().as_millis() as u64;
    Ok(Rewritten { before: from, after, entries, millis })
}

/// The entries of both tables as the first `len` bytes of the log leave them.
fn live_entries(inner: &Inner, old: &File, len: u64) -> Result<[Entries; 2], LogError> {
    let path = &inner.path;
    let mut bytes = vec![0; len as usize];
    old.read_exact_at(&mut bytes, 0).map_err(io(path, "reading for a rewrite"))?;
    let mut tables: [Entries; 2] = Default::default();
    load::parse(path, &bytes, inner.id, inner.cluster, |table, change| {
        let entries = &mut tables[match table {
            TableKind::Primary => 0,
            TableKind::Secondary => 1,
        }];
        match change {
            Change::Put { key, value } => {
                entries.insert(key, value);
            }
            Change::Del { key } => {
                entries.remove(&key);
            }
            Change::Clear => entries.clear(),
        }
    })?;
    Ok(tables)
}

type Entries = HashMap<Vec<u8>, Vec<u8>>;

/// Writes the header and one put per entry to `file`, synced; returns its length and the
/// count of entries.
fn write_entries(
    tmp: &Path,
    file: &File,
    inner: &Inner,
    tables: [Entries; 2],
) -> Result<(u64, u64), LogError> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let header = format::header(inner.id, inner.cluster);
    let mut len = header.len() as u64;
    out.write_all(&header).map_err(io(tmp, "writing"))?;
    let mut buf = Vec::new();
    let (mut entries, mut synced) = (0, 0);
    for (table, kind) in tables.into_iter().zip([TableKind::Primary, TableKind::Secondary]) {
        for (key, value) in table {
            buf.clear();
            format::encode_op(&mut buf, kind, &Op::Put { key, value });
            out.write_all(&buf).map_err(io(tmp, "writing"))?;
            len += buf.len() as u64;
            entries += 1;
            if len - synced >= INCREMENTAL_SYNC {
                out.flush().map_err(io(tmp, "writing"))?;
                out.get_ref().sync_data().map_err(io(tmp, "syncing"))?;
                synced = len;
            }
        }
    }
    out.flush().map_err(io(tmp, "writing"))?;
    file.sync_data().map_err(io(tmp, "syncing"))?;
    Ok((len, entries))
}

/// Copies what was appended to the old file from `from` on, in rounds without the lock
/// until little is left; then the last piece under the lock, and the new file takes the
/// old one's place. Returns the new file's length.
fn copy_tail(
    log: &Log,
    old: &File,
    new: &File,
    tmp: &Path,
    mut from: u64,
    mut len: u64,
) -> Result<u64, LogError> {
    let inner = &*log.inner;
    // Opened before the rename, so that no failure after it can leave the name pointing at
    // a file that no one appends to.
    let appendable = OpenOptions::new().append(true).open(tmp).map_err(io(tmp, "opening"))?;
    loop {
        let appender = lock(&inner.appender);
        let end = appender.len;
        if end - from <= LAST_PIECE {
            copy(old, new, tmp, from, end, len)?;
            len += end - from;
            new.sync_data().map_err(io(tmp, "syncing"))?;
            std::fs::rename(tmp, &inner.path).map_err(io(&inner.path, "renaming over"))?;
            take_place(log, appender, appendable, len);
            return Ok(len);
        }
        drop(appender);
        copy(old, new, tmp, from, end, len)?;
        len += end - from;
        new.sync_data().map_err(io(tmp, "syncing"))?;
        from = end;
    }
}

/// The new file (renamed over, holding every record) becomes the log's: appends and syncs
/// go to it, tickets go on where they were.
fn take_place(log: &Log, mut appender: MutexGuard<'_, Appender>, file: File, len: u64) {
    let inner = &*log.inner;
    let end = appender.len + appender.shift;
    appender.shift = end - len;
    appender.len = len;
    appender.file = Arc::new(file);
    inner.file_len.store(len, Ordering::Relaxed);
    lock(&inner.sync.state).file = appender.file.clone();
    // The rename is on disk only once the directory is: until then a crash may bring the old
    // file back, without what is appended to the new one from now on.
    if let Err(e) = sync_dir(&inner.path) {
        log.fail(format!("syncing the directory after a rewrite failed: {e}"));
        return;
    }
    // Everything written so far is in the new file, which is on disk.
    inner.sync.synced.send_modify(|s| s.upto = s.upto.max(end));
}

/// Copies bytes `from..to` of `old` to `new` at offset `at`.
fn copy(old: &File, new: &File, tmp: &Path, from: u64, to: u64, at: u64) -> Result<(), LogError> {
    let mut buf = vec![0; (to - from).min(4 << 20) as usize];
    let (mut from, mut at) = (from, at);
    while from < to {
        let n = (to - from).min(buf.len() as u64) as usize;
        old.read_exact_at(&mut buf[..n], from).map_err(io(tmp, "reading the old log's tail"))?;
        new.write_all_at(&buf[..n], at).map_err(io(tmp, "writing"))?;
        from += n as u64;
        at += n as u64;
    }
    Ok(())
}
