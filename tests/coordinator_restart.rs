//! The coordinator dies too: `kill -9` of `coord` under load, a new one started on the same
//! state takes the running servers back (same pids, nothing copied, nothing lost), also when
//! it died in the middle of a recovery; a second coordinator on a state in use, and a state
//! file that is not one, are refused.

mod support;

use std::time::Duration;

use support::cluster::{COORD, Cluster, coord_in, kill};
use support::load::{Checked, Load, answered, stop_and_check};

/// Coordinator flags of these tests: a short heartbeat timeout, and servers that wait long
/// enough for a new coordinator.
const FLAGS: [&str; 4] = ["-t", "1", "--orphan-timeout", "30"];

fn epoch(cluster: &Cluster) -> u64 {
    cluster.status()["epoch"].as_u64().unwrap()
}

/// The recovery step the dead coordinator's state file recorded, if one was under way.
fn recovery_step(cluster: &Cluster) -> Option<String> {
    let text = std::fs::read_to_string(cluster.path("coord.state")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    let step = &state["state"]["recovery"]["step"];
    (!step.is_null()).then(|| step.to_string())
}

/// Watches the state file until the recovery under way is in `step` (true), or over.
fn catch_step(cluster: &Cluster, step: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut begun = false;
    while std::time::Instant::now() < deadline {
        match recovery_step(cluster) {
            Some(now) if now.contains(step) => return true,
            Some(_) => begun = true,
            None if begun => return false,
            None => {}
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Kill -9 of the coordinator under load, a new one 0.5 s later: every server is taken back
/// (same pids), histories stay linearizable, nothing acknowledged is lost, and the next
/// ctrl+d writes every key's two copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_restarted_takes_the_running_servers_back() {
    let mut cluster = Cluster::start_with(3, &FLAGS);
    let pids = cluster.pids.clone();
    let before = epoch(&cluster);
    let load = Load::start(cluster.coord_addr(), 4, 100, Duration::from_secs(10));
    load.under_way().await;
    for _ in 0..2 {
        cluster.kill_coord();
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(|| cluster.restart_coord(&FLAGS));
        assert_eq!(cluster.pids, pids, "the same server processes, none started");
        assert!(cluster.coord_log().contains(ftkv::lines::TOOK_BACK));
        // Pacing: the load runs on the taken-back cluster for a while.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = tokio::task::block_in_place(|| epoch(&cluster));
    assert!(after > before, "each restart installs a new epoch ({before} -> {after})");
    let Checked { finals, checked, .. } = stop_and_check(cluster.coord_addr(), load).await;
    assert!(checked > 0);
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
    cluster.assert_dumps_match(&finals);
}

/// The coordinator killed while it recovers a killed server, in each step it can be caught
/// in (its state file is watched for the step): the restarted one finishes the recovery,
/// histories stay linearizable and every key ends with its two copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_during_a_recovery_resumes_it_after_a_restart() {
    let targets = ["WaitLease", "TakeOver", "Spawn", "Copy", "HandBack"];
    let mut cluster = Cluster::start_with(3, &FLAGS);
    let mut client = cluster.client();
    // Enough data that the copy (steps 2-4) takes a while.
    let value = vec![b'v'; 512 << 10];
    for i in 0..100 {
        client.put(format!("big-{i}").as_bytes(), &value).await.unwrap();
    }
    let load = Load::start(cluster.coord_addr(), 2, 50, Duration::from_secs(10));
    load.under_way().await;
    let mut caught = Vec::new();
    // Up to 3 tries per step: a short one (a few milliseconds) can pass between two looks.
    let tries = targets.iter().flat_map(|&target| [target; 3]);
    for (round, target) in tries.enumerate() {
        if caught.contains(&target) {
            continue;
        }
        let victim = round % 3;
        let current = tokio::task::block_in_place(|| epoch(&cluster));
        kill(cluster.pids[victim], "KILL");
        if tokio::task::block_in_place(|| catch_step(&cluster, target)) {
            caught.push(target);
        }
        cluster.kill_coord();
        tokio::task::block_in_place(|| {
            cluster.restart_coord(&FLAGS);
            cluster.wait_recovered(current, Duration::from_secs(30));
            // The table printed at the restart may not show the victim.
            cluster.pids = (0..3).map(|id| cluster.pid_of(id)).collect();
        });
    }
    println!("steps the coordinator was killed in: {caught:?}");
    assert!(caught.len() >= 3 && caught.contains(&"Copy"), "caught only {caught:?}");
    let Checked { mut finals, .. } = stop_and_check(cluster.coord_addr(), load).await;
    for i in 0..100 {
        let key = format!("big-{i}").into_bytes();
        assert_eq!(client.get(&key).await.unwrap().as_ref(), Some(&value));
        finals.insert(key, Some(value.clone()));
    }
    let stopped = tokio::task::block_in_place(|| cluster.ctrl_d_within(Duration::from_secs(60)));
    assert!(stopped.success());
    cluster.assert_dumps_match(&finals);
}

/// A second coordinator on the state of a running one exits at once with a message naming
/// the first; the first goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_coordinator_on_the_same_state_is_refused() {
    let cluster = Cluster::start(3);
    let mut client = cluster.client();
    client.put(b"k", b"v").await.unwrap();
    let out = coord_in(cluster.dir.path(), "second.log").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = cluster.coord.id();
    assert!(stderr.contains(&format!("another coordinator (pid {first})")), "{stderr}");
    assert_eq!(client.get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(cluster.pids.len(), 3);
}

/// A state file that is not one: a clear error, exit 1, and the file left as it was.
#[test]
fn a_corrupt_state_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.txt"),
        "3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n",
    )
    .unwrap();
    let garbage = b"{\"format\": 1, \"state\": {\"token_hex\": 7";
    std::fs::write(dir.path().join("coord.state"), garbage).unwrap();
    let out = coord_in(dir.path(), "coord.log").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("coord.state is not a coordinator state"), "{stderr}");
    assert_eq!(std::fs::read(dir.path().join("coord.state")).unwrap(), garbage);
}

/// After ctrl+d the state says the cluster stopped: the next coordinator starts a new one
/// (new servers) instead of waiting for the old ones, and restores the dumps into it.
#[test]
fn after_an_orderly_stop_the_next_coordinator_starts_anew_and_restores_the_dumps() {
    let mut cluster = Cluster::start(3);
    let first = cluster.pids.clone();
    let run = cluster.run_client(&["P", "kept", "across"], "");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(cluster.ctrl_d().success());
    let state = std::fs::read_to_string(cluster.path("coord.state")).unwrap();
    assert!(state.contains("\"running\": false"), "{state}");
    cluster.restart_coord(&[]);
    assert!(cluster.pids.iter().all(|pid| !first.contains(pid)), "new servers");
    assert!(!cluster.coord_log().contains(ftkv::lines::TOOK_BACK));
    let restored = cluster.restored.clone().expect("a restore");
    assert!(restored.starts_with("restored 1 keys (10 bytes) from the dumps of "), "{restored}");
    let run = cluster.run_client(&["G", "kept"], "");
    assert_eq!(run.stdout, "value[\"kept\"] == \"across\"\n", "{}", run.stderr);
}

/// The coordinator under a supervisor (a shell loop that starts it again whenever it fails,
/// as systemd's `Restart=on-failure` does): killed with -9 three times under load, the
/// service stays whole: same servers, linearizable histories, every key's two copies in the
/// dumps once SIGTERM stops it in order (exit 0 ends the loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_restarted_by_a_supervisor_keeps_the_service_whole() {
    let supervisor = "until \"$0\" \"$@\"; do sleep 0.2; done".to_string();
    let prefix = ["bash".to_string(), "-c".to_string(), supervisor];
    let config = "3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n";
    let flags = [&FLAGS[..], &["--ignore-stdin"]].concat();
    let mut cluster = Cluster::launch(config, &prefix, &flags);
    let pids = cluster.pids.clone();
    let load = Load::start(cluster.coord_addr(), 4, 100, Duration::from_secs(10));
    load.under_way().await;
    for _ in 0..3 {
        let coord = supervised(cluster.coord.id());
        kill(coord, "KILL");
        tokio::task::block_in_place(|| cluster.await_ready());
        assert_ne!(supervised(cluster.coord.id()), coord, "a new coordinator");
        assert_eq!(cluster.pids, pids, "the same servers");
        // Pacing: the load runs on the taken-back cluster for a while.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let Checked { finals, .. } = stop_and_check(cluster.coord_addr(), load).await;
    kill(supervised(cluster.coord.id()), "TERM");
    let stopped = tokio::task::block_in_place(|| cluster.wait_coord(Duration::from_secs(10)));
    assert!(stopped.is_some_and(|s| s.success()), "the supervisor ends with the coordinator");
    cluster.assert_dumps_match(&finals);
}

/// The coordinator the supervisor shell `pid` runs now (waits for it to start one).
fn supervised(pid: u32) -> u32 {
    let mut coord = None;
    let started = support::cluster::wait_until(Duration::from_secs(5), || {
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
        let pids = children.unwrap_or_default();
        coord = pids.split_whitespace().filter_map(|p| p.parse().ok()).find(|&p| runs_coord(p));
        coord.is_some()
    });
    assert!(started, "no coordinator under the supervisor");
    coord.unwrap()
}

fn runs_coord(pid: u32) -> bool {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
    exe.is_ok_and(|exe| exe == std::path::Path::new(COORD))
}

/// The coordinator paused (SIGSTOP) for longer than the servers wait for an answer (their
/// lease plus a 3 s grace): they give up on its links and retry; once it resumes they come
/// back on new links and it takes them as they are: no server lost or replaced, the service
/// serves again, histories linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_paused_past_the_servers_grace_keeps_them() {
    let mut cluster = Cluster::start_with(3, &FLAGS);
    let pids = cluster.pids.clone();
    let load = Load::start(cluster.coord_addr(), 4, 100, Duration::from_secs(10));
    load.under_way().await;
    kill(cluster.coord.id(), "STOP");
    // The pause is the fault under test.
    tokio::time::sleep(Duration::from_secs(5)).await;
    kill(cluster.coord.id(), "CONT");
    let resumed = std::time::Instant::now();
    let served = load.wait_for(Duration::from_secs(5), |e| e.invoke >= resumed && answered(e));
    assert!(served.await, "served again after the pause");
    let log = cluster.coord_log();
    assert!(!log.contains("server lost"), "{log}");
    for id in 0..3 {
        let back = format!("{} id={id}", ftkv::lines::REATTACHED_TO_US);
        assert!(log.contains(&back), "server {id} came back: {log}");
    }
    let status = tokio::task::block_in_place(|| cluster.status());
    let now: Vec<u32> =
        (0..3).map(|id| status["servers"][id]["pid"].as_u64().unwrap() as u32).collect();
    assert_eq!(now, pids);
    let Checked { finals, .. } = stop_and_check(cluster.coord_addr(), load).await;
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
    cluster.assert_dumps_match(&finals);
}

/// A server that died while no coordinator ran (killed between the coordinator's death and
/// its restart) is recovered as a single fault by the new coordinator: histories stay
/// linearizable and every key ends with its two copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_died_meanwhile_is_recovered_as_a_single_fault() {
    let mut cluster = Cluster::start_with(3, &FLAGS);
    let load = Load::start(cluster.coord_addr(), 4, 100, Duration::from_secs(10));
    load.under_way().await;
    let current = tokio::task::block_in_place(|| epoch(&cluster));
    let dead = cluster.pids[1];
    cluster.kill_coord();
    kill(dead, "KILL");
    tokio::task::block_in_place(|| {
        cluster.restart_coord(&FLAGS);
        let status = cluster.wait_recovered(current + 1, Duration::from_secs(20));
        assert_ne!(status["servers"][1]["pid"].as_u64().unwrap() as u32, dead, "replaced");
    });
    assert!(cluster.coord_log().contains("did not come back"));
    let Checked { finals, .. } = stop_and_check(cluster.coord_addr(), load).await;
    assert!(tokio::task::block_in_place(|| cluster.ctrl_d()).success());
    cluster.assert_dumps_match(&finals);
}

/// Two servers that died while no coordinator ran are a double fault: the new coordinator
/// stops the survivor in order (its dumps written) and exits 1 naming them.
#[test]
fn two_servers_that_died_meanwhile_are_a_double_fault() {
    let mut cluster = Cluster::start_with(3, &FLAGS);
    let survivor = cluster.pids[2];
    cluster.kill_coord();
    kill(cluster.pids[0], "KILL");
    kill(cluster.pids[1], "KILL");
    let out = coord_in(cluster.dir.path(), "coord.log")
        .arg("--ignore-stdin")
        .args(FLAGS)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("servers [0, 1] did not come back"), "{stderr}");
    assert!(stderr.contains(ftkv::lines::TWO_FAULTS), "{stderr}");
    assert!(support::cluster::wait_until(Duration::from_secs(5), || !support::cluster::alive(
        survivor
    )));
    assert!(
        cluster.path("server_2.primary").exists() && cluster.path("server_2.secondary").exists()
    );
}
