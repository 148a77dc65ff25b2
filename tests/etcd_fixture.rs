//! The etcd fixtures (tests/support/etcd.rs) against the real etcd, through the etcd-client
//! crate the standby coordinators use: what those tests will rely on, checked once here (the
//! shortest lease each timing grants, elections, a member's restart on its data, quorum lost
//! and regained). The cluster test needs root for its namespace hosts (skips otherwise).

mod support;

use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, LeaderKey, ResignOptions};
use support::etcd::{Etcd, EtcdCluster};
use support::netns::{Hosts, run_in};
use support::remote::load_runtime;

/// Whether lease `id` is gone (expired or revoked): etcd reports TTL -1 for it.
async fn lease_gone(client: &mut Client, id: i64) -> bool {
    match client.lease_time_to_live(id, None).await {
        Ok(answer) => answer.ttl() == -1,
        Err(_) => true,
    }
}

/// The value of `key`, if it has one.
async fn value(client: &mut Client, key: &str) -> Option<Vec<u8>> {
    let answer = client.get(key, None).await.unwrap();
    answer.kvs().first().map(|kv| kv.value().to_vec())
}

/// The tuned member grants a 1 s lease, and lets it expire about then; a put reads back; an
/// election hands over from a resigning leader to a blocked campaigner, and an observer sees
/// both leaders in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tuned_member_grants_one_second_leases_and_serves_keys_and_elections() {
    let started = Instant::now();
    let Some(etcd) = Etcd::start() else { return };
    eprintln!("tuned member healthy after {:?}", started.elapsed());
    // No request timeout: it would also cancel a campaign that waits its turn.
    let mut client = Client::connect([etcd.urls()], None).await.unwrap();

    let granted = Instant::now();
    let lease = client.lease_grant(1, None).await.unwrap();
    assert_eq!(lease.ttl(), 1);
    let deadline = granted + Duration::from_secs(3);
    while !lease_gone(&mut client, lease.id()).await {
        assert!(Instant::now() < deadline, "a 1 s lease still there after 3 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expired = granted.elapsed();
    eprintln!("1 s lease gone after {expired:?}");
    assert!(expired >= Duration::from_millis(900), "gone after {expired:?}");

    client.put("ftkv/probe", "one", None).await.unwrap();
    assert_eq!(value(&mut client, "ftkv/probe").await.as_deref(), Some(&b"one"[..]));

    let name = "ftkv/election";
    let lease_a = client.lease_grant(10, None).await.unwrap().id();
    let a = client.campaign(name, "coord-a", lease_a).await.unwrap();
    let a_key: LeaderKey = a.leader().unwrap().clone();
    // Only now: etcd answers an observe (even its headers) once there is a leader, so an
    // observe made before any campaign blocks the caller.
    let mut observer = client.clone();
    let mut observed = observer.observe(name).await.unwrap();
    let seen = observed.message().await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"coord-a");
    let leader = client.leader(name).await.unwrap();
    assert_eq!(leader.kv().unwrap().value(), b"coord-a");

    let mut other = client.clone();
    let lease_b = client.lease_grant(10, None).await.unwrap().id();
    let b = tokio::spawn(async move { other.campaign(name, "coord-b", lease_b).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "a second campaign waits while the first leader holds");
    let resigned = Instant::now();
    client.resign(Some(ResignOptions::new().with_leader(a_key))).await.unwrap();
    let b = tokio::time::timeout(Duration::from_secs(2), b).await.unwrap().unwrap().unwrap();
    eprintln!("campaign won {:?} after the leader resigned", resigned.elapsed());
    assert!(b.leader().unwrap().rev() > 0);
    let seen = observed.message().await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"coord-b");
}

/// etcd's default timings: a 1 s lease request is granted 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_default_timings_grants_two_seconds_for_one() {
    let started = Instant::now();
    let Some(etcd) = Etcd::start_with_defaults() else { return };
    eprintln!("default-timings member healthy after {:?}", started.elapsed());
    let mut client = Client::connect([etcd.urls()], None).await.unwrap();
    assert_eq!(client.lease_grant(1, None).await.unwrap().ttl(), 2);
    assert_eq!(client.lease_grant(5, None).await.unwrap().ttl(), 5);
}

/// A stopped member refuses requests; restarted, it has its keys and its leases back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_member_restarts_on_its_data() {
    let Some(mut etcd) = Etcd::start() else { return };
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(1))
        .with_connect_timeout(Duration::from_millis(500));
    let mut client = Client::connect([etcd.urls()], Some(options)).await.unwrap();
    client.put("ftkv/kept", "yes", None).await.unwrap();
    let lease = client.lease_grant(30, None).await.unwrap().id();
    let pid = etcd.pid();

    etcd.stop();
    assert!(!etcd.running());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "killed and reaped");
    assert!(client.get("ftkv/kept", None).await.is_err(), "a stopped member answers nothing");

    let restarted = Instant::now();
    etcd.restart();
    eprintln!("restarted member healthy after {:?}", restarted.elapsed());
    assert_ne!(etcd.pid(), pid);
    let mut answer = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while answer.is_none() {
        assert!(Instant::now() < deadline, "the client did not reconnect");
        answer = client.get("ftkv/kept", None).await.ok();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer.unwrap().kvs()[0].value(), b"yes");
    assert!(!lease_gone(&mut client, lease).await, "the lease survives the restart");
}

/// A put with `timeout` (on top of the client's own): what came of it, and how long it took.
async fn put_within(client: &mut Client, value: &str, timeout: Duration) -> (String, Duration) {
    let started = Instant::now();
    let put = tokio::time::timeout(timeout, client.put("ftkv/quorum", value, None)).await;
    let outcome = match put {
        Ok(Ok(_)) => "ok".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer in {timeout:?}"),
    };
    (outcome, started.elapsed())
}

/// Puts until one succeeds; panics after `limit`. Returns how long it took. Retries are part
/// of using etcd-client: its balanced channel goes on sending some requests to a killed
/// member's endpoint ("tcp connect error"), and a put while etcd elects a leader waits.
async fn put_eventually(client: &mut Client, value: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (outcome, _) = put_within(client, value, Duration::from_millis(500)).await;
        if outcome == "ok" {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "no put of {value} succeeded in {limit:?}: {outcome}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Longer than the client's request timeout (2 s): a put that fails must fail by the client's
/// own means.
const TIMEOUT: Duration = Duration::from_secs(3);

/// A 2 s request timeout, and half a second to connect.
fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_millis(500))
}

/// Three members on hosts 1-3, the client on host 0: writes go on with the leader killed, stop
/// (within the client's timeout) with a second member killed, and come back once both are
/// restarted on their data.
#[test]
fn a_cluster_on_namespace_hosts_writes_with_a_quorum_only() {
    let Some(hosts) = Hosts::up("ftkv-etcdfix", 3) else { return };
    let started = Instant::now();
    let cluster = EtcdCluster::start_on_hosts(&hosts, &[1, 2, 3]);
    eprintln!("3 members healthy after {:?}", started.elapsed());
    for i in 0..3 {
        assert_eq!(Hosts::namespace_of(cluster.pid(i)), hosts.ns(i + 1), "member {i}'s host");
    }
    let urls = cluster.member_urls();
    let cluster = run_in(&hosts.ns(0), move || {
        load_runtime().block_on(async move {
            let mut cluster = cluster;
            let mut client = Client::connect(&urls, Some(options())).await.unwrap();
            put_eventually(&mut client, "all", Duration::from_secs(5)).await;

            let leader = cluster.leader().expect("a leader");
            cluster.kill_member(leader);
            let took = put_eventually(&mut client, "leader killed", Duration::from_secs(10)).await;
            eprintln!("put with the leader (member {leader}) killed after {took:?}");

            let second = (leader + 1) % 3;
            let survivor = (leader + 2) % 3;
            cluster.kill_member(second);
            // Through every endpoint, and through the survivor alone, which still answers
            // what needs no quorum (its status): the put fails for want of a quorum, not of a
            // connection. The client's 2 s request timeout ends it.
            let (outcome, took) = put_within(&mut client, "no quorum", TIMEOUT).await;
            eprintln!("put without a quorum: {outcome} after {took:?}");
            assert!(outcome != "ok" && took < TIMEOUT, "{outcome} after {took:?}");
            let mut lone = Client::connect([&urls[survivor]], Some(options())).await.unwrap();
            lone.status().await.expect("the survivor answers its status");
            let (outcome, took) = put_within(&mut lone, "no quorum", TIMEOUT).await;
            eprintln!("put to the survivor alone: {outcome} after {took:?}");
            assert!(outcome != "ok" && took < TIMEOUT, "{outcome} after {took:?}");

            let restarted = Instant::now();
            cluster.restart_member(leader);
            cluster.restart_member(second);
            let took = put_eventually(&mut client, "back", Duration::from_secs(10)).await;
            eprintln!("put {took:?} after the members were back ({:?})", restarted.elapsed());
            // etcd's client may still send a call to a member that is just back and not
            // serving yet (it fails at once): read until one answers.
            let read_back = Instant::now();
            let answer = loop {
                match client.get("ftkv/quorum", None).await {
                    Ok(answer) => break answer,
                    Err(e) if read_back.elapsed() < Duration::from_secs(5) => {
                        eprintln!("get after the restarts: {e}; again");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("no get answered within 5 s: {e}"),
                }
            };
            assert_eq!(answer.kvs()[0].value(), b"back");
            cluster
        })
    });
    drop(cluster);
}
