//! A server whose coordinator was killed (kill -9, `--orphan-timeout 1`) writes its dumps on
//! its own, and retries every second until both are written. When only one of its two dumps
//! fails, the one it did write is its own, not "a newer start's": it keeps retrying the other.
//! (Before, it took its own fresh primary for a newer start's and exited without its
//! secondary dump.)

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use ftkv::lines;
use ftkv::routing::{primary_of, slot_of};
use support::cluster::{Cluster, alive, kill, read_dump, wait_until};

const N: u32 = 3;

/// Writes `count` keys owned by each server in `owners`, each with a value of `value_len`
/// bytes; returns what was acknowledged.
async fn write_keys(
    cluster: &Cluster,
    owners: &[u32],
    count: usize,
    value_len: usize,
) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut client = cluster.client();
    let mut acked = HashMap::new();
    for &owner in owners {
        let keys = (0..).map(|i| format!("key-{i}").into_bytes());
        for key in keys.filter(|key| slot_of(key, N) == owner).take(count) {
            let value = vec![b'a' + (key.len() % 26) as u8; value_len];
            client.put(&key, &value).await.expect("put");
            acked.insert(key, value);
        }
    }
    acked
}

/// Whether server `id`'s log has `line`.
fn logged(cluster: &Cluster, id: u32, line: &str) -> bool {
    let log = std::fs::read_to_string(cluster.path(&format!("server_{id}.log")));
    log.is_ok_and(|log| log.contains(line))
}

/// Kills the coordinator (kill -9), waits until each of `failing` logged a failed dump, and
/// shows that server 0 keeps retrying (still running 2 s later: the old code exited 1 s
/// after its first failure).
fn kill_coord_and_see_server_0_retry(cluster: &mut Cluster, failing: &[u32]) {
    kill(cluster.coord.id(), "KILL");
    cluster.wait_coord(Duration::from_secs(5)).expect("coordinator killed");
    let failed = || failing.iter().all(|&id| logged(cluster, id, lines::CANNOT_WRITE_DUMPS));
    assert!(wait_until(Duration::from_secs(10), failed), "no dump failed");
    // Showing that something does not happen: server 0 does not give up, through at least
    // one retry (every second).
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(cluster.pids[0]), "server 0 exited without its secondary dump");
}

/// Every server exits, each with its two dumps in `dir` holding exactly the acknowledged
/// keys it owns (primary) and those of the server before it (secondary).
fn assert_every_key_in_both_dumps(
    cluster: &Cluster,
    dir: &Path,
    acked: &HashMap<Vec<u8>, Vec<u8>>,
) {
    let pids = cluster.pids.clone();
    assert!(wait_until(Duration::from_secs(5), || pids.iter().all(|&pid| !alive(pid))), "running");
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|name| name.ends_with(".tmp")), "a partial dump left: {names:?}");
    for id in 0..N {
        assert!(logged(cluster, id, lines::DUMPS_WRITTEN), "server {id}");
        assert!(!logged(cluster, id, lines::NEWER_DUMPS), "server {id} saw a newer start");
        let of = |owner: u32| -> HashMap<Vec<u8>, Vec<u8>> {
            acked
                .iter()
                .filter(|(k, _)| slot_of(k, N) == owner)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let primary = read_dump(&dir.join(format!("server_{id}.primary")));
        assert!(primary == of(id), "server {id}: primary dump differs from what was acknowledged");
        let secondary = read_dump(&dir.join(format!("server_{id}.secondary")));
        let prev = primary_of(id, N);
        assert!(secondary == of(prev), "server {id}: secondary dump lacks server {prev}'s keys");
    }
}

/// `server_0.secondary` is a directory when the coordinator is killed, so server 0 writes its
/// primary dump but not its secondary; once the directory is removed, it writes that one
/// too, then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_retries_its_secondary_dump_after_its_primary_was_written() {
    let mut cluster = Cluster::start_with(N as usize, &["--orphan-timeout", "1"]);
    let acked = write_keys(&cluster, &[0, 1, 2], 100, 16).await;
    let blocked = cluster.path("server_0.secondary");
    std::fs::create_dir(&blocked).unwrap();
    tokio::task::block_in_place(|| kill_coord_and_see_server_0_retry(&mut cluster, &[0]));
    assert!(!logged(&cluster, 1, lines::CANNOT_WRITE_DUMPS), "only server 0 failed");
    std::fs::remove_dir(&blocked).unwrap();
    let dir = cluster.dir.path().to_path_buf();
    tokio::task::block_in_place(|| assert_every_key_in_both_dumps(&cluster, &dir, &acked));
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount");
        assert!(status.success(), "mount -t tmpfs failed");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// A full disk (a tmpfs filled to its last MiB): server 0's primary dump (small) fits, its
/// secondary (server 2's keys, 1.5 MiB) does not, nor does server 2's primary. Once the
/// filler is deleted, every key is in both copies. Needs root (mount); skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_freed_later_gets_every_key_in_both_dumps() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    // Room for the servers' logs (the 64 KiB values are in two of them) and the dumps.
    let tmpfs = Tmpfs::mount("16m");
    let dumps = tmpfs.0.path().to_path_buf();
    let dump_dir = dumps.to_str().unwrap();
    let mut cluster =
        Cluster::start_with(N as usize, &["--orphan-timeout", "1", "--dump-dir", dump_dir]);
    let mut acked = write_keys(&cluster, &[0, 1], 50, 100).await;
    acked.extend(write_keys(&cluster, &[2], 24, 64 * 1024).await);
    // About 1 MiB left: room for the small dumps, not for a big one.
    let filler = dumps.join("filler");
    let free = nix::sys::statvfs::statvfs(&dumps).unwrap();
    let free = free.blocks_available() as usize * free.fragment_size() as usize;
    std::fs::write(&filler, vec![0u8; free - (1 << 20)]).unwrap();
    tokio::task::block_in_place(|| kill_coord_and_see_server_0_retry(&mut cluster, &[0, 2]));
    std::fs::remove_file(&filler).unwrap();
    tokio::task::block_in_place(|| assert_every_key_in_both_dumps(&cluster, &dumps, &acked));
    drop(cluster);
}
