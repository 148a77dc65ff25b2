//! The coordinator dies (kill -9) and nobody restarts it: servers outlive it for their orphan
//! timeout (still alive, serving no client once their leases end), then write their dumps
//! and exit; clients fail at their deadline with a clear message instead of at once.
//! (A coordinator restarted in time takes the servers back: a test of its own, with the
//! coordinator's state file.)

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ftkv::client::OpError;
use ftkv::connection::Connection;
use ftkv::lines;
use ftkv::protocol::{Hello, ReportRequest, ReportResponse, Role};
use ftkv::routing::{secondary_of, slot_of};
use support::cluster::{Cluster, alive, wait_until};
use support::history::{Event, Op, Outcome, check_all, lost_acknowledged_writes};
use support::load::Load;

const N: u32 = 3;
/// `--orphan-timeout` of these tests.
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(3);
/// The servers' lease with the default `coord -t 1`: half the timeout.
const LEASE: Duration = Duration::from_millis(500);
/// What a client says when the coordinator cannot be reached.
const UNREACHABLE: &str = "is unreachable (restarting or down)";

/// kill -9 of the coordinator, then a SIGHUP to its process group (a closed terminal): every
/// server lives on with the same pid past its lease and serves no client after it, then all
/// exit within the orphan timeout plus a little, with dumps that hold every acknowledged
/// write on both copies. The history, ended by what the dumps hold, is linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_outlive_a_killed_coordinator_then_dump_and_exit() {
    let mut cluster = Cluster::start_with(N as usize, &["--orphan-timeout", "3"]);
    let pids = cluster.pids.clone();
    assert_eq!(sorted(cluster.server_pids()), sorted(pids.clone()));
    // A client that holds the configuration (its operations give up well within the orphan
    // timeout), and load that runs through the kill.
    let mut probe = ftkv::client::Client::new(cluster.coord_addr(), Duration::from_millis(500));
    probe.put(b"probe", b"before").await.unwrap();
    let load = Load::start(cluster.coord_addr(), 4, 100, Duration::from_secs(1));
    load.under_way().await;

    let group = cluster.coord.id() as i32;
    support::cluster::kill(cluster.coord.id(), "KILL");
    let killed = Instant::now();
    cluster.wait_coord(Duration::from_secs(5)).expect("coordinator killed");
    // SAFETY: kill(2) on the process group the servers still belong to (it exists while
    // they do); no memory is involved.
    unsafe { libc::kill(-group, libc::SIGHUP) };

    tokio::time::sleep((killed + LEASE * 3).saturating_duration_since(Instant::now())).await;
    for &pid in &pids {
        assert!(alive(pid), "server {pid} died with its coordinator");
    }
    assert_eq!(sorted(cluster.server_pids()), sorted(pids.clone()), "same processes");
    // Past the lease: the client, with the configuration it has, is refused (and says why).
    let refused = probe.get(b"probe").await.expect_err("served past its lease");
    let OpError::Unavailable(why) = &refused else { panic!("{refused:?}") };
    assert!(why.contains(UNREACHABLE) && why.contains("lease"), "{why}");

    let (recorder, _) = load.stop().await;
    let exited =
        wait_until(ORPHAN_TIMEOUT + Duration::from_secs(5), || pids.iter().all(|&pid| !alive(pid)));
    assert!(exited, "servers still running {:?} after the kill", killed.elapsed());
    assert!(killed.elapsed() >= ORPHAN_TIMEOUT, "gave up early: {:?}", killed.elapsed());
    for id in 0..N {
        let log = std::fs::read_to_string(cluster.path(&format!("server_{id}.log"))).unwrap();
        for line in [lines::ORPHANED, lines::LOST_COORDINATOR, lines::DUMPS_WRITTEN] {
            assert!(log.contains(line), "server {id} did not log {line:?}:\n{log}");
        }
        assert!(!log.contains(lines::REATTACHED), "server {id}:\n{log}");
    }

    // What the dumps hold is each key's final value, on both copies.
    let primaries: Vec<_> = (0..N).map(|id| cluster.dump(id, "primary")).collect();
    let secondaries: Vec<_> = (0..N).map(|id| cluster.dump(id, "secondary")).collect();
    for id in 0..N {
        assert_eq!(primaries[id as usize], secondaries[secondary_of(id, N) as usize], "{id}");
    }
    let mut events = recorder.events();
    let keys: Vec<Vec<u8>> = (0..100).map(|i| format!("load-{i}").into_bytes()).collect();
    let finals: HashMap<_, _> = keys
        .iter()
        .map(|key| (key.clone(), primaries[slot_of(key, N) as usize].get(key).cloned()))
        .collect();
    assert!(finals.values().any(Option::is_some), "the load wrote");
    assert_eq!(lost_acknowledged_writes(&events, &finals), Vec::<Vec<u8>>::new());
    assert_eq!(primaries[slot_of(b"probe", N) as usize][&b"probe"[..]], b"before");
    let now = Instant::now();
    events.extend(finals.into_iter().map(|(key, value)| Event {
        client: usize::MAX,
        key,
        op: Op::Get,
        invoke: now,
        ret: now,
        outcome: Outcome::Value(value),
    }));
    check_all(&events).unwrap_or_else(|e| panic!("not linearizable: {e}"));
}

/// With the coordinator dead, `client status` and a PUT (a new client: no configuration
/// yet) keep trying until their --timeout, then fail with a message that names the
/// coordinator and says it is unreachable, and a non-zero status. (Its port stays refused:
/// the cluster holds it, so no other process is handed it after the kill.)
#[test]
fn status_and_a_put_without_a_coordinator_fail_clearly_at_the_timeout() {
    let mut cluster = Cluster::start(N as usize);
    support::cluster::kill(cluster.coord.id(), "KILL");
    cluster.wait_coord(Duration::from_secs(5)).expect("coordinator killed");
    let addr = cluster.coord_addr();
    for words in [&["status"][..], &["P", "k", "v"]] {
        let began = Instant::now();
        let run = cluster.run_client(&[&["--timeout", "1"][..], words].concat(), "");
        let took = began.elapsed();
        assert_eq!(run.code, 2, "{words:?}: {}", run.stderr);
        let clear = format!("coordinator at {addr} {UNREACHABLE}");
        assert!(run.stderr.contains(&clear), "{words:?}: {}", run.stderr);
        // It kept trying (not a failure at once), and stopped at its deadline.
        assert!(took >= Duration::from_millis(800), "{words:?}: gave up after {took:?}");
        assert!(took < Duration::from_secs(3), "{words:?}: took {took:?}");
        let prefix = if words[0] == "status" { "client: " } else { "Operation #1 failed with: " };
        assert!(run.stderr.starts_with(prefix), "{words:?}: {}", run.stderr);
    }
}

/// The server's side of a coordinator restart, against a stand-in that binds the dead
/// coordinator's servers port and welcomes whoever reports (the real restarted coordinator
/// checks the token and the incarnations: a test of its own). Each server reconnects, sends
/// `Started` again with its pid, incarnation and epoch, logs that it re-attached, and takes
/// leases again: a client with the configuration it had is served again, and nothing exits
/// at the orphan timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_re_attach_to_whoever_takes_the_coordinators_port() {
    let mut cluster = Cluster::start_with(N as usize, &["--orphan-timeout", "3"]);
    let epoch = cluster.status()["epoch"].as_u64().unwrap();
    let mut probe = ftkv::client::Client::new(cluster.coord_addr(), Duration::from_millis(500));
    probe.put(b"probe", b"kept").await.unwrap();
    support::cluster::kill(cluster.coord.id(), "KILL");
    let killed = Instant::now();
    cluster.wait_coord(Duration::from_secs(5)).expect("coordinator killed");
    // Past the lease, before taking the port: nobody serves.
    tokio::time::sleep(LEASE * 2).await;
    assert!(probe.get(b"probe").await.is_err(), "served past its lease");

    // The cluster holds the port: free for this bind (address reuse), taken by no one else.
    let port = cluster.servers_port;
    let stand_in = tokio::net::TcpListener::bind(("0.0.0.0", port)).await.expect("rebind");
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = stand_in.accept().await {
            let started_tx = started_tx.clone();
            tokio::spawn(async move {
                let mut conn = Connection::new(stream).unwrap();
                let hello: Option<Hello> = conn.recv().await.unwrap();
                let Some(Hello { role: Role::Server { id, .. }, .. }) = hello else { return };
                let first: Option<ReportRequest> = conn.recv().await.unwrap();
                let _ = started_tx.send((id, first));
                conn.send(&ReportResponse::Welcome).await.unwrap();
                while let Ok(Some(ReportRequest::Heartbeat(_))) = conn.recv().await {
                    let lease = ReportResponse::Lease {
                        lease_ms: LEASE.as_millis() as u64,
                        coordinators: Vec::new(),
                    };
                    if conn.send(&lease).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut reported = Vec::new();
    while reported.len() < N as usize {
        let next = tokio::time::timeout(Duration::from_secs(2), started.recv()).await;
        let (id, first) = next.expect("a server reported within 2 s").unwrap();
        let Some(ReportRequest::Started { pid, incarnation, epoch: theirs, .. }) = first else {
            panic!("server {id} began with {first:?}")
        };
        assert_eq!((pid, incarnation, theirs), (cluster.pids[id as usize], 0, epoch), "{id}");
        reported.push(id);
    }
    assert_eq!(sorted(reported), [0, 1, 2]);
    assert_eq!(probe.get(b"probe").await.unwrap().as_deref(), Some(&b"kept"[..]));
    for id in 0..N {
        let logged = || {
            let log = std::fs::read_to_string(cluster.path(&format!("server_{id}.log")));
            log.is_ok_and(|log| log.contains(lines::REATTACHED))
        };
        assert!(wait_until(Duration::from_secs(1), logged), "server {id} did not log it");
    }
    // Attached, they outlive the orphan timeout.
    let past = (killed + ORPHAN_TIMEOUT + Duration::from_secs(1))
        .saturating_duration_since(Instant::now());
    tokio::time::sleep(past).await;
    assert!(cluster.pids.iter().all(|&pid| alive(pid)), "a server gave up while attached");
    assert_eq!(probe.get(b"probe").await.unwrap().as_deref(), Some(&b"kept"[..]));
}

fn sorted(mut pids: Vec<u32>) -> Vec<u32> {
    pids.sort_unstable();
    pids
}
