//! A crash of every process while a recovery runs. A server is killed, the coordinator
//! starts its replacement (a+) and fills it from the copies (recovery steps 2 to 4), and
//! while that copy is under way the coordinator and every server are killed with `kill -9`;
//! then again right after a recovery completed, when a+ has just become a copy. The same
//! `coord` then starts the servers from their logs: a+ counts as a copy only once what it
//! was sent is in its log, so a crash in the middle of its copy leaves it out (its keys come
//! from its secondary's log, and it is recovered again), and a crash after it leaves it with
//! everything. Nothing acknowledged is lost either time.

mod support;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use ftkv::lines;
use support::cluster::Cluster;
use support::history::{check_all, lost_acknowledged_writes};
use support::load::{Load, final_reads};

/// A client's patience across a crash and a start from the logs.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The server killed first, whose replacement is being filled at the crash.
const VICTIM: u32 = 1;
/// How much of its copy a+ has logged when the crash comes: some of it, far from all (the
/// copy is about 34 MB, below).
const LOGGED_BEFORE_THE_CRASH: u64 = 1 << 20;

/// The recovery step in the coordinator's state file (persisted before it is acted on), if
/// a recovery is under way.
fn recovery_step(cluster: &Cluster) -> Option<String> {
    let text = std::fs::read_to_string(cluster.path("coord.state")).ok()?;
    let state: serde_json::Value = serde_json::from_str(&text).ok()?;
    let step = &state["state"]["recovery"]["step"];
    (!step.is_null()).then(|| step.to_string())
}

/// Waits until the recovery is in its copy and a+ has logged `bytes` of it: its log is a new
/// file (not the dead server's, `before`'s inode) that long. Looks every millisecond: the
/// whole copy takes about 0.4 s here, and the crash must come well before its end.
fn await_copy_under_way(cluster: &Cluster, before: u64, bytes: u64) {
    let log = cluster.path(&format!("server_{VICTIM}.aof"));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let new_log = std::fs::metadata(&log).is_ok_and(|m| m.ino() != before && m.len() >= bytes);
        if new_log && recovery_step(cluster).is_some_and(|step| step.contains("Copy")) {
            return;
        }
        let step = recovery_step(cluster);
        assert!(Instant::now() < deadline, "no copy under way: {step:?}\n{}", cluster.coord_log());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether a start from the logs (the coordinator's log, every start's) said that server
/// `id` loaded its log: `server 1: 68 keys and 70 copies (2048 bytes) from ...`.
fn loaded_its_log(cluster: &Cluster, id: u32) -> bool {
    let said = format!("server {id}: ");
    cluster.coord_log().lines().any(|l| l.contains(&said) && l.contains(" copies ("))
}

fn restart(cluster: &mut Cluster) {
    tokio::task::block_in_place(|| cluster.restart_coord(&[]));
    let restored = cluster.restored.clone().unwrap_or_default();
    assert!(restored.ends_with("from the servers' logs"), "{restored:?}\n{}", cluster.coord_log());
}

/// Big values (so that the copy takes a while) and a load on other keys; server 1 killed,
/// everything killed while its replacement is half filled, started again: server 1 is left
/// down and recovered from its secondary; everything killed again the moment that recovery
/// completed, started again: server 1 loads its log with the others. Every big value and
/// every acknowledged write of the load is back, the histories are linearizable, and the
/// next ctrl+d dumps exactly the final values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_recovery_and_right_after_it_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(3);
    let mut client = cluster.client();
    let value = vec![b'v'; 512 << 10];
    let big = |i: usize| format!("big-{i}").into_bytes();
    for i in 0..100 {
        client.put(&big(i), &value).await.unwrap();
    }
    let load = Load::start(cluster.coord_addr(), 2, 50, TIMEOUT);
    load.under_way().await;

    let log = cluster.path(&format!("server_{VICTIM}.aof"));
    let before = std::fs::metadata(&log).unwrap().ino();
    let epoch = tokio::task::block_in_place(|| cluster.status()["epoch"].as_u64().unwrap());
    support::cluster::kill(cluster.pids[VICTIM as usize], "KILL");
    tokio::task::block_in_place(|| {
        await_copy_under_way(&cluster, before, LOGGED_BEFORE_THE_CRASH);
        cluster.crash();
    });
    let step = recovery_step(&cluster).unwrap_or_default();
    assert!(step.contains("Copy"), "the crash came during the copy: {step}");
    let half_filled = std::fs::metadata(&log).unwrap().len();
    restart(&mut cluster);
    assert!(!loaded_its_log(&cluster, VICTIM), "a+ not loaded: {}", cluster.coord_log());
    println!("crashed with a+'s log at {half_filled} bytes");

    tokio::task::block_in_place(|| cluster.wait_recovered(epoch, TIMEOUT));
    assert_eq!(recovery_step(&cluster), None, "recovered");
    tokio::task::block_in_place(|| cluster.crash());
    restart(&mut cluster);
    assert!(loaded_its_log(&cluster, VICTIM), "a+ loaded its log: {}", cluster.coord_log());
    load.answered_since(Some(Instant::now()), TIMEOUT).await;

    let (recorder, keys) = load.stop().await;
    let mut finals = final_reads(cluster.coord_addr(), &recorder, &keys).await;
    let events = recorder.events();
    assert_eq!(lost_acknowledged_writes(&events, &finals), Vec::<Vec<u8>>::new());
    check_all(&events).unwrap_or_else(|e| panic!("not linearizable: {e}"));
    let mut client = cluster.client();
    for i in 0..100 {
        assert_eq!(client.get(&big(i)).await.unwrap().as_ref(), Some(&value), "big-{i}");
        finals.insert(big(i), Some(value.clone()));
    }
    let stopped = tokio::task::block_in_place(|| cluster.ctrl_d_within(Duration::from_secs(60)));
    assert!(stopped.success());
    cluster.assert_dumps_match(&finals);
    assert!(!cluster.coord_log().contains(lines::TWO_FAULTS));
}
