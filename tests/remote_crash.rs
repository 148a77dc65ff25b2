//! Crashes with servers on other hosts (network-namespace hosts with a real sshd each,
//! servers started by `coord` over ssh; see tests/remote.rs): under load, every process of
//! one server's host killed with `kill -9` (a single fault: recovered over ssh, nothing
//! lost), then every process of the whole set at once, the coordinator included, and the
//! same `coord` command again: each server starts on its own host from its own log (nothing
//! crosses the network), and every acknowledged write is back. Needs root (skips with a
//! message otherwise).

mod support;

use std::time::{Duration, Instant};

use ftkv::lines;
use ftkv::routing::slot_of;
use support::cluster::{Cluster, alive, wait_until};
use support::history::{Event, lost_acknowledged_writes};
use support::load::{Checked, Load, answered, stop_and_check};
use support::netns::{Hosts, run_in};
use support::remote::{
    CLIENTS_HOST, N, assert_remote_dumps, load_runtime, remote_cluster, remote_flags,
};

/// A client's patience across a crash and a start from the logs (ssh starts included).
const TIMEOUT: Duration = Duration::from_secs(30);

/// `kill -9` of `pids`, then waits until none of them runs.
fn kill_all(pids: &[u32]) {
    for &pid in pids {
        // SAFETY: kill(2) of a test host's process; no memory is involved.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let gone = wait_until(Duration::from_secs(10), || pids.iter().all(|&pid| !alive(pid)));
    assert!(gone, "{pids:?} still running after kill -9");
}

/// A crash of host `i`: every process on it (its server) killed at once.
fn crash_host(hosts: &Hosts, i: usize) {
    let pids = hosts.processes(i);
    assert!(!pids.is_empty(), "host {i} runs its server");
    kill_all(&pids);
}

/// A crash of every process of the set at the same moment: the coordinator (its process
/// group) and everything on the servers' hosts.
fn crash_everything(cluster: &mut Cluster, hosts: &Hosts) {
    let servers: Vec<u32> = (0..N).map(|id| cluster.pid_of(id)).collect();
    let on_hosts: Vec<u32> = (1..=N as usize).flat_map(|i| hosts.processes(i)).collect();
    assert!(servers.iter().all(|pid| on_hosts.contains(pid)), "{servers:?} on the hosts");
    // SAFETY: kill(2) of the cluster's own process group.
    unsafe { libc::kill(-(cluster.coord_group() as i32), libc::SIGKILL) };
    kill_all(&on_hosts);
    let _ = cluster.coord.wait();
}

/// (a) host 2 (server 1) crashes under load: it is started again over ssh on its host and
/// serves its keys. (b) Every process of the set crashes at once: the same `coord` starts
/// every server again on its host from the log kept there (the coordinator's directory
/// holds none), the load's every acknowledged write is read back, the histories spanning
/// both crashes are linearizable, and the next ctrl+d dumps the final values on the hosts.
#[test]
fn a_host_crash_then_a_crash_of_every_process_lose_nothing_acknowledged() {
    let Some(hosts) = Hosts::up("ftkv-rc", 4) else { return };
    let victim = 1u32;
    let flags = remote_flags(&hosts);
    let cluster = remote_cluster(&hosts);
    let (mut cluster, hosts, finals) = run_in(&hosts.ns(CLIENTS_HOST), move || {
        load_runtime().block_on(async move {
            let mut cluster = cluster;
            let load = Load::start(cluster.coord_addr(), 4, 100, TIMEOUT);
            load.under_way().await;

            let (old_pid, epoch) = tokio::task::block_in_place(|| {
                let status = cluster.status();
                (cluster.pid_of(victim), status["epoch"].as_u64().unwrap())
            });
            tokio::task::block_in_place(|| crash_host(&hosts, victim as usize + 1));
            let now = tokio::task::block_in_place(|| cluster.wait_recovered(epoch, TIMEOUT * 2));
            let new_pid = now["servers"][victim as usize]["pid"].as_u64().unwrap() as u32;
            assert_ne!(new_pid, old_pid, "a new server");
            assert_eq!(Hosts::namespace_of(new_pid), hosts.ns(victim as usize + 1));
            let recovered = Instant::now();
            let on_new_server =
                |e: &Event| e.invoke >= recovered && answered(e) && slot_of(&e.key, N) == victim;
            assert!(load.wait_for(TIMEOUT, on_new_server).await, "the new server serves");

            load.completes(1000, TIMEOUT).await;
            tokio::task::block_in_place(|| {
                crash_everything(&mut cluster, &hosts);
                cluster.restart_coord(&flags.iter().map(String::as_str).collect::<Vec<_>>());
            });
            let restored = cluster.restored.clone().unwrap_or_default();
            assert!(restored.ends_with("from the servers' logs"), "{restored:?}");
            let said = cluster.coord_log();
            assert!(said.contains(lines::FROM_LOGS), "{said}");
            for id in 0..N {
                let file = hosts.remote_dir().join(format!("server_{id}.aof"));
                assert!(said.contains(&format!("from {}", file.display())), "{id}: {said}");
                let pid = cluster.pids[id as usize];
                assert_eq!(Hosts::namespace_of(pid), hosts.ns(id as usize + 1), "{id}'s host");
            }
            let shipped = cluster.files().into_keys().filter(|name| name.ends_with(".aof"));
            assert_eq!(shipped.collect::<Vec<_>>(), Vec::<String>::new(), "nothing shipped");

            load.answered_since(Some(Instant::now()), TIMEOUT).await;
            let Checked { events, finals, .. } = stop_and_check(cluster.coord_addr(), load).await;
            assert!(finals.values().any(Option::is_some), "the load wrote");
            assert_eq!(lost_acknowledged_writes(&events, &finals), Vec::<Vec<u8>>::new());
            (cluster, hosts, finals)
        })
    });
    assert!(cluster.ctrl_d().success());
    assert_remote_dumps(&hosts, &finals);
}
