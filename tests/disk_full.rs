//! A full disk under the servers' logs (a small tmpfs as the dump directory; needs root to
//! mount it, and says so and passes otherwise): a write the owner's log cannot take fails at
//! once with `not stored: server N cannot write its log: No space left on device`, nothing
//! is acknowledged that is not on disk, no process crashes, and once there is room again
//! writes succeed; every acknowledged write is read back, after a crash too.

mod support;

use std::path::Path;
use std::time::Duration;

use ftkv::client::{Client, OpError};
use support::cluster::Cluster;

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status();
        mounted.is_ok_and(|s| s.success()).then_some(Tmpfs(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_and_they_succeed_again_once_there_is_room() {
    let Some(disk) = Tmpfs::mount("4m") else {
        println!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let dumps = disk.path().to_str().unwrap().to_string();
    let mut cluster = Cluster::start_with(3, &["--dump-dir", &dumps]);
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![7u8; 3 << 20]).unwrap();

    let mut client = Client::new(cluster.coord_addr(), Duration::from_secs(3));
    let value = vec![b'v'; 8 * 1024];
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        let key = format!("full-{i}").into_bytes();
        match client.put(&key, &value).await {
            Ok(()) => acknowledged.push(key),
            Err(OpError::NotStored(why)) => {
                refused = Some(why);
                break;
            }
            // The copy's log full: the owner keeps it until there is room (never a false
            // success); try the next key, whose owner may be the one out of room.
            Err(OpError::Unknown(_)) => {}
            Err(other) => panic!("write {i}: {other}"),
        }
    }
    let why = refused.expect("a write was refused once the disk was full");
    assert!(why.starts_with("server ") && why.contains("cannot write its log"), "{why}");
    assert!(why.contains("No space left on device"), "{why}");
    let shown = OpError::NotStored(why.clone()).to_string();
    assert!(shown.starts_with("not stored: server "), "{shown}");
    assert!(!acknowledged.is_empty(), "writes were stored before the disk was full");
    let pids = cluster.server_pids();
    assert_eq!(pids.len(), 3, "no server crashed");

    std::fs::remove_file(&filler).unwrap();
    let key = b"after-room".to_vec();
    client.put(&key, &value).await.expect("a write once there is room");
    acknowledged.push(key);
    for key in &acknowledged {
        assert_eq!(client.get(key).await.unwrap().as_deref(), Some(&value[..]));
    }

    // Every acknowledged write is on disk: a crash of every process loses none of them.
    cluster.crash();
    tokio::task::block_in_place(|| cluster.restart_coord(&["--dump-dir", &dumps]));
    let mut client = Client::new(cluster.coord_addr(), Duration::from_secs(10));
    for key in &acknowledged {
        assert_eq!(client.get(key).await.unwrap().as_deref(), Some(&value[..]));
    }
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
}
