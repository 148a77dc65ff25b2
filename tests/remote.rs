//! Servers on other hosts: network namespaces with a real sshd each, servers started by
//! `coord` over ssh. Host 0 runs the coordinator, hosts 1-3 the servers, host 4 the clients.
//! Needs root (skips with a message otherwise; CI runs as root).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ftkv::lines;
use ftkv::routing::{secondary_of, slot_of};
use support::cluster::{Cluster, alive, kill, read_dump, wait_until};
use support::history::{Event, Op as HistOp};
use support::load::{Checked, Load, answered, stop_and_check};
use support::netns::{Hosts, addr, run_in};

const N: u32 = 3;
const CLIENTS_HOST: usize = 4;

/// The coordinator's flags for servers over ssh on `hosts`.
fn remote_flags(hosts: &Hosts) -> Vec<String> {
    let remote_dir = hosts.remote_dir().to_str().unwrap().to_string();
    ["-t", "1", "--ssh-args", &hosts.ssh_args(), "--remote-dir", &remote_dir]
        .map(String::from)
        .to_vec()
}

/// A 3-server cluster over ssh on `hosts`, the coordinator on host 0, clients on host 4.
fn remote_cluster(hosts: &Hosts) -> Cluster {
    let flags = remote_flags(hosts);
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::launch(&hosts.config(N as usize), &hosts.on(0), &extra);
    cluster.coord_host = addr(0);
    cluster.client_prefix = hosts.on(CLIENTS_HOST);
    cluster
}

/// The runtime the load runs on, inside the clients' host.
fn load_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Every final value is on its owner's primary dump and its secondary's dump (on the hosts).
fn assert_remote_dumps(hosts: &Hosts, finals: &HashMap<Vec<u8>, Option<Vec<u8>>>) {
    let dump =
        |id: u32, kind: &str| read_dump(&hosts.remote_dir().join(format!("server_{id}.{kind}")));
    let primaries: Vec<_> = (0..N).map(|id| dump(id, "primary")).collect();
    let secondaries: Vec<_> = (0..N).map(|id| dump(id, "secondary")).collect();
    for (key, value) in finals {
        let owner = slot_of(key, N);
        assert_eq!(primaries[owner as usize].get(key), value.as_ref(), "primary of {owner}");
        let copy = secondary_of(owner, N) as usize;
        assert_eq!(secondaries[copy].get(key), value.as_ref(), "secondary on {copy}");
    }
}

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

/// Only the link between server 0 and its copy (server 1) cut, both still reaching the
/// coordinator and the clients. Nothing is replaced: server 0 cannot acknowledge a write it
/// cannot copy, so its writes end as `Outcome unknown` until the link heals (never as
/// stored), while reads of its keys and everything on the other slots go on; after healing,
/// the queued writes reach the copy and new ones are acknowledged again.
#[test]
fn a_cut_between_a_server_and_its_copy_holds_its_writes_until_it_heals() {
    let Some(hosts) = Hosts::up("ftkv-f", 4) else { return };
    let cut_slot = 0u32;
    let (owner_host, copy_host) = (cut_slot as usize + 1, secondary_of(cut_slot, N) as usize + 1);
    let mut cluster = remote_cluster(&hosts);
    let pids_now = |cluster: &Cluster| (0..N).map(|id| cluster.pid_of(id)).collect::<Vec<_>>();
    let pids = pids_now(&cluster);
    let coordinator = cluster.coord_addr();
    let clients_ns = hosts.ns(CLIENTS_HOST);
    let is_write = |e: &&Event| !matches!(e.op, HistOp::Get);
    let (Checked { events, keys, finals, .. }, (cut_at, cut_until), healed_at, hosts) =
        run_in(&clients_ns, move || {
            let runtime = load_runtime();
            runtime.block_on(async move {
                let load = Load::start(coordinator.clone(), 8, 30, Duration::from_secs(10));
                load.under_way().await;
                // The windows are taken after the rules are in place and before they are lifted:
                // under load, starting `nft` can take a good part of a second.
                hosts.cut_between(owner_host, copy_host);
                let cut_at = Instant::now();
                // The cut lasts 5 s (the point of the test).
                tokio::time::sleep(Duration::from_secs(5)).await;
                let cut_until = Instant::now();
                hosts.heal_between(owner_host);
                let healed_at = Instant::now();
                let acknowledged = |e: &Event| {
                    e.invoke >= healed_at
                        && slot_of(&e.key, N) == cut_slot
                        && is_write(&e)
                        && answered(e)
                };
                let back = load.wait_for(Duration::from_secs(10), acknowledged).await;
                assert!(back, "writes to the cut slot are acknowledged again after healing");
                let checked = stop_and_check(coordinator, load).await;
                (checked, (cut_at, cut_until), healed_at, hosts)
            })
        });
    let settled = cut_at + Duration::from_millis(200);
    let during = |e: &&Event| e.ret > settled && e.ret < cut_until;
    // Sent while the link was cut (one sent before may have been copied before).
    let sent_during = |e: &&Event| e.invoke > cut_at && e.ret < cut_until;
    let cut_keys: Vec<Vec<u8>> =
        keys.iter().filter(|k| slot_of(k, N) == cut_slot).cloned().collect();
    let on_cut = |e: &&Event| cut_keys.contains(&e.key);
    let ok = |e: &&Event| answered(e);
    let stored = events.iter().filter(sent_during).filter(on_cut).filter(is_write).find(ok);
    assert!(
        stored.is_none(),
        "a write to the cut slot was acknowledged without its copy: sent {:?} after the cut, \
         answered {:?} after: {stored:?}",
        stored.map(|e| e.invoke - cut_at),
        stored.map(|e| e.ret - cut_at),
    );
    assert!(
        events.iter().filter(during).filter(on_cut).filter(is_write).count() > 0,
        "writes to the cut slot were tried"
    );
    assert!(
        events.iter().filter(during).filter(on_cut).filter(|e| !is_write(e)).any(|e| ok(&e)),
        "reads of the cut slot go on"
    );
    assert!(
        events.iter().filter(during).filter(|e| !on_cut(e)).filter(is_write).any(|e| ok(&e)),
        "writes to the other slots go on"
    );
    let back = events
        .iter()
        .filter(|e| e.invoke >= healed_at && on_cut(e) && is_write(e) && ok(e))
        .map(|e| e.ret - healed_at)
        .min()
        .expect("writes to the cut slot are acknowledged again after healing");
    println!("writes to the cut slot acknowledged again {back:?} after healing");
    assert_eq!(pids_now(&cluster), pids, "nothing was replaced");
    assert!(cluster.ctrl_d().success());
    assert_remote_dumps(&hosts, &finals);
}
