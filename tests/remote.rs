//! Servers on other hosts: network namespaces with a real sshd each, servers started by
//! `coord` over ssh. Host 0 runs the coordinator, hosts 1-3 the servers, host 4 the clients.
//! Needs root (skips with a message otherwise; CI runs as root).

mod support;

use std::time::{Duration, Instant};

use ftkv::lines;
use ftkv::routing::slot_of;
use support::cluster::{Cluster, alive, kill, wait_until};
use support::history::Event;
use support::load::{Checked, Load, answered, stop_and_check};
use support::netns::{Hosts, addr, run_in};
use support::remote::{
    CLIENTS_HOST, N, assert_remote_dumps, load_runtime, remote_cluster, remote_flags,
};

/// Serve, dump on their hosts at ctrl+d, and restore in place at the next start: each
/// server loads its own files on its host (the coordinator holds only the manifest).
#[test]
fn servers_started_over_ssh_serve_dump_and_restore_on_their_hosts() {
    let Some(hosts) = Hosts::up("ftkv-a", 4) else { return };
    let mut cluster = remote_cluster(&hosts);
    for id in 0..N {
        let pid = cluster.pids[id as usize];
        assert_eq!(
            Hosts::namespace_of(pid),
            hosts.ns(id as usize + 1),
            "server {id} runs on its host"
        );
    }
    let mut script = String::new();
    for i in 0..50 {
        script.push_str(&format!("P \"k{i}\" \"v{i}\"\n"));
    }
    let run = cluster.run_client(&[], &script);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = cluster.run_client(&["G", "k7"], "");
    assert_eq!((run.code, run.stdout.as_str()), (0, "value[\"k7\"] == \"v7\"\n"));
    let status = cluster.status();
    assert_eq!(status["servers"][0]["host"], addr(1));

    assert!(cluster.ctrl_d().success());
    let pids = cluster.pids.clone();
    assert!(wait_until(Duration::from_secs(3), || pids.iter().all(|&p| !alive(p))));
    let finals = (0..50)
        .map(|i| (format!("k{i}").into_bytes(), Some(format!("v{i}").into_bytes())))
        .collect();
    assert_remote_dumps(&hosts, &finals);
    let log = std::fs::read_to_string(hosts.remote_dir().join("server_0.log")).unwrap();
    assert!(log.contains(lines::DUMPS_WRITTEN), "the remote log says where the dumps went");

    let flags = remote_flags(&hosts);
    cluster.restart_coord(&flags.iter().map(String::as_str).collect::<Vec<_>>());
    let restored = cluster.restored.clone().unwrap_or_default();
    assert!(restored.starts_with("restored 50 keys"), "{restored}");
    let run = cluster.run_client(&["G", "k7"], "");
    assert_eq!((run.code, run.stdout.as_str()), (0, "value[\"k7\"] == \"v7\"\n"));
    assert!(cluster.ctrl_d().success());
    let pids = cluster.pids.clone();
    assert!(wait_until(Duration::from_secs(3), || pids.iter().all(|&p| !alive(p))));
    assert_remote_dumps(&hosts, &finals);
}

/// Runs load from the clients' host while `fault` hits server `victim`, waits `hold`,
/// runs `heal`, waits for full recovery, and checks the histories and the dumps.
fn fault_under_load(
    hosts: Hosts,
    victim: u32,
    hold: Duration,
    fault: impl FnOnce(&Cluster, &Hosts, u32) + Send + 'static,
    heal: impl FnOnce(&Cluster, &Hosts) + Send + 'static,
) -> (Cluster, Hosts) {
    let cluster = remote_cluster(&hosts);
    run_in(&hosts.ns(CLIENTS_HOST), move || {
        let runtime = load_runtime();
        let cluster = runtime.block_on(async move {
            let load = Load::start(cluster.coord_addr(), 4, 100, Duration::from_secs(10));
            load.under_way().await;
            let old_pid = tokio::task::block_in_place(|| cluster.pid_of(victim));
            fault(&cluster, &hosts, old_pid);
            // The fault lasts `hold` (the point of the test).
            tokio::time::sleep(hold).await;
            heal(&cluster, &hosts);
            let now =
                tokio::task::block_in_place(|| cluster.wait_recovered(1, Duration::from_secs(40)));
            let new_pid = now["servers"][victim as usize]["pid"].as_u64().unwrap() as u32;
            assert_ne!(new_pid, old_pid, "a new server");
            assert_eq!(
                Hosts::namespace_of(new_pid),
                hosts.ns(victim as usize + 1),
                "respawned on its host"
            );
            let recovered = Instant::now();
            let on_new_server =
                |e: &Event| e.invoke >= recovered && answered(e) && slot_of(&e.key, N) == victim;
            let served = load.wait_for(Duration::from_secs(10), on_new_server).await;
            assert!(served, "the new server serves its keys");
            let Checked { finals, .. } = stop_and_check(cluster.coord_addr(), load).await;
            (cluster, hosts, finals)
        });
        let (mut cluster, hosts, finals) = cluster;
        assert!(cluster.ctrl_d().success());
        assert_remote_dumps(&hosts, &finals);
        (cluster, hosts)
    })
}

#[test]
fn killed_remote_server_is_respawned_over_ssh() {
    let Some(hosts) = Hosts::up("ftkv-b", 4) else { return };
    fault_under_load(
        hosts,
        1,
        Duration::from_millis(100),
        |_, _, pid| kill(pid, "KILL"),
        |_, _| {},
    );
}

#[test]
fn a_partitioned_host_is_fenced_and_replaced_after_healing() {
    let Some(hosts) = Hosts::up("ftkv-c", 4) else { return };
    let victim = 1u32;
    let cut_pid = std::sync::Arc::new(std::sync::Mutex::new(0));
    let (pid_in, pid_out) = (cut_pid.clone(), cut_pid.clone());
    let began = Instant::now();
    let (cluster, _hosts) = fault_under_load(
        hosts,
        victim,
        Duration::from_secs(6),
        move |_, hosts, pid| {
            *pid_in.lock().unwrap() = pid;
            hosts.cut(victim as usize + 1);
        },
        move |cluster, hosts| {
            // While cut off: the old server stopped serving and exited on its own (after
            // its lease and the grace period); the coordinator could not start a new one.
            let pid = *pid_out.lock().unwrap();
            assert!(wait_until(Duration::from_secs(3), || !alive(pid)), "the cut-off server exits");
            let s = tokio::task::block_in_place(|| cluster.status());
            assert_eq!(s["recovery"]["server"], victim, "{s}");
            assert!(
                cluster.coord_log().contains(lines::SSH_FAILED)
                    || cluster.coord_log().contains("timed out")
            );
            hosts.heal(victim as usize + 1);
        },
    );
    assert!(cluster.coord_log().contains(lines::ROLLING_BACK));
    println!("partition test took {:?}", began.elapsed());
}

#[test]
fn a_server_cut_from_the_coordinator_only_is_fenced_and_replaced() {
    let Some(hosts) = Hosts::up("ftkv-d", 4) else { return };
    let victim = 2u32;
    fault_under_load(
        hosts,
        victim,
        Duration::from_secs(6),
        move |_, hosts, _| hosts.cut_between(victim as usize + 1, 0),
        move |_, hosts| hosts.heal_between(victim as usize + 1),
    );
}

#[test]
fn a_paused_remote_server_is_killed_over_ssh_and_replaced() {
    let Some(hosts) = Hosts::up("ftkv-e", 4) else { return };
    let paused = std::sync::Arc::new(std::sync::Mutex::new(0));
    let (pid_in, pid_out) = (paused.clone(), paused.clone());
    fault_under_load(
        hosts,
        0,
        Duration::from_secs(2),
        move |_, _, pid| {
            *pid_in.lock().unwrap() = pid;
            kill(pid, "STOP");
        },
        move |_, _| {
            // Step 1 killed it over ssh (SIGKILL ends even a stopped process).
            let pid = *pid_out.lock().unwrap();
            assert!(wait_until(Duration::from_secs(5), || !alive(pid)), "killed over ssh");
        },
    );
}
