//! The log against real files: round trips, every torn tail, damage, other clusters, group
//! commit, and a full disk (a small tmpfs, as root).

use std::path::{Path, PathBuf};

use super::*;
use crate::protocol::{Op, TableKind};

pub(super) const CLUSTER: [u8; 16] = [7; 16];

pub(super) fn put(k: &str, v: &str) -> Op {
    Op::Put { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec() }
}

pub(super) fn del(k: &str) -> Op {
    Op::Del { key: k.as_bytes().to_vec() }
}

/// A small tmpfs (as root; `None`, and a line saying the test is skipped, elsewhere),
/// unmounted when dropped.
pub(super) struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    pub(super) fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        if !mounted.is_ok_and(|s| s.success()) {
            println!("skipped: cannot mount a tmpfs here (needs root)");
            return None;
        }
        Some(Tmpfs(dir))
    }

    pub(super) fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

/// Every change a load hands over, in order.
pub(super) fn load_all(path: &Path) -> Result<(Vec<(TableKind, Change)>, Loaded), LogError> {
    let mut seen = Vec::new();
    let (_, loaded) = Log::load(path, 1, CLUSTER, FsyncPolicy::No, |t, c| seen.push((t, c)))?;
    Ok((seen, loaded))
}

/// A log with three records: a put and a delete in the primary, a clear of the secondary.
fn three_records(dir: &Path) -> (PathBuf, Vec<u64>) {
    let path = dir.join("server_1.aof");
    let log = Log::create(&path, 1, CLUSTER, FsyncPolicy::Always).unwrap();
    let mut ends = vec![log.append(TableKind::Primary, &[put("k", "v")]).unwrap()];
    ends.push(log.append(TableKind::Primary, &[del("k")]).unwrap());
    ends.push(log.append_clear(TableKind::Secondary).unwrap());
    (path, ends)
}

#[test]
fn every_kind_of_record_reads_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three_records(dir.path());
    let (seen, loaded) = load_all(&path).unwrap();
    let put = Change::Put { key: b"k".to_vec(), value: b"v".to_vec() };
    let expected = vec![
        (TableKind::Primary, put),
        (TableKind::Primary, Change::Del { key: b"k".to_vec() }),
        (TableKind::Secondary, Change::Clear),
    ];
    assert_eq!(seen, expected);
    assert_eq!((loaded.records, loaded.torn), (3, None));
}

#[test]
fn a_torn_last_record_is_cut_at_every_byte_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ends) = three_records(dir.path());
    let whole = std::fs::read(&path).unwrap();
    let (second_end, last_end) = (ends[1] as usize, ends[2] as usize);
    for cut in second_end + 1..last_end {
        std::fs::write(&path, &whole[..cut]).unwrap();
        let (seen, loaded) = load_all(&path).unwrap();
        assert_eq!(seen.len(), 2, "cut at {cut}");
        assert_eq!(loaded.torn, Some((second_end as u64, (cut - second_end) as u64)));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), second_end as u64, "cut off");
        // Appending after the cut reads back whole.
        let (log, _) = Log::load(&path, 1, CLUSTER, FsyncPolicy::No, |_, _| {}).unwrap();
        log.append(TableKind::Secondary, &[put("a", "b")]).unwrap();
        drop(log);
        assert_eq!(load_all(&path).unwrap().0.len(), 3);
    }
    // The last record's checksum wrong (its last byte flipped): torn too.
    let mut flipped = whole.clone();
    flipped[last_end - 1] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    assert_eq!(load_all(&path).unwrap().1.torn, Some((second_end as u64, 10)));
    // Zeros where the last record should be (a file extended, its bytes never written).
    let mut zeros = whole[..second_end].to_vec();
    zeros.extend([0; 40]);
    std::fs::write(&path, &zeros).unwrap();
    assert_eq!(load_all(&path).unwrap().1.torn, Some((second_end as u64, 40)));
}

#[test]
fn damage_before_the_tail_is_refused_with_the_offset_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, ends) = three_records(dir.path());
    let whole = std::fs::read(&path).unwrap();
    let first = format::HEADER_LEN;
    // A flipped byte in the first record's body.
    let mut flipped = whole.clone();
    flipped[first + 9] ^= 0x40;
    std::fs::write(&path, &flipped).unwrap();
    let refused = load_all(&path).unwrap_err().to_string();
    assert!(refused.contains(&format!("offset {first}")), "{refused}");
    assert!(refused.contains("server_1.aof") && refused.contains("checksum"), "{refused}");
    assert!(refused.contains("move the file aside"), "{refused}");
    assert_eq!(std::fs::read(&path).unwrap(), flipped, "the file is untouched");
    // An impossible length in the second record.
    let mut long = whole.clone();
    let second = ends[0] as usize;
    long[second..second + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&path, &long).unwrap();
    let refused = load_all(&path).unwrap_err().to_string();
    assert!(refused.contains(&format!("offset {second}")), "{refused}");
    assert!(refused.contains("impossible length"), "{refused}");
}

#[test]
fn a_log_of_another_cluster_or_server_or_none_at_all_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = three_records(dir.path());
    let other = Log::load(&path, 1, [8; 16], FsyncPolicy::No, |_, _| {});
    assert!(matches!(other, Err(LogError::OtherCluster { .. })));
    let other = Log::load(&path, 2, CLUSTER, FsyncPolicy::No, |_, _| {});
    assert!(matches!(other, Err(LogError::OtherServer { found: 1, expected: 2, .. })));
    std::fs::write(&path, b"P \"k\" \"v\"\n").unwrap();
    assert!(matches!(load_all(&path), Err(LogError::NotALog { .. })));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(load_all(&path), Err(LogError::Missing { .. })));
}

/// 64 writers at once with `always`: every write durable, in far fewer syncs than writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_their_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server_1.aof");
    let log = Log::create(&path, 1, CLUSTER, FsyncPolicy::Always).unwrap();
    let began = std::time::Instant::now();
    let writers = (0..64).map(|w| {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                let ticket =
                    log.append(TableKind::Primary, &[put(&format!("{w}-{i}"), "v")]).unwrap();
                log.durable(ticket).await.unwrap();
            }
        })
    });
    for writer in writers.collect::<Vec<_>>() {
        writer.await.unwrap();
    }
    let (syncs, records) = log.stats();
    let rate = records as f64 / began.elapsed().as_secs_f64();
    println!("{records} durable appends in {syncs} syncs, {rate:.0} appends/s");
    assert_eq!(records, 3200);
    assert!(syncs < records / 4, "{syncs} syncs for {records} writes");
    drop(log);
    assert_eq!(load_all(&path).unwrap().0.len(), 3200);
}

#[tokio::test]
async fn everysec_and_no_never_wait_for_a_sync() {
    let dir = tempfile::tempdir().unwrap();
    for policy in [FsyncPolicy::EverySec, FsyncPolicy::No] {
        let path = dir.path().join(format!("server_1.{policy}.aof"));
        let log = Log::create(&path, 1, CLUSTER, policy).unwrap();
        let ticket = log.append(TableKind::Primary, &[put("k", "v")]).unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(100), log.durable(ticket));
        waited.await.expect("no wait").unwrap();
    }
    assert_eq!("everysec".parse::<FsyncPolicy>().unwrap(), FsyncPolicy::EverySec);
    assert!("sometimes".parse::<FsyncPolicy>().is_err());
}

/// A tmpfs of 1 MiB filled until a write fails: the write fails with the disk's words and
/// leaves nothing behind, and once room is made writes succeed again; a reload reads back
/// exactly the writes that succeeded.
#[tokio::test]
async fn a_full_disk_fails_the_write_and_room_made_lets_writes_succeed_again() {
    let Some(tmpfs) = Tmpfs::mount("1m") else { return };
    let dir = tmpfs.path();
    let filler = dir.join("filler");
    std::fs::write(&filler, vec![1u8; 600 * 1024]).unwrap();
    let path = dir.join("server_1.aof");
    let log = Log::create(&path, 1, CLUSTER, FsyncPolicy::Always).unwrap();
    let value = "x".repeat(10_000);
    let mut stored = 0;
    let refused = loop {
        match log.append(TableKind::Primary, &[put(&format!("k{stored}"), &value)]) {
            Ok(ticket) => {
                log.durable(ticket).await.unwrap();
                stored += 1;
            }
            Err(e) => break e.to_string(),
        }
    };
    assert!(refused.contains("No space left on device"), "{refused}");
    assert!(stored > 10, "{stored} written before the disk was full");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::remove_file(&filler).unwrap();
    let ticket = log.append(TableKind::Primary, &[put("after", "room")]).unwrap();
    log.durable(ticket).await.unwrap();
    assert!(ticket > len, "written after the partial record was cut");
    drop(log);
    let (seen, loaded) = load_all(&path).unwrap();
    assert_eq!(seen.len(), stored + 1);
    assert_eq!(loaded.torn, None);
}
