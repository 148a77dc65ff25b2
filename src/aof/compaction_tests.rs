//! Compaction against real files: under concurrent writes, interrupted, triggered, and on a
//! full disk.

use std::collections::HashMap;
use std::path::Path;

use super::tests::{CLUSTER, Tmpfs, del, load_all, put};
use super::*;
use crate::protocol::{Op, TableKind};

type Model = HashMap<(u8, Vec<u8>), Vec<u8>>;

/// The state a log's changes leave, read back from the file.
fn state_of(path: &Path) -> Model {
    let mut model = Model::new();
    for (table, change) in load_all(path).unwrap().0 {
        let t = table as u8;
        match change {
            Change::Put { key, value } => {
                model.insert((t, key), value);
            }
            Change::Del { key } => {
                model.remove(&(t, key));
            }
            Change::Clear => model.retain(|(of, _), _| *of != t),
        }
    }
    model
}

/// What `ops` do to `model`.
fn apply(model: &mut Model, table: TableKind, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put { key, value } => {
                model.insert((table as u8, key.clone()), value.clone());
            }
            Op::Del { key } => {
                model.remove(&(table as u8, key.clone()));
            }
            Op::Get { .. } => {}
        }
    }
}

/// A log of many overwrites compacted twice while eight writers go on writing and waiting
/// for their writes to be on disk: every write's ticket resolves (across the file's
/// change), the file shrinks, and it reads back exactly what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_under_concurrent_writes_keeps_every_change_and_shrinks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server_1.aof");
    let log = Log::create(&path, 1, CLUSTER, FsyncPolicy::Always).unwrap();
    let mut expected = Model::new();
    for round in 0..40 {
        let ops: Vec<Op> = (0..200).map(|k| put(&format!("old{k}"), &format!("{round}"))).collect();
        log.append(TableKind::Primary, &ops).unwrap();
        apply(&mut expected, TableKind::Primary, &ops);
    }
    let cleared = log.append_clear(TableKind::Secondary).unwrap();
    log.durable(cleared).await.unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut mine = Model::new();
                for i in 0..300 {
                    let table = if i % 3 == 0 { TableKind::Secondary } else { TableKind::Primary };
                    let key = format!("w{w}-{}", i % 40);
                    let ops = if i % 7 == 0 { [del(&key)] } else { [put(&key, &format!("{i}"))] };
                    let ticket = log.append(table, &ops).unwrap();
                    log.durable(ticket).await.unwrap();
                    apply(&mut mine, table, &ops);
                }
                mine
            })
        })
        .collect();
    for round in 0..2 {
        let compacting = log.clone();
        let done = tokio::task::spawn_blocking(move || compacting.compact()).await.unwrap();
        let done = done.unwrap();
        // The second one finds little to take out: the writers' keys are few.
        assert!(round > 0 || done.after < done.before / 4, "{done:?}");
    }
    for writer in writers {
        expected.extend(writer.await.unwrap());
    }
    assert!(std::fs::metadata(&path).unwrap().len() < before, "the file shrank");
    let last = log.append(TableKind::Primary, &[put("last", "one")]).unwrap();
    log.durable(last).await.unwrap();
    apply(&mut expected, TableKind::Primary, &[put("last", "one")]);
    drop(log);
    assert!(!path.with_extension("aof.rewrite").exists());
    assert_eq!(state_of(&path), expected);
}

/// A crash in the middle of a rewrite leaves its new file half written beside the old log:
/// the old log loads whole, and the leftover is removed.
#[test]
fn an_interrupted_compaction_leaves_the_old_log_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server_1.aof");
    let log = Log::create(&path, 1, CLUSTER, FsyncPolicy::No).unwrap();
    log.append(TableKind::Primary, &[put("a", "1"), put("a", "2"), put("b", "3")]).unwrap();
    drop(log);
    let leftover = path.with_extension("aof.rewrite");
    std::fs::write(&leftover, b"FTKVAOF1 half a rewrite").unwrap();
    let expected = state_of(&path);
    let (_log, loaded) = Log::load(&path, 1, CLUSTER, FsyncPolicy::No, |_, _| {}).unwrap();
    assert_eq!((loaded.records, loaded.torn), (3, None));
    assert!(!leftover.exists(), "the leftover is removed");
    assert_eq!(state_of(&path), expected);
}

/// A compaction starts only once the file is at least the minimum and twice the live data.
#[test]
fn a_compaction_starts_at_twice_the_live_data_and_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server_1.aof");
    let log = Log::create(&path, 1, CLUSTER, FsyncPolicy::No).unwrap();
    for i in 0..100 {
        log.append(TableKind::Primary, &[put("k", &i.to_string())]).unwrap();
    }
    let len = log.file_len();
    assert!(!log.compact_if_grown(len / 2 + 1, 0), "under twice the live data");
    assert!(!log.compact_if_grown(0, len + 1), "under the minimum");
    assert!(log.compact_if_grown(len / 2, len));
    while log.compacting() {
        std::thread::yield_now();
    }
    assert_eq!(log.compactions(), 1);
    assert!(log.file_len() < len / 10, "{} bytes after, {len} before", log.file_len());
    let value = state_of(&path).remove(&(TableKind::Primary as u8, b"k".to_vec()));
    assert_eq!(value, Some(b"99".to_vec()));
}

/// No room for the new file (a small tmpfs): the compaction fails, removes what it wrote,
/// and the log goes on as it was, losing nothing.
#[tokio::test]
async fn a_compaction_without_room_fails_and_the_log_goes_on() {
    let Some(tmpfs) = Tmpfs::mount("1m") else { return };
    let path = tmpfs.path().join("server_1.aof");
    let log = Log::create(&path, 1, CLUSTER, FsyncPolicy::Always).unwrap();
    let value = "v".repeat(1000);
    for i in 0..400 {
        log.append(TableKind::Primary, &[put(&format!("k{i}"), &value)]).unwrap();
    }
    let free = 1024 * 1024 - std::fs::metadata(&path).unwrap().len() as usize;
    std::fs::write(tmpfs.path().join("filler"), vec![1u8; free - 100 * 1024]).unwrap();
    let refused = log.compact().unwrap_err().to_string();
    assert!(refused.contains("No space left on device"), "{refused}");
    assert!(!path.with_extension("aof.rewrite").exists(), "what it wrote is removed");
    let ticket = log.append(TableKind::Primary, &[put("after", "failed compaction")]).unwrap();
    log.durable(ticket).await.unwrap();
    drop(log);
    let state = state_of(&path);
    assert_eq!(state.len(), 401);
}
