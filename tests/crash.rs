//! A crash of every process at once (a power cut, the OOM killer, a reboot of the one
//! machine): `kill -9` of the coordinator and every server together, then the same `coord`
//! in the same directory. Every acknowledged write is back (the servers' append-only logs),
//! histories spanning the crashes are linearizable; a torn last record is cut off, damage
//! before it refused by file and offset; a full disk fails writes clearly, never
//! acknowledging them, and writes succeed again once there is room. A start with another
//! number of servers reshards the crashed cluster's logs through the restore of dumps.

mod support;

use std::time::{Duration, Instant};

use ftkv::lines;
use support::cluster::{Cluster, alive, files_in, kill, wait_until};
use support::history::{check_all, lost_acknowledged_writes};
use support::load::{Load, final_reads};
use support::set::{VALUE, key};

/// A client's patience across a crash and a start from the logs.
const TIMEOUT: Duration = Duration::from_secs(20);

fn restart(cluster: &mut Cluster, extra: &[&str]) {
    tokio::task::block_in_place(|| cluster.restart_coord(extra));
}

/// Writes keys `0..n` with [`VALUE`] through a client.
async fn put_keys(cluster: &Cluster, n: usize) {
    let mut client = cluster.client();
    for i in 0..n {
        client.put(&key(i), &VALUE).await.unwrap();
    }
}

/// Reads keys `0..n` back through a client: each holds [`VALUE`].
async fn assert_keys(cluster: &Cluster, n: usize) {
    let mut client = cluster.client();
    for i in 0..n {
        assert_eq!(client.get(&key(i)).await.unwrap().as_deref(), Some(&VALUE[..]), "{i}");
    }
}

/// The line a start from the logs prints last, checked.
fn assert_restored_from_logs(cluster: &Cluster) {
    let restored = cluster.restored.clone().unwrap_or_default();
    assert!(restored.ends_with("from the servers' logs"), "{restored:?}\n{}", cluster.coord_log());
}

/// kill -9 of every process under load, started again, twice in a row (with `policy`):
/// every acknowledged write is read back, the histories (the load runs through both
/// crashes) are linearizable, and the next ctrl+d dumps exactly the final values.
async fn crash_twice_under_load(policy: &str) {
    let mut cluster = Cluster::start_with(3, &["--fsync", policy]);
    let load = Load::start(cluster.coord_addr(), 4, 100, TIMEOUT);
    load.under_way().await;
    for round in 0..2 {
        load.completes(1000, TIMEOUT).await;
        tokio::task::block_in_place(|| cluster.crash());
        restart(&mut cluster, &["--fsync", policy]);
        assert_restored_from_logs(&cluster);
        let log = cluster.coord_log();
        assert!(log.contains(lines::FROM_LOGS), "round {round}: {log}");
        load.answered_since(Some(Instant::now()), TIMEOUT).await;
    }
    let (recorder, keys) = load.stop().await;
    let finals = final_reads(cluster.coord_addr(), &recorder, &keys).await;
    let events = recorder.events();
    assert!(finals.values().any(Option::is_some), "the load wrote");
    assert_eq!(lost_acknowledged_writes(&events, &finals), Vec::<Vec<u8>>::new());
    check_all(&events).unwrap_or_else(|e| panic!("not linearizable: {e}"));
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
    cluster.assert_dumps_match(&finals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_of_every_process_under_load_loses_nothing_acknowledged_twice_in_a_row() {
    crash_twice_under_load("always").await;
}

/// `everysec` acknowledges before the sync: a crash of the processes (the kernel lives on,
/// with the pages written) still loses nothing; a power cut could lose the last second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_everysec_a_crash_of_the_processes_loses_nothing_either() {
    crash_twice_under_load("everysec").await;
}

fn set_servers(cluster: &Cluster, n: usize) {
    let config = format!("{n}\n{}", "localhost 0 0 0\n".repeat(n));
    std::fs::write(cluster.path("config.txt"), config).unwrap();
}

/// The `dumps-<time>` folders in the cluster's directory, oldest first.
fn asides(cluster: &Cluster) -> Vec<std::path::PathBuf> {
    let mut asides: Vec<_> = std::fs::read_dir(cluster.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("dumps-"))
        .map(|e| e.path())
        .collect();
    asides.sort();
    asides
}

/// A cluster of `from` under load, kill -9 of every process, then `coord` again in the
/// same directory with a configuration of `to` servers: the start reshards the logs (it
/// says so, and names each log it read), the crashed cluster's logs are set aside whole,
/// and every acknowledged write is there, the histories linearizable across the crash.
async fn crash_and_start_with(from: usize, to: usize) {
    let mut cluster = Cluster::start(from);
    let load = Load::start(cluster.coord_addr(), 4, 100, TIMEOUT);
    load.under_way().await;
    load.completes(1000, TIMEOUT).await;
    tokio::task::block_in_place(|| cluster.crash());
    let logs: Vec<Vec<u8>> = (0..from)
        .map(|id| std::fs::read(cluster.path(&format!("server_{id}.aof"))).unwrap())
        .collect();
    set_servers(&cluster, to);
    restart(&mut cluster, &[]);
    assert_eq!(cluster.pids.len(), to, "{}", cluster.coord_log());
    let restored = cluster.restored.clone().unwrap_or_default();
    let expected = format!("from the logs of the {from} servers of a crashed cluster");
    assert!(restored.contains(&expected), "{restored:?}\n{}", cluster.coord_log());
    let said = cluster.coord_log();
    assert!(said.contains(lines::RESHARD_LOGS), "{said}");
    for id in 0..from {
        let read = format!("server {id}: ");
        let file = format!("server_{id}.aof");
        assert!(said.lines().any(|l| l.contains(&read) && l.contains(&file)), "{file}: {said}");
    }
    // The crashed cluster's logs, moved aside as they were; nothing of its servers beyond
    // the new N is left beside the new cluster's files.
    assert!(said.contains("moved the crashed cluster's files"), "{said}");
    let aside = asides(&cluster);
    let moved = aside.iter().map(|dir| files_in(dir)).find(|f| f.contains_key("server_0.aof"));
    let moved = moved.unwrap_or_else(|| panic!("no log set aside in {aside:?}: {said}"));
    for (id, log) in logs.iter().enumerate() {
        assert_eq!(moved.get(&format!("server_{id}.aof")), Some(log), "server_{id}.aof aside");
    }
    let beyond: Vec<String> = cluster
        .files()
        .into_keys()
        .filter(|name| ftkv::manifest::server_of(name).is_some_and(|id| id >= to as u32))
        .collect();
    assert!(beyond.is_empty(), "left beside the new set of {to}: {beyond:?}");
    load.answered_since(Some(Instant::now()), TIMEOUT).await;
    let (recorder, keys) = load.stop().await;
    let finals = final_reads(cluster.coord_addr(), &recorder, &keys).await;
    let events = recorder.events();
    assert!(finals.values().any(Option::is_some), "the load wrote");
    assert_eq!(lost_acknowledged_writes(&events, &finals), Vec::<Vec<u8>>::new());
    check_all(&events).unwrap_or_else(|e| panic!("not linearizable: {e}"));
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
    cluster.assert_dumps_match(&finals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_then_a_start_with_more_servers_reshards_the_logs() {
    crash_and_start_with(3, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_then_a_start_with_fewer_servers_reshards_the_logs() {
    crash_and_start_with(5, 3).await;
}

/// After a crash, a configuration of 4 naming a server on another host is refused before
/// anything starts (its logs would have to be shipped), saying to start with the old 3, and
/// changes no file. Then server 1's log damaged, a torn record after server 0's, and a start
/// with 4 local servers: server 1's keys come from their copy in server 2's log, the tail is
/// named, both are said, and every key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_onto_other_hosts_is_refused_and_a_refused_log_is_replaced_by_its_copy() {
    let mut cluster = Cluster::start(3);
    put_keys(&cluster, 300).await;
    tokio::task::block_in_place(|| cluster.crash());
    let files = |cluster: &Cluster| {
        let mut files = files_in(cluster.dir.path());
        files.retain(|name, _| name.starts_with("server_") || name.starts_with("dumps"));
        files
    };
    let before = files(&cluster);
    let config = "4\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\nremote.invalid 0 0 0\n";
    std::fs::write(cluster.path("config.txt"), config).unwrap();
    let out = cluster.refused_start(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in ["cannot reshard the logs", "other hosts", "configuration (3 servers)"] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert_eq!(files(&cluster), before, "nothing changed");
    assert!(asides(&cluster).is_empty(), "nothing set aside");

    let log = cluster.path("server_1.aof");
    let mut damaged = std::fs::read(&log).unwrap();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x20;
    std::fs::write(&log, &damaged).unwrap();
    // And a torn record at the end of server 0's: read up to it, the file set aside whole.
    let log_0 = cluster.path("server_0.aof");
    let mut torn = std::fs::read(&log_0).unwrap();
    let length = torn.len();
    torn.extend([100, 0, 0, 0, 9, 9, 9, 9, 1, 2, 3]);
    std::fs::write(&log_0, &torn).unwrap();
    set_servers(&cluster, 4);
    restart(&mut cluster, &[]);
    let said = cluster.coord_log();
    let cut = format!("{} at offset {length} (11 bytes", lines::TORN_TAIL_CUT);
    assert!(said.lines().any(|l| l.contains("server_0.aof") && l.contains(&cut)), "{said}");
    let aside = asides(&cluster);
    let moved = aside.iter().map(|dir| files_in(dir)).find(|f| f.contains_key("server_0.aof"));
    assert_eq!(moved.unwrap()["server_0.aof"], torn, "set aside as it was");
    let replaced = "server 1: not used (its log is refused: ";
    assert!(said.contains(replaced) && said.contains("damaged record at offset"), "{said}");
    assert!(said.contains("its keys come from their copy in server 2's server_2.aof"), "{said}");
    let restored = cluster.restored.clone().unwrap_or_default();
    assert!(restored.starts_with("restored 300 keys"), "{restored:?}\n{said}");
    assert_keys(&cluster, 300).await;
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
}

/// The coordinator killed, then server 1 (kill -9), while servers 0 and 2 outlive them and
/// write their dumps after their orphan timeout; then a start with 4: 0's and 2's tables come
/// from those dumps (written at their end, newer than their logs), 1's from its log, each
/// said, and every key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_takes_the_dumps_servers_wrote_at_their_end_over_their_logs() {
    let mut cluster = Cluster::start(3);
    put_keys(&cluster, 300).await;
    let pids = cluster.server_pids();
    tokio::task::block_in_place(|| {
        cluster.kill_coord();
        kill(cluster.pids[1], "KILL");
        let gone = wait_until(Duration::from_secs(20), || pids.iter().all(|&pid| !alive(pid)));
        assert!(gone, "servers {pids:?} still running after their orphan timeout");
    });
    for (id, wrote) in [(0, true), (1, false), (2, true)] {
        let manifest = cluster.path(&format!("server_{id}.manifest"));
        assert_eq!(manifest.exists(), wrote, "server {id}'s own dumps");
    }
    set_servers(&cluster, 4);
    restart(&mut cluster, &[]);
    let said = cluster.coord_log();
    for id in [0, 2] {
        let line = format!("server_{id}.secondary written at its end, newer than its log");
        assert!(said.contains(&line), "{line:?} not in {said}");
    }
    let from_log = |l: &&str| l.contains("server 1: ") && l.contains("server_1.aof");
    assert!(said.lines().any(|l| from_log(&l)), "server 1 from its log: {said}");
    let restored = cluster.restored.clone().unwrap_or_default();
    assert!(restored.starts_with("restored 300 keys"), "{restored:?}\n{said}");
    assert_keys(&cluster, 300).await;
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
}

/// A crash, a start with 4 killed (kill -9 of every process) once it prints that it is
/// restoring, and a start with 4 again: the set written from the logs is restored again (or,
/// if the first restore finished in time, its servers start from their own logs), and
/// every key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reshard_killed_during_its_restore_is_restored_again() {
    let mut cluster = Cluster::start(3);
    let tasks = (0..8).map(|t| {
        let mut client = cluster.client();
        tokio::spawn(async move {
            for i in (t..2000).step_by(8) {
                client.put(&key(i), &VALUE).await.unwrap();
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.unwrap();
    }
    tokio::task::block_in_place(|| cluster.crash());
    set_servers(&cluster, 4);
    tokio::task::block_in_place(|| {
        cluster.spawn_coord_again(&[]);
        cluster.await_line(lines::RESTORING, Duration::from_secs(20));
        cluster.crash();
    });
    restart(&mut cluster, &[]);
    let said = cluster.coord_log();
    let again = said.contains(lines::RESTORE_AGAIN);
    assert!(again || said.contains(lines::FROM_LOGS), "{said}");
    println!("restored again: {again}");
    assert_eq!(cluster.pids.len(), 4);
    assert_keys(&cluster, 2000).await;
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
}

/// 300 keys written, a crash, and a torn record (the write a crash interrupted) at the end
/// of server 1's log: it is cut off with a warning naming the file and offset, and every
/// key is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_cut_off_and_named() {
    let mut cluster = Cluster::start(3);
    put_keys(&cluster, 300).await;
    tokio::task::block_in_place(|| cluster.crash());
    let log = cluster.path("server_1.aof");
    let length = std::fs::metadata(&log).unwrap().len();
    // A record's head announcing 100 bytes, and 3 of them.
    let mut torn = std::fs::read(&log).unwrap();
    torn.extend([100, 0, 0, 0, 9, 9, 9, 9, 1, 2, 3]);
    std::fs::write(&log, &torn).unwrap();

    restart(&mut cluster, &[]);
    assert_restored_from_logs(&cluster);
    let said = cluster.coord_log();
    let cut = format!("{} at offset {length} (11 bytes)", lines::TORN_TAIL_CUT);
    assert!(said.contains(&cut) && said.contains("server_1.aof"), "{cut:?} not in {said}");
    // Cut off: what follows the cut is this start's (its copy refilled), whole records.
    let now = std::fs::read(&log).unwrap();
    assert_eq!(now[..length as usize], torn[..length as usize]);
    assert_ne!(now[length as usize..].first(), Some(&100), "the torn record is gone");
    assert_keys(&cluster, 300).await;
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
}

/// A byte flipped in the middle of server 2's log: the start is refused, naming the file and
/// the offset and the way out, and changes no file; put back, the next start has every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_before_the_end_is_refused_and_nothing_changes() {
    let mut cluster = Cluster::start(3);
    put_keys(&cluster, 300).await;
    tokio::task::block_in_place(|| cluster.crash());
    let log = cluster.path("server_2.aof");
    let whole = std::fs::read(&log).unwrap();
    let mut damaged = whole.clone();
    let middle = whole.len() / 2;
    damaged[middle] ^= 0x20;
    std::fs::write(&log, &damaged).unwrap();
    let files = |cluster: &Cluster| {
        let mut files = files_in(cluster.dir.path());
        files.retain(|name, _| name.starts_with("server_") && !name.ends_with(".log"));
        files
    };
    let before = files(&cluster);

    let out = cluster.refused_start(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in ["server 2 cannot start from its log", "server_2.aof", "damaged record at offset"]
    {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(stderr.contains("move the file aside"), "the way out: {stderr}");
    assert_eq!(files(&cluster), before, "nothing changed");

    std::fs::write(&log, &whole).unwrap();
    restart(&mut cluster, &[]);
    assert_restored_from_logs(&cluster);
    assert_keys(&cluster, 300).await;
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
}

/// The first leftover of a rewrite (`server_N.aof.rewrite`) in `dir`, if one is there.
fn rewrite_under_way(dir: &std::path::Path) -> Option<String> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|name| name.ends_with(".aof.rewrite"))
}

/// Large values overwritten again and again, so that the logs (`--compact-min-mib 1`) are
/// compacted every few hundred writes, beside the checked load; kill -9 of every process the
/// moment a rewrite is seen under way, and again until a kill has interrupted one (its new
/// file left half written): every acknowledged write is back each time, the histories are
/// linearizable, and the servers said they compacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_a_compaction_loses_nothing_acknowledged() {
    use std::sync::{Arc, Mutex};
    let args = ["--compact-min-mib", "1"];
    let mut cluster = Cluster::start_with(3, &args);
    let load = Load::start(cluster.coord_addr(), 2, 50, TIMEOUT);
    load.under_way().await;
    let big = |k: usize, round: u64| format!("{k}:{round}:{}", "x".repeat(32 << 10)).into_bytes();
    let acked = Arc::new(Mutex::new(std::collections::HashMap::<usize, u64>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn({
        let (mut client, acked, stop) = (cluster.client(), acked.clone(), stop.clone());
        async move {
            for round in 0.. {
                for k in 0..16 {
                    if stop.is_cancelled() {
                        return;
                    }
                    if client.put(format!("big{k}").as_bytes(), &big(k, round)).await.is_ok() {
                        acked.lock().unwrap().insert(k, round);
                    }
                }
            }
        }
    });
    let mut interrupted = None;
    for _ in 0..5 {
        let dir = cluster.dir.path().to_path_buf();
        let seen = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while Instant::now() < deadline {
                if rewrite_under_way(&dir).is_some() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        });
        assert!(seen.await.unwrap(), "no compaction under way in 120 s");
        tokio::task::block_in_place(|| cluster.crash());
        interrupted = interrupted.or(rewrite_under_way(cluster.dir.path()));
        restart(&mut cluster, &args);
        // (The leftover is removed at the load: a unit test; here a new rewrite may be
        // under way already.)
        assert_restored_from_logs(&cluster);
        load.answered_since(Some(Instant::now()), TIMEOUT).await;
        if interrupted.is_some() {
            break;
        }
    }
    assert!(interrupted.is_some(), "no kill landed during a rewrite in 5 tries");
    stop.cancel();
    writer.await.unwrap();
    let (recorder, keys) = load.stop().await;
    let finals = final_reads(cluster.coord_addr(), &recorder, &keys).await;
    let events = recorder.events();
    assert_eq!(lost_acknowledged_writes(&events, &finals), Vec::<Vec<u8>>::new());
    check_all(&events).unwrap_or_else(|e| panic!("not linearizable: {e}"));
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 16, "every big key written");
    let mut client = cluster.client();
    for (k, round) in acked {
        let value = client.get(format!("big{k}").as_bytes()).await.unwrap().expect("a big key");
        let prefix = String::from_utf8_lossy(&value[..24.min(value.len())]).to_string();
        let found: u64 = prefix.split(':').nth(1).and_then(|r| r.parse().ok()).expect("a round");
        assert!(found >= round, "big{k}: round {found} read, {round} acknowledged");
        // Gone again, so that the dumps hold the load's keys alone.
        assert!(client.del(format!("big{k}").as_bytes()).await.unwrap());
    }
    let compacted = (0..3).any(|id| {
        std::fs::read_to_string(cluster.path(&format!("server_{id}.log")))
            .is_ok_and(|log| log.contains("log compacted"))
    });
    assert!(compacted, "no server said it compacted");
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
    cluster.assert_dumps_match(&finals);
}
