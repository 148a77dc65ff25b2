//! A power cut: the servers' logs and the coordinator's state on a file system that forgets
//! whatever was not synced when it is killed (`tests/support/crashfs.py`, FUSE), every process
//! killed with it. `kill -9` alone leaves the kernel's page cache, which a power cut loses: only
//! this shows that `--fsync always` syncs everything it acknowledges, and how much `everysec`
//! may lose. Needs root and Debian's python3-fusepy (scripts/test-deps.sh); skips otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ftkv::client::Client;
use support::cluster::{Cluster, wait_until};

const CRASHFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/crashfs.py");
const WRITERS: usize = 8;

/// The crash file system mounted at `mount`, keeping what is synced in `backing`.
struct CrashFs {
    process: Child,
    mount: PathBuf,
}

fn mounted(mount: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|l| l.split(' ').nth(1) == Some(mount.to_str().unwrap()))
}

impl CrashFs {
    /// `None` (the test skips) without root or without python3-fusepy.
    fn mount(backing: &Path, mount: &Path) -> Option<CrashFs> {
        let usable = unsafe { libc::geteuid() } == 0
            && Command::new("/usr/bin/python3")
                .args(["-c", "import fusepy"])
                .status()
                .is_ok_and(|s| s.success());
        if !usable {
            println!("skipped: needs root and python3-fusepy (scripts/test-deps.sh)");
            return None;
        }
        let process = Command::new("/usr/bin/python3")
            .arg(CRASHFS)
            .args([backing, mount])
            .spawn()
            .expect("crashfs.py");
        let fs = CrashFs { process, mount: mount.to_path_buf() };
        assert!(wait_until(Duration::from_secs(10), || mounted(mount)), "crashfs never mounted");
        Some(fs)
    }

    /// The power goes: what was not synced is gone.
    fn cut(mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        assert!(!mounted(&self.mount), "still mounted");
    }
}

impl Drop for CrashFs {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Per writer (its own key), the acknowledged writes: (sequence number, when acknowledged).
type Acks = Arc<Mutex<Vec<Vec<(u64, Instant)>>>>;

/// `WRITERS` clients, each writing its own key with sequence numbers 1, 2, 3... one at a
/// time, recording when each was acknowledged, until aborted.
fn start_writers(cluster: &Cluster) -> (Acks, Vec<tokio::task::JoinHandle<()>>) {
    let acks: Acks = Arc::new(Mutex::new(vec![Vec::new(); WRITERS]));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (addr, acks) = (cluster.coord_addr(), acks.clone());
        writers.push(tokio::spawn(async move {
            let mut client = Client::new(addr, Duration::from_secs(2));
            for seq in 1.. {
                let value = seq.to_string();
                if client.put(format!("writer{w}").as_bytes(), value.as_bytes()).await.is_ok() {
                    acks.lock().unwrap()[w].push((seq, Instant::now()));
                }
            }
        }));
    }
    (acks, writers)
}

/// Writes under way for `run`, then a power cut: every process killed, the file system with
/// them; then the same `coord` on what was synced. Returns, per writer, the last sequence
/// number acknowledged at least `margin` before the cut, the last one acknowledged at all,
/// and the one read back after the restart.
async fn cut_under_load(policy: &str, run: Duration, margin: Duration) -> Vec<(u64, u64, u64)> {
    let (backing, mount) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let Some(fs) = CrashFs::mount(backing.path(), mount.path()) else { return Vec::new() };
    let dir = mount.path().to_str().unwrap().to_string();
    let args = ["--fsync", policy, "--dump-dir", &dir, "--state-dir", &dir];
    let mut cluster = tokio::task::block_in_place(|| Cluster::start_with(3, &args));
    let (acks, writers) = start_writers(&cluster);
    let began = Instant::now();
    let enough = || acks.lock().unwrap().iter().all(|a| a.len() >= 20);
    while began.elapsed() < run || !enough() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Stopped where they are: a write under way must not land after the restart.
    for writer in writers {
        writer.abort();
    }
    let cut_at = Instant::now();
    tokio::task::block_in_place(|| {
        cluster.crash();
        fs.cut();
    });
    let acked: Vec<(u64, u64)> = acks
        .lock()
        .unwrap()
        .iter()
        .map(|a| {
            let last = |before: Instant| a.iter().rfind(|(_, t)| *t < before).map_or(0, |a| a.0);
            (last(cut_at - margin), last(cut_at))
        })
        .collect();

    let _fs = CrashFs::mount(backing.path(), mount.path()).expect("mounted again");
    tokio::task::block_in_place(|| cluster.restart_coord(&args));
    let mut client = cluster.client();
    let mut found = Vec::new();
    for (w, (early, last)) in acked.into_iter().enumerate() {
        let value = client.get(format!("writer{w}").as_bytes()).await.unwrap();
        let read = value.map_or(0, |v| String::from_utf8(v).unwrap().parse().unwrap());
        found.push((early, last, read));
    }
    let said = cluster.coord_log();
    println!("{policy}: (acknowledged {margin:?} before the cut, at the cut, read) {found:?}");
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success(), "{said}");
    found
}

/// `always`: nothing acknowledged is lost, not even what was acknowledged just before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_always_a_power_cut_loses_nothing_acknowledged() {
    let found = cut_under_load("always", Duration::from_secs(1), Duration::ZERO).await;
    for (w, &(_, last, read)) in found.iter().enumerate() {
        assert!(read >= last, "writer{w}: {last} acknowledged, {read} read after the cut");
    }
}

/// `everysec`: what was acknowledged more than the sync interval (1 s, and the sync's own
/// time: 2 s in all) before the cut is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_everysec_a_power_cut_loses_at_most_the_last_second() {
    let margin = Duration::from_secs(2);
    let found = cut_under_load("everysec", Duration::from_secs(5), margin).await;
    for (w, &(early, _, read)) in found.iter().enumerate() {
        assert!(read >= early, "writer{w}: {early} acknowledged 2 s before the cut, {read} read");
        assert!(early > 0 || found.is_empty(), "writer{w} wrote nothing 2 s before the cut");
    }
}

/// `no` (never synced by ftkv): the cut loses acknowledged writes. This shows the file system
/// really forgets what was not synced: the two tests above could fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_a_power_cut_loses_acknowledged_writes() {
    let found = cut_under_load("no", Duration::from_secs(1), Duration::ZERO).await;
    let lost = found.iter().any(|&(_, last, read)| read < last);
    assert!(found.is_empty() || lost, "nothing lost: {found:?}");
}
