//! A table of keys and values: the primary or the secondary copy held by a server.
//!
//! A std `Mutex` is enough: it is held only for a map operation, never across an `.await`.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::aof::Change;
use crate::protocol::{DumpFile, Op};

/// What applying a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Stored,
    Deleted { existed: bool },
}

/// A hash map with a fast, randomly seeded hasher (SipHash took 9% of a server's time).
/// Keys and values are boxed slices: 16 bytes each in the map instead of a `Vec`'s 24.
type Map = std::collections::HashMap<Box<[u8]>, Box<[u8]>, ahash::RandomState>;

/// One table (keys stored as their real bytes).
#[derive(Default)]
pub struct Table {
    map: Mutex<Map>,
    /// Keys, and bytes of keys and values, held: changed under the map's lock, read without
    /// it (the heartbeat's counters must not wait behind a whole-table copy or load).
    keys: AtomicU64,
    bytes: AtomicU64,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        // A panic while holding the lock cannot leave the map half-updated (each operation
        // is one HashMap call), so a poisoned lock is still a consistent map.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `f` with the value of `key`, under the lock: answers are encoded straight
    /// from the table, without a copy of the value in between.
    pub fn with_value<R>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(self.lock().get(key).map(|v| &v[..]))
    }

    /// Applies a PUT or DEL; a GET changes nothing.
    pub fn apply(&self, op: Op) -> Applied {
        match op {
            Op::Put { key, value } => {
                self.insert(&mut self.lock(), key, value);
                Applied::Stored
            }
            Op::Del { key } => Applied::Deleted { existed: self.remove(&mut self.lock(), &key) },
            Op::Get { .. } => Applied::Stored,
        }
    }

    fn insert(&self, map: &mut Map, key: Vec<u8>, value: Vec<u8>) {
        let (klen, vlen) = (key.len() as u64, value.len() as u64);
        match map.insert(key.into_boxed_slice(), value.into_boxed_slice()) {
            Some(old) => self.bytes.fetch_sub(old.len() as u64, Ordering::Relaxed),
            None => {
                self.keys.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(klen, Ordering::Relaxed)
            }
        };
        self.bytes.fetch_add(vlen, Ordering::Relaxed);
    }

    fn remove(&self, map: &mut Map, key: &[u8]) -> bool {
        let Some((k, v)) = map.remove_entry(key) else { return false };
        self.keys.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub((k.len() + v.len()) as u64, Ordering::Relaxed);
        true
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Applies a batch under one lock acquisition.
    pub fn apply_all(&self, ops: impl IntoIterator<Item = Op>) {
        let mut map = self.lock();
        for op in ops {
            match op {
                Op::Put { key, value } => self.insert(&mut map, key, value),
                Op::Del { key } => {
                    self.remove(&mut map, &key);
                }
                Op::Get { .. } => {}
            }
        }
    }

    /// Inserts `entries` under one lock acquisition (a restore's load).
    pub fn extend(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) {
        let mut map = self.lock();
        map.reserve(entries.len());
        for (key, value) in entries {
            self.insert(&mut map, key, value);
        }
    }

    /// Applies a change read back from the log (a start after a crash).
    pub fn apply_loaded(&self, change: Change) {
        match change {
            Change::Put { key, value } => self.insert(&mut self.lock(), key, value),
            Change::Del { key } => {
                self.remove(&mut self.lock(), &key);
            }
            Change::Clear => self.clear(),
        }
    }

    /// Empties the table.
    pub fn clear(&self) {
        let mut map = self.lock();
        map.clear();
        self.keys.store(0, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
    }

    /// A copy of every entry (recovery: the start of a new copy's stream).
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.lock().iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    /// How many keys it holds, without the lock.
    pub fn len(&self) -> usize {
        self.keys.load(Ordering::Relaxed) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes every entry as a dump file ([`crate::dumpfile::write`]: sorted client lines,
    /// with the file's size, count and MD5 for the manifest, and its metadata).
    pub fn dump(&self, path: &Path) -> std::io::Result<(DumpFile, std::fs::Metadata)> {
        crate::dumpfile::write(path, &mut self.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dump that fails at its last step leaves no temporary file and does not touch what
    /// is at its path (here a directory, which the rename cannot replace).
    #[test]
    fn a_failed_dump_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let table = Table::default();
        table.apply(Op::Put { key: b"k".to_vec(), value: b"v".to_vec() });
        let path = dir.path().join("server_0.primary");
        std::fs::create_dir(&path).unwrap();
        assert!(table.dump(&path).is_err());
        assert!(path.is_dir());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "only the directory: {names:?}");
        std::fs::remove_dir(&path).unwrap();
        let (file, _) = table.dump(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "P \"k\" \"v\"\n");
        assert_eq!((file.name.as_str(), file.bytes, file.keys), ("server_0.primary", 10, 1));
        // printf 'P "k" "v"\n' | md5sum
        assert_eq!(file.md5, "cb2b86ef34d96136557be67b5709a944");
    }

    /// Keys and bytes follow puts, overwrites, deletes and a restore's load (counted
    /// without the lock, so they must be kept by every change).
    #[test]
    fn keys_and_bytes_follow_puts_overwrites_deletes_and_loads() {
        let table = Table::default();
        let put = |k: &str, v: &str| Op::Put { key: k.into(), value: v.into() };
        table.apply(put("key", "value"));
        assert_eq!((table.len(), table.bytes()), (1, 8));
        table.apply_all([put("key", "v"), put("k2", "")]);
        assert_eq!((table.len(), table.bytes()), (2, 6));
        table.apply(Op::Del { key: b"key".to_vec() });
        table.apply(Op::Del { key: b"nothing".to_vec() });
        assert_eq!((table.len(), table.bytes()), (1, 2));
        table.extend(vec![(b"a".to_vec(), b"bc".to_vec()), (b"k2".to_vec(), b"x".to_vec())]);
        assert_eq!((table.len(), table.bytes()), (2, 6));
        table.apply(Op::Del { key: b"a".to_vec() });
        assert_eq!((table.len(), table.bytes()), (1, 3));
    }
}
