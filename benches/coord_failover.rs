//! Coordinator failover under load: a leader and a standby elected through a real etcd (one
//! member on loopback), `kill -9` of the leader, the standby takes over; then a new standby
//! for the next round. Writers keep putting keys of every server; per failover it reports,
//! over the three servers' keys, the longest time without an acknowledged write (servers
//! go on serving until their lease ends, then wait for the next leader), and the time from
//! the kill until writes to every server's keys were acknowledged again after that gap.
//! Run at etcd's tuned timings (`--heartbeat-interval 50 --election-timeout 500`, 1 s
//! leases) and at its defaults (2 s leases).
//!
//! `cargo bench --bench coord_failover` (5 failovers per timing; `FTKV_BENCH_FAILOVERS`).

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[path = "../tests/support/etcd.rs"]
mod etcd;
// The etcd fixture's cluster of namespace hosts is not used here.
#[allow(dead_code)]
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "../tests/support/ports.rs"]
mod ports;
#[path = "../tests/support/standby.rs"]
mod standby;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Cluster, wait_until};
use etcd::{Etcd, Timings};
use ftkv::routing::slot_of;
use standby::{Standby, etcd_flags};

const SERVERS: u32 = 3;

fn main() {
    let rounds: usize =
        std::env::var("FTKV_BENCH_FAILOVERS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    for (timings, name, ttl) in
        [(Timings::Tuned, "tuned", "1"), (Timings::Defaults, "defaults", "2")]
    {
        let etcd = Etcd::start_with(timings).expect("etcd (install etcd-server)");
        let (gaps, ends) = failovers(&etcd, name, ttl, rounds);
        println!(
            "etcd {name} ({ttl} s lease), {rounds} failovers: longest without a write median \
             {:.2?} max {:.2?}; every server's keys written again after the kill: median \
             {:.2?} max {:.2?}",
            gaps[rounds / 2],
            gaps[rounds - 1],
            ends[rounds / 2],
            ends[rounds - 1]
        );
    }
}

/// `rounds` failovers on `etcd`; each round's longest unserved window and its end, sorted.
fn failovers(etcd: &Etcd, name: &str, ttl: &str, rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    let mut flags = etcd_flags(&etcd.urls(), name);
    flags.extend(["--etcd-ttl".to_string(), ttl.to_string()]);
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::start_with(SERVERS as usize, &args);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut standbys: Vec<Standby> = Vec::new();
    let mut leader_addr = cluster.coord_addr();
    let (mut gaps, mut ends) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut next = cluster.spawn_standby(round + 1, &flags);
        next.await_line(&format!("standby: {leader_addr} leads"), Duration::from_secs(10));
        let listed = wait_until(Duration::from_secs(5), || {
            let status = leader_status(&runtime, &leader_addr);
            status.coordinators.is_some_and(|c| c.standbys.contains(&next.addr()))
        });
        assert!(listed, "the leader lists its standby");
        // Servers learn of the standby from their next lease.
        cluster.await_servers_know(&next, cluster.dir.path());
        let successes = Arc::new(Mutex::new(Vec::<(u32, Instant)>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let addrs = format!("{leader_addr},{}", next.addr());
        let load = writers(&runtime, &addrs, &successes, &stop);
        std::thread::sleep(Duration::from_secs(1));

        let killed = Instant::now();
        match standbys.last_mut() {
            Some(leader) => leader.kill(),
            None => cluster.kill_coord(),
        }
        next.await_line("cluster ready", Duration::from_secs(20));
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        for task in load {
            runtime.block_on(task).unwrap();
        }
        let (gap, end) = worst_gap(&successes.lock().unwrap(), killed);
        println!(
            "etcd {name}: kill -9 of the leader -> longest without a write {gap:.2?}, every \
             server's keys written again {end:.2?} after the kill"
        );
        gaps.push(gap);
        ends.push(end);
        leader_addr = next.addr();
        standbys.push(next);
    }
    gaps.sort();
    ends.sort();
    (gaps, ends)
}

fn leader_status(runtime: &tokio::runtime::Runtime, addr: &str) -> ftkv::protocol::StatusReport {
    let mut client = ftkv::client::Client::new(addr.to_string(), Duration::from_secs(5));
    runtime.block_on(client.status()).expect("status")
}

/// Two writers per server, each putting keys that server owns, recording each success.
fn writers(
    runtime: &tokio::runtime::Runtime,
    addrs: &str,
    successes: &Arc<Mutex<Vec<(u32, Instant)>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..SERVERS * 2)
        .map(|w| {
            let slot = w % SERVERS;
            let keys: Vec<Vec<u8>> = (0..)
                .map(|i| format!("w{w}-{i}").into_bytes())
                .filter(|k| slot_of(k, SERVERS) == slot)
                .take(20)
                .collect();
            let mut client = ftkv::client::Client::new(addrs.to_string(), Duration::from_secs(10));
            let (successes, stop) = (successes.clone(), stop.clone());
            runtime.spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if client.put(&keys[i % keys.len()], b"value").await.is_ok() {
                        successes.lock().unwrap().push((slot, Instant::now()));
                    }
                }
            })
        })
        .collect()
}

/// Over every server's keys, from `killed` on: the longest stretch without a success, and
/// how long after `killed` the last of those stretches ended.
fn worst_gap(successes: &[(u32, Instant)], killed: Instant) -> (Duration, Duration) {
    (0..SERVERS)
        .map(|slot| {
            let mut times: Vec<Instant> = successes
                .iter()
                .filter(|(s, t)| *s == slot && *t >= killed)
                .map(|(_, t)| *t)
                .collect();
            times.sort();
            std::iter::once(killed)
                .chain(times.iter().copied())
                .collect::<Vec<_>>()
                .windows(2)
                .map(|w| (w[1] - w[0], w[1] - killed))
                .max()
                .expect("writes succeed after the failover")
        })
        .fold((Duration::ZERO, Duration::ZERO), |(g, e), (gap, end)| (g.max(gap), e.max(end)))
}
