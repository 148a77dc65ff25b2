//! The coordinator dies and is not back within the orphan timeout: its servers write their
//! dumps alone, each with its own manifest, and exit; the next `coord` in the same
//! directory finds them all gone and restores what they wrote (checked against the state
//! the dead coordinator left), instead of refusing dumps without a `dumps.manifest`. Also:
//! a coordinator killed during a restore; the servers it was filling write nothing over
//! the set, and the next start restores it again.

mod support;

use std::time::Duration;

use ftkv::lines;
use ftkv::manifest::MANIFEST;
use support::cluster::{Cluster, alive, files_in, wait_until};
use support::history::{check_all, lost_acknowledged_writes};
use support::load::{Load, final_reads};
use support::set::{VALUE, key, write_set};

/// Orphan timeout (the fixture's, 0.5 s) plus the time to write small dumps, with margin.
const SERVERS_GONE: Duration = Duration::from_secs(10);

fn restart(cluster: &mut Cluster, extra: &[&str]) {
    tokio::task::block_in_place(|| cluster.restart_coord(extra));
}

/// Kills the coordinator (and `also`, the pids of some servers), then waits until every
/// server of the cluster has exited.
fn kill_and_wait_for_servers(cluster: &mut Cluster, also: &[u32]) {
    cluster.kill_coord();
    for &pid in also {
        support::cluster::kill(pid, "KILL");
    }
    let pids = cluster.pids.clone();
    let gone = wait_until(SERVERS_GONE, || pids.iter().all(|&pid| !alive(pid)));
    assert!(gone, "servers {pids:?} still running");
}

/// kill -9 of the coordinator under load, not restarted: the servers dump and exit; the
/// next start restores every acknowledged write (the final values, read through a client
/// of the new cluster, hold them), and every key's history, reads after the restore
/// included, is linearizable. The next ctrl+d writes every key in exactly two dumps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_left_alone_dump_and_the_next_start_restores_them() {
    let mut cluster = Cluster::start(3);
    let old_pids = cluster.pids.clone();
    let load = Load::start(cluster.coord_addr(), 4, 100, Duration::from_millis(500));
    load.under_way().await;
    tokio::task::block_in_place(|| kill_and_wait_for_servers(&mut cluster, &[]));
    let (recorder, keys) = load.stop().await;
    for id in 0..3 {
        assert!(cluster.path(&format!("server_{id}.manifest")).exists(), "server {id}");
    }
    assert!(!cluster.path(MANIFEST).exists(), "no orderly stop wrote one");

    restart(&mut cluster, &[]);
    let restored = cluster.restored.clone().expect("restored the servers' dumps");
    assert!(cluster.coord_log().contains(lines::SERVERS_GONE), "{}", cluster.coord_log());
    assert!(cluster.pids.iter().all(|pid| !old_pids.contains(pid)), "new servers");
    let finals = final_reads(cluster.coord_addr(), &recorder, &keys).await;
    let events = recorder.events();
    assert!(finals.values().any(Option::is_some), "the load wrote ({restored})");
    assert_eq!(lost_acknowledged_writes(&events, &finals), Vec::<Vec<u8>>::new());
    check_all(&events).unwrap_or_else(|e| panic!("not linearizable: {e}"));
    for id in 0..3 {
        assert!(!cluster.path(&format!("server_{id}.manifest")).exists(), "consumed");
    }
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
    cluster.assert_dumps_match(&finals);
}

/// The coordinator and server 1 killed: server 1 wrote no dumps, so the set of dumps is
/// not complete, and the log says why its files were not used; every server starts again
/// from its log instead, and every key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_its_coordinator_is_restored_from_its_neighbour() {
    let mut cluster = Cluster::start(3);
    let mut client = cluster.client();
    for i in 0..300 {
        client.put(&key(i), &VALUE).await.unwrap();
    }
    let server_1 = cluster.pids[1];
    tokio::task::block_in_place(|| kill_and_wait_for_servers(&mut cluster, &[server_1]));
    assert!(!cluster.path("server_1.manifest").exists());

    restart(&mut cluster, &[]);
    let restored = cluster.restored.clone().unwrap_or_default();
    assert!(restored.contains("300 keys"), "{restored}");
    assert!(cluster.coord_log().contains("server 1 wrote no dumps of its own"));
    let mut client = cluster.client();
    for i in 0..300 {
        assert_eq!(client.get(&key(i)).await.unwrap().as_deref(), Some(&VALUE[..]), "{i}");
    }
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
}

/// The coordinator and two neighbours killed: the keys of server 0 have no copy left in
/// dumps (its primary, and its secondary on server 1, died with them, and only server 2
/// dumped). Their logs hold them: the next start brings every server back from its log,
/// the keys of both dead servers included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_killed_with_their_coordinator_lose_nothing_their_logs_hold() {
    let mut cluster = Cluster::start(3);
    let mut client = cluster.client();
    for i in 0..300 {
        client.put(&key(i), &VALUE).await.unwrap();
    }
    let killed = [cluster.pids[0], cluster.pids[1]];
    tokio::task::block_in_place(|| kill_and_wait_for_servers(&mut cluster, &killed));
    restart(&mut cluster, &[]);
    let restored = cluster.restored.clone().unwrap_or_default();
    assert!(restored.contains("from the servers' logs"), "{restored}");
    assert!(cluster.coord_log().contains("server 0 wrote no dumps of its own"));
    let mut client = cluster.client();
    for i in 0..300 {
        assert_eq!(client.get(&key(i)).await.unwrap().as_deref(), Some(&VALUE[..]), "{i}");
    }
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
}

/// The coordinator killed in the middle of a restore, twice: first left dead past the
/// orphan timeout (its servers exit without writing over the set), then restarted while
/// its servers still run (the new one kills them). The third start restores the whole
/// set, which was never written over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_during_a_restore_restores_again() {
    const KEYS: usize = 30_000;
    let mut cluster = Cluster::start(3);
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
    write_set(cluster.dir.path(), 3, KEYS);
    let mut set = files_in(cluster.dir.path());
    set.retain(|name, _| {
        name.starts_with("server_") && !name.ends_with(".log") || name == MANIFEST
    });

    for orphan_timeout in ["0.5", "30"] {
        cluster.spawn_coord_again(&["--orphan-timeout", orphan_timeout]);
        cluster.await_line(lines::RESTORING, Duration::from_secs(20));
        cluster.kill_coord();
        let filling = cluster.server_pids();
        assert_eq!(filling.len(), 3, "servers being filled");
        if orphan_timeout == "0.5" {
            let gone = wait_until(SERVERS_GONE, || filling.iter().all(|&pid| !alive(pid)));
            assert!(gone, "servers {filling:?} still running");
            for id in 0..3 {
                let log = std::fs::read_to_string(cluster.path(&format!("server_{id}.log")));
                assert!(log.unwrap().contains(lines::NO_DUMPS_DURING_RESTORE), "server {id}");
            }
        }
        let now = files_in(cluster.dir.path());
        assert!(set.iter().all(|(name, bytes)| now.get(name) == Some(bytes)), "set untouched");
    }
    restart(&mut cluster, &[]);
    assert!(cluster.coord_log().contains(lines::RESTORE_AGAIN));
    let restored = cluster.restored.clone().unwrap_or_default();
    assert!(restored.contains(&format!("{KEYS} keys")), "{restored}");
    let mut client = cluster.client();
    for i in (0..KEYS).step_by(997) {
        assert_eq!(client.get(&key(i)).await.unwrap().as_deref(), Some(&VALUE[..]), "{i}");
    }
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
    let dumped: usize = (0..3).map(|id| cluster.dump(id, "primary").len()).sum();
    assert_eq!(dumped, KEYS);
}
