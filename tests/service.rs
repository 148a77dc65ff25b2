//! The whole service end to end: real coordinator and servers, real sockets.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ftkv::client::OpError;
use ftkv::lines;
use ftkv::protocol::{MAX_KEY_LEN, MAX_VALUE_LEN};
use ftkv::routing::{secondary_of, slot_of};
use support::cluster::{Cluster, alive, kill, read_dump, wait_until};
use support::sockets;

/// 5,000 PUTs from 8 concurrent clients, read back; overwrites and deletes; then each value
/// is on exactly its owner (primary table) and the next server (secondary table).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_land_on_owner_and_secondary() {
    let mut cluster = Cluster::start(3);
    let clients = 8;
    let per_client = 625;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = cluster.client();
        tasks.push(tokio::spawn(async move {
            let mut written = HashMap::new();
            for i in 0..per_client {
                let key = format!("key-{c}-{i}").into_bytes();
                let value = format!("value-{c}-{i}-{}", "x".repeat(i % 50)).into_bytes();
                client.put(&key, &value).await.expect("put");
                written.insert(key, value);
            }
            for (key, value) in &written {
                assert_eq!(client.get(key).await.expect("get").as_ref(), Some(value));
            }
            written
        }));
    }
    let mut expected: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for task in tasks {
        expected.extend(task.await.unwrap());
    }
    assert_eq!(expected.len(), clients * per_client);

    // Overwrite every 7th key, delete every 11th.
    let mut client = cluster.client();
    let keys: Vec<Vec<u8>> = expected.keys().cloned().collect();
    for (i, key) in keys.iter().enumerate() {
        if i % 11 == 0 {
            assert!(client.del(key).await.unwrap(), "delete of an existing key");
            assert!(!client.del(key).await.unwrap(), "second delete finds nothing");
            assert_eq!(client.get(key).await.unwrap(), None);
            expected.remove(key);
        } else if i % 7 == 0 {
            client.put(key, b"overwritten").await.unwrap();
            assert_eq!(client.get(key).await.unwrap().as_deref(), Some(&b"overwritten"[..]));
            expected.insert(key.clone(), b"overwritten".to_vec());
        }
    }

    // Nothing is logged per operation at the default level (the original wrote 1.2 KB each).
    for id in 0..3 {
        let log = std::fs::metadata(cluster.path(&format!("server_{id}.log"))).unwrap().len();
        assert!(log < 16 * 1024, "server {id} logged {log} bytes for about 6,000 operations");
    }
    assert!(cluster.ctrl_d().success());
    let primaries: Vec<_> = (0..3).map(|id| cluster.dump(id, "primary")).collect();
    let secondaries: Vec<_> = (0..3).map(|id| cluster.dump(id, "secondary")).collect();
    let total: usize = primaries.iter().chain(&secondaries).map(HashMap::len).sum();
    assert_eq!(total, 2 * expected.len(), "every key exactly twice, nothing else");
    for (key, value) in &expected {
        let owner = slot_of(key, 3);
        assert_eq!(primaries[owner as usize].get(key), Some(value), "primary of {owner}");
        let secondary = secondary_of(owner, 3) as usize;
        assert_eq!(secondaries[secondary].get(key), Some(value), "secondary on {secondary}");
    }
}

/// The largest key and value round-trip; one byte more is refused and the client goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_are_exact() {
    let cluster = Cluster::start(3);
    let mut client = cluster.client();
    let key = vec![b'k'; MAX_KEY_LEN];
    let value: Vec<u8> = (0..MAX_VALUE_LEN).map(|i| (i % 251) as u8).collect();
    client.put(&key, &value).await.unwrap();
    assert_eq!(client.get(&key).await.unwrap().as_ref(), Some(&value));

    let long_key = vec![b'k'; MAX_KEY_LEN + 1];
    let err = client.put(&long_key, b"v").await.unwrap_err();
    assert!(matches!(err, OpError::KeyTooLarge { .. }), "{err:?}");
    assert!(matches!(client.get(&long_key).await.unwrap_err(), OpError::KeyTooLarge { .. }));
    let mut big = value.clone();
    big.push(0);
    let err = client.put(b"big", &big).await.unwrap_err();
    assert!(matches!(err, OpError::ValueTooLarge { .. }), "{err:?}");
    assert!(err.to_string().starts_with("Value too large"));
    assert_eq!(client.get(b"big").await.unwrap(), None, "nothing stored by a refusal");
    client.put(b"after", b"fine").await.unwrap();
    assert_eq!(client.get(&key).await.unwrap().as_ref(), Some(&value));
}

/// ctrl+d: the coordinator exits 0, every server is gone within 2 s, dumps are complete.
#[test]
fn ctrl_d_shuts_down_quickly_with_dumps() {
    let mut cluster = Cluster::start(3);
    let run = cluster.run_client(&[], "P \"a\" \"1\"\nP \"b\" \"2\"\nP \"c\" \"3\"\n");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let began = std::time::Instant::now();
    assert!(cluster.ctrl_d().success());
    let pids = cluster.pids.clone();
    assert!(
        wait_until(Duration::from_secs(2), || pids.iter().all(|&p| !alive(p))),
        "servers still running"
    );
    assert!(began.elapsed() < Duration::from_secs(2), "shutdown took {:?}", began.elapsed());
    let mut keys = 0;
    for id in 0..3 {
        keys += cluster.dump(id, "primary").len();
        assert_eq!(
            cluster.dump(id, "primary").len(),
            cluster.dump((id + 1) % 3, "secondary").len()
        );
    }
    assert_eq!(keys, 3);
}

/// Writes `k`, lets `stop` signal the service, and checks that the coordinator exits 0 with
/// `k` in the dumps.
fn stops_in_order_with_dumps(stop: impl FnOnce(&Cluster)) {
    let mut cluster = Cluster::start(3);
    assert_eq!(cluster.run_client(&["P", "k", "v"], "").code, 0);
    stop(&cluster);
    let status = cluster.wait_coord(Duration::from_secs(5)).expect("the coordinator exits");
    assert!(status.success());
    assert_k_in_both_dumps(cluster.dir.path());
}

/// `k` is in its owner's primary dump and its copy's secondary dump, in `dir`.
fn assert_k_in_both_dumps(dir: &Path) {
    let owner = slot_of(b"k", 3);
    let primary = dir.join(format!("server_{owner}.primary"));
    let secondary = dir.join(format!("server_{}.secondary", secondary_of(owner, 3)));
    assert_eq!(read_dump(&primary).get(&b"k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
    assert_eq!(read_dump(&secondary).get(&b"k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
}

/// SIGTERM to the coordinator is an orderly shutdown too.
#[test]
fn sigterm_shuts_down_with_dumps() {
    stops_in_order_with_dumps(|cluster| kill(cluster.coord.id(), "TERM"));
}

/// ctrl+c in the coordinator's terminal sends SIGINT to its whole process group. The local
/// servers run in groups of their own and are not hit: the coordinator shuts down in order.
/// (While they shared its group they died at once, without dumps.)
#[test]
fn ctrl_c_to_the_coordinators_process_group_shuts_down_with_dumps() {
    stops_in_order_with_dumps(|cluster| {
        // SAFETY: kill(2) on a process group id; no memory is involved.
        assert_eq!(unsafe { libc::kill(-(cluster.coord.id() as i32), libc::SIGINT) }, 0);
    });
}

/// A service manager stopping the service sends SIGTERM to every one of its processes at
/// once (systemd's default). The servers ignore theirs and the coordinator shuts down in
/// order. (Before, the servers died of it, without dumps.)
#[test]
fn sigterm_to_every_process_at_once_keeps_the_dumps() {
    stops_in_order_with_dumps(|cluster| {
        for &pid in &cluster.pids {
            kill(pid, "TERM");
        }
        kill(cluster.coord.id(), "TERM");
    });
}

/// A cluster whose dump directory is replaced by a file (as a full disk would, the dumps
/// cannot be written) after one write. Returns the directory's path too.
fn cluster_with_dumps_blocked() -> (Cluster, PathBuf) {
    let cluster = Cluster::start_with(3, &["--dump-dir", "dumps"]);
    assert_eq!(cluster.run_client(&["P", "k", "v"], "").code, 0);
    let dumps = cluster.path("dumps");
    std::fs::remove_dir_all(&dumps).unwrap();
    std::fs::write(&dumps, "not a directory").unwrap();
    (cluster, dumps)
}

/// [`cluster_with_dumps_blocked`], then ctrl+d: the servers cannot write their dumps.
fn shutdown_with_dumps_blocked() -> (Cluster, PathBuf) {
    let (mut cluster, dumps) = cluster_with_dumps_blocked();
    cluster.close_stdin();
    // The second attempt (logged as attempt=2) found the servers still up.
    assert!(wait_until(Duration::from_secs(5), || {
        let log = cluster.coord_log();
        log.contains("server could not write its dumps") && log.contains("attempt=2")
    }));
    assert!(cluster.pids.iter().all(|&pid| alive(pid)), "the servers keep their data");
    (cluster, dumps)
}

/// Back in place, the dump directory gets every server's dumps, with the write in them.
fn unblock_and_check_dumps(dumps: &Path) {
    std::fs::remove_file(dumps).unwrap();
    std::fs::create_dir(dumps).unwrap();
    let written = || (0..3).all(|id| dumps.join(format!("server_{id}.secondary")).exists());
    assert!(wait_until(Duration::from_secs(5), written));
    assert_k_in_both_dumps(dumps);
}

/// Dumps that cannot be written at shutdown: the servers stay up with their data and the
/// coordinator asks again every second; once the directory is back everything is written
/// and the coordinator exits 0. (Before, the servers exited without writing anything and
/// the coordinator still exited 0.)
#[test]
fn dumps_that_cannot_be_written_are_retried_until_they_are() {
    let (mut cluster, dumps) = shutdown_with_dumps_blocked();
    assert!(cluster.coord.try_wait().unwrap().is_none(), "the coordinator waits for the dumps");
    unblock_and_check_dumps(&dumps);
    let status = cluster.wait_coord(Duration::from_secs(5)).expect("exits once dumps are written");
    assert!(status.success());
}

/// The same, but SIGTERM while the coordinator waits: it gives up with an error (non-zero
/// exit), and the servers, left running, write their dumps on their own once they can.
#[test]
fn giving_up_on_dumps_leaves_the_servers_retrying_on_their_own() {
    let (mut cluster, dumps) = shutdown_with_dumps_blocked();
    kill(cluster.coord.id(), "TERM");
    let status = cluster.wait_coord(Duration::from_secs(5)).expect("gives up on SIGTERM");
    assert!(!status.success());
    // Showing that something does not happen: the servers do not exit, through at least one
    // retry of their dumps (every second).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(cluster.pids.iter().all(|&pid| alive(pid)), "still holding the data");
    unblock_and_check_dumps(&dumps);
    let pids = cluster.pids.clone();
    assert!(wait_until(Duration::from_secs(5), || pids.iter().all(|&pid| !alive(pid))));
}

/// A second SIGTERM while the first shutdown round still runs (here a paused server makes
/// it last its full 3 s) is not lost: the coordinator gives up as soon as the round ends.
#[test]
fn a_second_sigterm_during_the_shutdown_round_gives_up() {
    let (mut cluster, _) = cluster_with_dumps_blocked();
    kill(cluster.pids[0], "STOP");
    kill(cluster.coord.id(), "TERM");
    assert!(wait_until(Duration::from_secs(5), || cluster
        .coord_log()
        .contains(lines::SHUTTING_DOWN)));
    kill(cluster.coord.id(), "TERM");
    let status = cluster.wait_coord(Duration::from_secs(10)).expect("gave up after the round");
    assert!(!status.success());
    assert!(cluster.coord_log().contains(lines::GAVE_UP_ON_DUMPS));
}

/// A server that lost its coordinator retries dumps it cannot write; but dump files that
/// appear meanwhile are from a newer start of its id (it was replaced while cut off), with
/// newer data: it leaves them as they are and exits.
#[test]
fn a_retrying_server_does_not_overwrite_a_newer_dump() {
    let (mut cluster, dumps) = cluster_with_dumps_blocked();
    kill(cluster.coord.id(), "KILL");
    cluster.wait_coord(Duration::from_secs(5)).expect("coordinator killed");
    let retrying = |id: u32| {
        let log = std::fs::read_to_string(cluster.path(&format!("server_{id}.log")));
        log.is_ok_and(|log| log.contains(lines::CANNOT_WRITE_DUMPS))
    };
    assert!(wait_until(Duration::from_secs(5), || (0..3).all(retrying)));
    // File times come from a clock that can lag by a tick: wait until a file written now is
    // dated after every server began retrying (the newer dumps must be newer), then have them
    // appear all at once.
    let retrying_since = std::time::SystemTime::now();
    let probe = cluster.path("probe");
    let dated_after = || {
        std::fs::write(&probe, "").unwrap();
        std::fs::metadata(&probe).and_then(|m| m.modified()).is_ok_and(|t| t > retrying_since)
    };
    assert!(wait_until(Duration::from_secs(1), dated_after), "file times stand still");
    let newer = cluster.path("newer");
    std::fs::create_dir(&newer).unwrap();
    for name in
        (0..3).flat_map(|id| [format!("server_{id}.primary"), format!("server_{id}.secondary")])
    {
        std::fs::write(newer.join(name), "P \"newer\" \"x\"\n").unwrap();
    }
    std::fs::remove_file(&dumps).unwrap();
    std::fs::rename(&newer, &dumps).unwrap();
    let pids = cluster.pids.clone();
    assert!(wait_until(Duration::from_secs(5), || pids.iter().all(|&pid| !alive(pid))));
    for id in 0..3 {
        let primary = read_dump(&dumps.join(format!("server_{id}.primary")));
        assert_eq!(primary.keys().collect::<Vec<_>>(), [&b"newer"[..]], "server {id}");
    }
}

/// kill -9 of the coordinator: the servers notice, write their dumps, and exit.
#[test]
fn servers_exit_when_the_coordinator_is_killed() {
    let mut cluster = Cluster::start(3);
    assert_eq!(cluster.run_client(&["P", "k", "v"], "").code, 0);
    support::cluster::kill(cluster.coord.id(), "KILL");
    cluster.wait_coord(Duration::from_secs(5)).expect("coordinator killed");
    let pids = cluster.pids.clone();
    assert!(
        wait_until(Duration::from_secs(3), || pids.iter().all(|&p| !alive(p))),
        "orphaned servers"
    );
    let owner = slot_of(b"k", 3);
    assert_eq!(cluster.dump(owner, "primary").get(&b"k"[..]).map(Vec::as_slice), Some(&b"v"[..]));
    assert_eq!(cluster.dump(secondary_of(owner, 3), "secondary").len(), 1);
}

/// A write is visible only once both copies hold it: with the secondary paused, the PUT
/// is not acknowledged and a GET at the primary still sees the old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_invisible_until_secondary_has_it() {
    let cluster = Cluster::start_with(3, &["-t", "30"]);
    let key = b"visibility".to_vec();
    let owner = slot_of(&key, 3);
    let mut reader = cluster.client();
    reader.put(&key, b"old").await.unwrap();
    let secondary = secondary_of(owner, 3) as usize;
    let secondary_pid = cluster.pids[secondary];
    let port = cluster.status()["servers"][secondary]["servers_port"].as_u64().unwrap() as u16;
    support::cluster::kill(secondary_pid, "STOP");
    // The primary has sent the write on to its paused secondary, which has not read it.
    let unread = || sockets::established(port).iter().any(|q| q.recv > 0);
    assert!(!unread(), "the paused secondary had read everything before the write");
    let mut writer = cluster.client();
    let k = key.clone();
    let pending = tokio::spawn(async move { writer.put(&k, b"new").await });
    let sent_on = tokio::task::block_in_place(|| wait_until(Duration::from_secs(10), unread));
    assert!(sent_on, "the write never reached the paused secondary");
    // Showing that something does not happen: no acknowledgement comes meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "acknowledged while the secondary is paused");
    assert_eq!(reader.get(&key).await.unwrap().as_deref(), Some(&b"old"[..]));
    support::cluster::kill(secondary_pid, "CONT");
    pending.await.unwrap().unwrap();
    assert_eq!(reader.get(&key).await.unwrap().as_deref(), Some(&b"new"[..]));
}
