//! Standby coordinators elected through a real etcd (one member on loopback, tuned so that
//! a lease can be 1 s): the leader killed under load, paused past its lease, killed with a
//! server, and killed during a recovery. Each time a standby leads, the servers are taken
//! back (same pids), nothing acknowledged is lost, and every key's history is linearizable.

mod support;

use std::time::{Duration, Instant};

use ftkv::lines;
use support::cluster::{Cluster, kill, wait_until};
use support::etcd::Etcd;
use support::load::{Load, stop_and_check};
use support::standby::{Standby, etcd_flags};

/// A leader and one standby on `etcd`; returns once the standby names the leader.
fn cluster_with_standby(etcd: &Etcd, name: &str) -> (Cluster, Standby) {
    let flags = etcd_flags(&etcd.urls(), name);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = Cluster::start_with(3, &args);
    let mut standby = cluster.spawn_standby(1, &flags);
    let leads = format!("{}: {} leads", lines::STANDBY, cluster.coord_addr());
    standby.await_line(&leads, Duration::from_secs(10));
    // The servers learn of the standby from their leases: wait until the leader lists it,
    // and every server logged the list with it.
    let listed = wait_until(Duration::from_secs(5), || {
        let standbys = &cluster.status()["coordinators"]["standbys"];
        standbys.as_array().is_some_and(|s| s.iter().any(|a| *a == standby.addr()))
    });
    assert!(listed, "the leader lists its standby: {}", cluster.status());
    cluster.await_servers_know(&standby, cluster.dir.path());
    (cluster, standby)
}

/// The cluster token in the state etcd holds for cluster `name`.
async fn cluster_token(etcd: &Etcd, name: &str) -> Vec<u8> {
    let mut client = etcd_client::Client::connect([etcd.urls()], None).await.unwrap();
    let state = client.get(format!("/ftkv/{name}/state"), None).await.unwrap();
    let state: serde_json::Value = serde_json::from_slice(state.kvs()[0].value()).unwrap();
    state["state"]["token_hex"].as_str().unwrap().as_bytes().to_vec()
}

/// The standby's status, through the client library: who leads, and the servers' pids.
async fn status_via(addrs: &str) -> ftkv::protocol::StatusReport {
    let mut client = ftkv::client::Client::new(addrs.to_string(), Duration::from_secs(10));
    client.status().await.expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_leader_is_killed_under_load() {
    let Some(etcd) = Etcd::start() else { return };
    let (mut cluster, mut standby) = cluster_with_standby(&etcd, "killed");
    let addrs = cluster.coord_addrs(&[&standby]);
    let pids = cluster.server_pids();
    let load = Load::start(addrs.clone(), 8, 40, Duration::from_secs(10));
    load.under_way().await;

    let killed = Instant::now();
    cluster.kill_coord();
    standby.await_line(lines::LEADING, Duration::from_secs(10));
    standby.await_line("cluster ready", Duration::from_secs(10));
    let took = killed.elapsed();
    load.answered_since(Some(Instant::now()), Duration::from_secs(10)).await;
    let checked = stop_and_check(addrs.clone(), load).await;

    assert_eq!(cluster.server_pids(), pids, "the same servers, taken back");
    assert!(checked.checked > 0);
    let status = status_via(&addrs).await;
    let leadership = status.coordinators.expect("the leader names itself");
    assert_eq!(leadership.leader, standby.addr());
    assert_eq!(leadership.cluster, "killed");
    assert!(took < Duration::from_secs(8), "took over in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_does_nothing_on_waking_and_stands_by() {
    let Some(etcd) = Etcd::start() else { return };
    let (mut cluster, mut standby) = cluster_with_standby(&etcd, "paused");
    let addrs = cluster.coord_addrs(&[&standby]);
    let pids = cluster.server_pids();
    let load = Load::start(addrs.clone(), 6, 40, Duration::from_secs(15));
    load.under_way().await;

    let leader = cluster.coord.id();
    kill(leader, "STOP");
    standby.await_line("cluster ready", Duration::from_secs(15));
    let epoch = status_via(&standby.addr()).await.epoch;
    let log_before = cluster.coord_log().len();
    kill(leader, "CONT");
    let stepped = cluster.await_line(lines::STEPPED_DOWN, Duration::from_secs(5));
    assert!(stepped.contains("lease"), "stepped down for its lease: {stepped}");
    let standing = format!("{}: {} leads", lines::STANDBY, standby.addr());
    cluster.await_line(&standing, Duration::from_secs(10));
    load.answered_since(Some(Instant::now()), Duration::from_secs(10)).await;
    let checked = stop_and_check(addrs.clone(), load).await;

    // Woken, it acted on nothing: no server killed or started, no configuration installed.
    let woke = &cluster.coord_log()[log_before..];
    for acted in ["server spawned", "killing", "configuration installed", lines::TOOK_BACK] {
        assert!(!woke.contains(acted), "the old leader logged {acted:?} after waking:\n{woke}");
    }
    assert_eq!(cluster.server_pids(), pids);
    let status = status_via(&addrs).await;
    assert_eq!(status.epoch, epoch, "the configuration is the new leader's");
    assert_eq!(status.coordinators.unwrap().leader, standby.addr());
    assert!(checked.checked > 0);
    assert!(wait_until(Duration::from_secs(1), || support::cluster::alive(leader)), "same pid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_the_leader_is_recovered_by_the_next() {
    let Some(etcd) = Etcd::start() else { return };
    let (mut cluster, mut standby) = cluster_with_standby(&etcd, "both");
    let addrs = cluster.coord_addrs(&[&standby]);
    let load = Load::start(addrs.clone(), 6, 40, Duration::from_secs(15));
    load.under_way().await;

    let victim = cluster.pid_of(1);
    cluster.kill_coord();
    kill(victim, "KILL");
    standby.await_line("cluster ready", Duration::from_secs(15));
    standby.await_log(lines::RECOVERED, Duration::from_secs(20));
    load.answered_since(Some(Instant::now()), Duration::from_secs(10)).await;
    let checked = stop_and_check(addrs.clone(), load).await;

    let status = status_via(&addrs).await;
    assert!(status.servers.iter().all(|s| s.state == ftkv::protocol::ServerState::Running));
    assert_ne!(status.servers[1].pid, victim, "server 1 replaced");
    assert!(checked.checked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_a_recovery_leaves_it_to_the_next() {
    let Some(etcd) = Etcd::start() else { return };
    let (mut cluster, mut standby) = cluster_with_standby(&etcd, "recovering");
    let addrs = cluster.coord_addrs(&[&standby]);
    // Enough data that the copy (recovery steps 2-4) takes a while.
    let mut client = cluster.client();
    for i in 0..60 {
        client.put(format!("big-{i}").as_bytes(), &vec![b'v'; 512 << 10]).await.unwrap();
    }
    let load = Load::start(addrs.clone(), 4, 40, Duration::from_secs(15));
    load.under_way().await;

    kill(cluster.pid_of(2), "KILL");
    // Killed while the recovery runs.
    let recovering = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(5), || !cluster.status()["recovery"].is_null())
    });
    assert!(recovering, "the leader began a recovery");
    cluster.kill_coord();
    standby.await_line("cluster ready", Duration::from_secs(15));
    standby.await_log(lines::RECOVERED, Duration::from_secs(20));
    load.answered_since(Some(Instant::now()), Duration::from_secs(10)).await;
    let checked = stop_and_check(addrs.clone(), load).await;

    let status = status_via(&addrs).await;
    assert!(status.servers.iter().all(|s| s.state == ftkv::protocol::ServerState::Running));
    assert!(status.recovery.is_none());
    assert!(checked.checked > 0);
}

/// Hostile input on a standby's two ports (random bytes, a huge length prefix, a cut frame,
/// a peer that connects and says nothing, a server hello with a wrong token): the standby
/// still answers a client with the leader's address, and still takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_shrugs_off_garbage_on_its_ports_and_still_takes_over() {
    use tokio::io::AsyncWriteExt;
    let Some(etcd) = Etcd::start() else { return };
    let (mut cluster, mut standby) = cluster_with_standby(&etcd, "garbage");
    let servers_port = standby.servers_port;
    let mut silent = Vec::new();
    for port in [standby.clients_port, servers_port] {
        let huge = [u32::MAX.to_be_bytes().to_vec(), vec![1; 64]].concat();
        let cut = vec![0, 0, 0, 100, 1, 2];
        for bytes in [vec![0x5au8; 4096], huge, cut] {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = stream.write_all(&bytes).await;
                let _ = stream.shutdown().await;
            }
        }
        silent.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let started = ftkv::protocol::ReportRequest::Started {
        ports: ftkv::protocol::BoundPorts { client: 1, servers: 2, control: 3 },
        pid: 1,
        incarnation: 0,
        epoch: 0,
    };
    let report_to_standby = |token: Vec<u8>| {
        let started = started.clone();
        async move {
            let hello = ftkv::protocol::Hello::new(
                ftkv::protocol::Role::Server { id: 0, incarnation: 0 },
                &token,
            );
            let addr = format!("127.0.0.1:{servers_port}");
            let mut conn = ftkv::connection::Connection::connect(&addr, &hello).await.unwrap();
            conn.call::<_, ftkv::protocol::ReportResponse>(&started, Duration::from_secs(2), "")
                .await
        }
    };
    let forged = report_to_standby(b"not the token".to_vec()).await;
    assert!(forged.is_err(), "a wrong token gets no answer: {forged:?}");
    // With the cluster's token (from the state in etcd), the leader's servers port.
    let token = cluster_token(&etcd, "garbage").await;
    let redirected = report_to_standby(token).await.expect("an answer to the right token");
    let leader = format!("127.0.0.1:{}", cluster.servers_port);
    assert_eq!(redirected, ftkv::protocol::ReportResponse::NotLeader { leader: Some(leader) });

    let status = status_via(&standby.addr()).await;
    assert_eq!(status.coordinators.unwrap().leader, cluster.coord_addr(), "redirected");
    cluster.kill_coord();
    standby.await_line("cluster ready", Duration::from_secs(15));
    let mut client = ftkv::client::Client::new(standby.addr(), Duration::from_secs(10));
    client.put(b"after", b"garbage").await.unwrap();
    assert_eq!(client.get(b"after").await.unwrap().as_deref(), Some(&b"garbage"[..]));
    drop(silent);
}

/// Ctrl+d to a standby stops it alone; ctrl+d to the leader stops the service (dumps
/// written), and a standby waiting then exits too instead of starting it again empty.
#[test]
fn ctrl_d_stops_a_standby_alone_and_the_leaders_stops_every_coordinator() {
    let Some(etcd) = Etcd::start() else { return };
    let (mut cluster, mut first) = cluster_with_standby(&etcd, "stops");
    first.close_stdin();
    first.await_line(
        &format!("{}: stopping on end of standard input", lines::STANDBY),
        Duration::from_secs(5),
    );
    assert!(first.coord.wait().unwrap().success());
    let pids = cluster.server_pids();
    assert_eq!(pids.len(), 3, "the service runs on");

    let flags = etcd_flags(&etcd.urls(), "stops");
    let mut second = cluster.spawn_standby(2, &flags);
    second.await_line(
        &format!("{}: {} leads", lines::STANDBY, cluster.coord_addr()),
        Duration::from_secs(10),
    );
    assert!(cluster.ctrl_d().success());
    second.await_line(lines::CLUSTER_WAS_STOPPED, Duration::from_secs(10));
    assert!(second.coord.wait().unwrap().success());
    assert!(cluster.path("dumps.manifest").exists(), "the leader's stop wrote the dumps");
    assert!(cluster.server_pids().is_empty(), "no server was started again");
}

/// The leader's election key deleted behind its back (as if its lease had been lost for a
/// moment): the standby is elected, and the old leader, which still believes it leads,
/// finds out at its next write of the state, which the guard refuses. It steps down, and
/// the new leader takes the servers back and recovers the one killed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_guarded_write_fails_steps_down() {
    let Some(etcd) = Etcd::start() else { return };
    let (mut cluster, mut standby) = cluster_with_standby(&etcd, "deposed");
    let addrs = cluster.coord_addrs(&[&standby]);
    let load = Load::start(addrs.clone(), 4, 40, Duration::from_secs(15));
    load.under_way().await;

    let mut client = etcd_client::Client::connect([etcd.urls()], None).await.unwrap();
    let sorted = etcd_client::GetOptions::new()
        .with_prefix()
        .with_sort(etcd_client::SortTarget::Create, etcd_client::SortOrder::Ascend);
    let keys = client.get("/ftkv/deposed/leader/", Some(sorted)).await.unwrap();
    let leader_key = keys.kvs()[0].key().to_vec();
    client.delete(leader_key, None).await.unwrap();
    standby.await_line(lines::LEADING, Duration::from_secs(5));
    // A loss makes the old leader write the state.
    kill(cluster.pid_of(1), "KILL");
    let stepped = cluster.await_line(lines::STEPPED_DOWN, Duration::from_secs(5));
    assert!(stepped.contains("guarded write"), "{stepped}");
    standby.await_log(lines::RECOVERED, Duration::from_secs(30));
    load.answered_since(Some(Instant::now()), Duration::from_secs(10)).await;
    let checked = stop_and_check(addrs.clone(), load).await;

    let status = status_via(&addrs).await;
    assert_eq!(status.coordinators.unwrap().leader, standby.addr());
    assert!(status.servers.iter().all(|s| s.state == ftkv::protocol::ServerState::Running));
    assert!(checked.checked > 0);
}

/// etcd lost while a coordinator leads: it waits out its lapsed authority, steps down,
/// waits for etcd as a standby; etcd back, a coordinator leads again with the same
/// servers, and every client is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_lost_and_back_the_same_servers_are_led_again() {
    let Some(mut etcd) = Etcd::start() else { return };
    let (mut cluster, standby) = cluster_with_standby(&etcd, "etcdgone");
    let addrs = cluster.coord_addrs(&[&standby]);
    let pids = cluster.server_pids();
    let load = Load::start(addrs.clone(), 4, 40, Duration::from_secs(20));
    load.under_way().await;

    etcd.stop();
    let stepped = cluster.await_line(lines::STEPPED_DOWN, Duration::from_secs(10));
    assert!(stepped.contains("starting again as a standby"), "{stepped}");
    cluster.await_line("waiting for etcd at", Duration::from_secs(10));
    etcd.restart();
    let back = Instant::now();
    load.answered_since(Some(back), Duration::from_secs(20)).await;
    let checked = stop_and_check(addrs.clone(), load).await;

    assert_eq!(cluster.server_pids(), pids, "the same servers, led again");
    assert!(status_via(&addrs).await.coordinators.is_some(), "a coordinator leads");
    assert!(checked.checked > 0);
}

/// Told to stop while etcd is gone: the leader cannot write the stopped state, steps down,
/// and exits (status 1) instead of coming back as a standby that forgot the stop.
#[test]
fn a_leader_stopped_while_etcd_is_gone_exits_instead_of_standing_by() {
    let Some(mut etcd) = Etcd::start() else { return };
    let (mut cluster, _standby) = cluster_with_standby(&etcd, "stopgone");
    etcd.stop();
    cluster.close_stdin();
    let exit = cluster.wait_coord(Duration::from_secs(20)).expect("the leader exits");
    assert_eq!(exit.code(), Some(1));
    let stepped = cluster.await_line(lines::STEPPED_DOWN, Duration::from_secs(1));
    assert!(stepped.contains("it was shutting down: exiting"), "{stepped}");
    let lines: Vec<String> = cluster.stdout.try_iter().collect();
    assert!(
        !lines.iter().any(|l| l.starts_with("ftkv coordinator:")),
        "not started again: {lines:?}"
    );
}
