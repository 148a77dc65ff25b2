//! Standby coordinators on other hosts (issue 15): a 3-member etcd, one member on each of
//! hosts 1-3 (which also run the servers, over ssh), the leading coordinator on host 0 and
//! a standby on host 5, clients on host 4 with both coordinators in their list, load
//! throughout. The leader's host cut off: the standby leads and takes the same servers
//! back; healed, the old leader stands by. One etcd member killed (etcd's leader): nothing
//! changes. etcd's quorum lost: the leader steps down and the service is unavailable (no
//! operation answered) until quorum returns and a coordinator takes the same servers back.
//! At the end every key's history is linearizable, no acknowledged write is lost, and the
//! dumps on the hosts hold the final values. Prints what it measured (`--nocapture`).
//! Needs root (skips with a message otherwise; CI runs as root).

mod support;

use std::fmt::Write as _;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use ftkv::client::Client;
use ftkv::lines;
use ftkv::protocol::{ServerState, StatusReport};
use support::cluster::{Cluster, alive, wait_until};
use support::etcd::EtcdCluster;
use support::history::{Event, Op, lost_acknowledged_writes};
use support::load::{Load, answered, stop_and_check};
use support::netns::{Hosts, addr, run_in};
use support::remote::{CLIENTS_HOST, N, assert_remote_dumps, load_runtime, remote_flags_with};
use support::standby::etcd_flags;

/// Host of the first leader; of the standby; of the etcd members (and the servers).
const LEADER_HOST: usize = 0;
const STANDBY_HOST: usize = 5;
const ETCD_HOSTS: [usize; 3] = [1, 2, 3];
const CLUSTER: &str = "hosts";
/// A client operation's timeout: short, so that operations during an outage fail (and are
/// recorded as failed or unknown) rather than wait it out.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// `--etcd-ttl` of the coordinators (`FTKV_HA_ETCD_TTL` overrides it): the default, 1 s.
/// Killing etcd's leader must change nothing even then: the leader's authority lapses while
/// etcd elects a new leader of its own (keep-alives go unanswered for up to a second), and
/// it waits, acting on nothing, until a keep-alive renews it (`Authority::ensure`).
const ETCD_TTL: &str = "1";

/// The coordinators' `--etcd-ttl`, in seconds.
fn etcd_ttl() -> String {
    std::env::var("FTKV_HA_ETCD_TTL").unwrap_or_else(|_| ETCD_TTL.into())
}

/// The flags of a coordinator on host `host`: servers over ssh on `hosts`, etcd at `urls`,
/// and its own address to register there.
fn coord_flags(hosts: &Hosts, urls: &str, host: usize) -> Vec<String> {
    let mut more = etcd_flags(urls, CLUSTER);
    more.extend(["--advertise-host".into(), addr(host), "--etcd-ttl".into(), etcd_ttl()]);
    remote_flags_with(hosts, &more.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The status through the client library (from the clients' host), trying `addrs` in turn.
async fn status(addrs: &str) -> StatusReport {
    let mut client = Client::new(addrs.to_string(), Duration::from_secs(10));
    client.status().await.expect("status")
}

fn pids(report: &StatusReport) -> Vec<u32> {
    report.servers.iter().map(|s| s.pid).collect()
}

fn all_running(report: &StatusReport) -> bool {
    report.servers.iter().all(|s| s.state == ServerState::Running)
}

fn is_write(e: &Event) -> bool {
    !matches!(e.op, Op::Get)
}

/// From `from` to `to`: the longest stretch without an acknowledged write (counted from
/// `from`, so a stretch that began before it counts from it), and when it began and
/// ended, both from `from`.
fn write_outage(events: &[Event], from: Instant, to: Instant) -> (Duration, Duration, Duration) {
    let mut acked: Vec<Instant> = events
        .iter()
        .filter(|e| is_write(e) && answered(e) && e.ret >= from && e.ret <= to)
        .map(|e| e.ret)
        .collect();
    acked.sort();
    let mut longest = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut last = from;
    for at in acked.into_iter().chain([to]) {
        if at - last > longest.0 {
            longest = (at - last, last - from, at - from);
        }
        last = at;
    }
    longest
}

/// Time from `since` to the return of the first acknowledged write invoked at or after it.
fn first_write_after(events: &[Event], since: Instant) -> Option<Duration> {
    events
        .iter()
        .filter(|e| is_write(e) && answered(e) && e.invoke >= since)
        .map(|e| e.ret - since)
        .min()
}

/// Blocks (off the runtime's workers) until a line starting with `prefix` from one of
/// `outputs` (within `limit`); returns which one, and every line read (that one last),
/// with where it came from and when it was read.
fn first_line(
    outputs: &[&Receiver<String>],
    prefix: &str,
    limit: Duration,
) -> (usize, Vec<(usize, Instant, String)>) {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    tokio::task::block_in_place(|| {
        loop {
            for (i, output) in outputs.iter().enumerate() {
                while let Ok(line) = output.try_recv() {
                    let found = line.starts_with(prefix);
                    seen.push((i, Instant::now(), line));
                    if found {
                        return (i, seen);
                    }
                }
            }
            assert!(Instant::now() < deadline, "no {prefix:?} line within {limit:?}: {seen:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

fn await_line(output: &Receiver<String>, prefix: &str, limit: Duration) -> String {
    first_line(&[output], prefix, limit).1.pop().unwrap().2
}

/// What the test measured, printed at the end (and on the way, so that a failure shows
/// what came before it).
#[derive(Default)]
struct Report(String);

impl Report {
    fn note(&mut self, line: String) {
        println!("{line}");
        writeln!(self.0, "{line}").unwrap();
    }
}

#[test]
fn coordinators_on_two_hosts_fail_over_on_a_cut_and_on_etcd_quorum_loss() {
    let Some(hosts) = Hosts::up("ftkv-ha", STANDBY_HOST) else { return };
    let began = Instant::now();
    let etcd = EtcdCluster::start_on_hosts(&hosts, &ETCD_HOSTS);
    let urls = etcd.urls();
    let leader_flags = coord_flags(&hosts, &urls, LEADER_HOST);
    let extra: Vec<&str> = leader_flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::launch(&hosts.config(N as usize), &hosts.on(LEADER_HOST), &extra);
    cluster.coord_host = addr(LEADER_HOST);
    cluster.client_prefix = hosts.on(CLIENTS_HOST);
    for (id, &pid) in cluster.pids.iter().enumerate() {
        assert_eq!(Hosts::namespace_of(pid), hosts.ns(id + 1), "server {id} runs on its host");
    }
    let standby_flags = coord_flags(&hosts, &urls, STANDBY_HOST);
    let mut standby = cluster.spawn_standby_on(1, &hosts.on(STANDBY_HOST), &standby_flags);
    assert_eq!(Hosts::namespace_of(standby.pid()), hosts.ns(STANDBY_HOST));
    let (a, b) = (cluster.coord_addr(), standby.addr());
    standby.await_line(&format!("{}: {a} leads", lines::STANDBY), Duration::from_secs(10));
    // The servers learn of the standby from their leases: until the leader lists it, and
    // every server logged the list with it (their logs are in the hosts' remote directory).
    let listed = wait_until(Duration::from_secs(5), || {
        let standbys = &cluster.status()["coordinators"]["standbys"];
        standbys.as_array().is_some_and(|s| s.iter().any(|s| *s == b))
    });
    assert!(listed, "the leader lists its standby: {}", cluster.status());
    cluster.await_servers_know(&standby, &hosts.remote_dir());
    let mut report = Report::default();
    report.note(format!("set up in {:?}", began.elapsed()));

    let ended = run_in(&hosts.ns(CLIENTS_HOST), move || {
        load_runtime().block_on(async move {
            let (mut cluster, mut standby, mut etcd, mut report) = (cluster, standby, etcd, report);
            let addrs = format!("{a},{b}");
            let first = status(&addrs).await;
            let servers = pids(&first);
            assert_eq!(servers, cluster.pids, "the servers of the leader's table");
            assert_eq!(first.coordinators.as_ref().unwrap().leader, a);
            let load = Load::start(addrs.clone(), 8, 60, OP_TIMEOUT);
            load.under_way().await;

            // 1. The leader's host cut off: the standby leads, with the same servers.
            let log_before = cluster.coord_log().len();
            hosts.cut(LEADER_HOST);
            let cut = Instant::now();
            standby.await_line(lines::LEADING, Duration::from_secs(10));
            let led = cut.elapsed();
            standby.await_line("cluster ready", Duration::from_secs(20));
            let took_over = Instant::now();
            let now = status(&addrs).await;
            assert_eq!(now.coordinators.as_ref().unwrap().leader, b, "{now:?}");
            assert_eq!(pids(&now), servers, "the same servers, taken back");
            assert!(all_running(&now), "{now:?}");
            let served = |e: &Event| is_write(e) && answered(e) && e.invoke >= took_over;
            assert!(load.wait_for(Duration::from_secs(10), served).await, "writes again");
            report.note(format!(
                "cut of the leader's host: the standby leads after {led:?}, has the servers back \
                 (same pids) after {:?}",
                took_over - cut
            ));
            // Cut off, the old leader stepped down (its authority lapsed, or a state write
            // failed) and waits for etcd.
            let stepped = await_line(&cluster.stdout, lines::STEPPED_DOWN, Duration::from_secs(5));
            report.note(format!("  the cut-off leader: {stepped:?}"));
            let healed = Instant::now();
            hosts.heal(LEADER_HOST);
            let standing = format!("{}: {b} leads", lines::STANDBY);
            await_line(&cluster.stdout, &standing, Duration::from_secs(15));
            report.note(format!("  healed: the old leader stands by after {:?}", healed.elapsed()));
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let now = status(&addrs).await.coordinators.unwrap();
                if now.leader == b && now.standbys == [a.clone()] {
                    break;
                }
                assert!(Instant::now() < deadline, "the new leader lists the old one: {now:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Cut off, it did nothing to the cluster: no server started, killed or taken back.
            let after = &cluster.coord_log()[log_before..];
            for acted in ["remote server started", "kill over ssh", lines::TOOK_BACK] {
                assert!(!after.contains(acted), "the cut-off leader logged {acted:?}:\n{after}");
            }

            // 2. One etcd member killed, etcd's leader (its election the worst such loss):
            // nothing changes.
            let victim = etcd.leader().expect("etcd has a leader");
            etcd.kill_member(victim);
            let killed = Instant::now();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let changes: Vec<String> = (standby.lines().into_iter())
                .chain(cluster.stdout.try_iter())
                .filter(|l| l.starts_with(lines::STEPPED_DOWN) || l.starts_with(lines::LEADING))
                .collect();
            assert!(changes.is_empty(), "etcd member {victim} killed: {changes:?}");
            let now = status(&addrs).await;
            assert_eq!(now.coordinators.as_ref().unwrap().leader, b);
            assert_eq!(pids(&now), servers);
            let restarting = Instant::now();
            etcd.restart_member(victim);
            report.note(format!(
                "etcd member {victim} (etcd's leader) killed: no change in 3 s; healthy again \
                 {:?} after its restart",
                restarting.elapsed()
            ));
            let changes: Vec<String> = (standby.lines().into_iter())
                .chain(cluster.stdout.try_iter())
                .filter(|l| l.starts_with(lines::STEPPED_DOWN) || l.starts_with(lines::LEADING))
                .collect();
            assert!(changes.is_empty(), "etcd member {victim} restarted: {changes:?}");
            let restarted = Instant::now();

            // 3. etcd's quorum lost: the leader steps down, and no operation is answered
            // until a coordinator leads again once quorum is back.
            let lost = [(victim + 1) % 3, (victim + 2) % 3];
            for &i in &lost {
                etcd.kill_member(i);
            }
            let no_quorum = Instant::now();
            let stepped = standby.await_line(lines::STEPPED_DOWN, Duration::from_secs(5));
            let stepped_at = Instant::now();
            report.note(format!(
                "etcd members {lost:?} killed (no quorum): the leader stepped down after {:?}: \
                 {stepped:?}",
                stepped_at - no_quorum
            ));
            tokio::time::sleep(Duration::from_secs(3)).await;
            let quorum_back = Instant::now();
            for &i in &lost {
                etcd.restart_member(i);
            }
            etcd.wait_healthy();
            let healthy = quorum_back.elapsed();
            let outputs = [&cluster.stdout, &standby.stdout];
            let (which, seen) = first_line(&outputs, "cluster ready", Duration::from_secs(20));
            let ready_again = Instant::now();
            let leading = |(i, _, l): &&(usize, Instant, String)| {
                *i == which && l.starts_with(lines::LEADING)
            };
            let led_again = seen.iter().find(leading).expect("a leading line").1;
            let leader = [&a, &b][which].clone();
            // Both still run (neither gave up on etcd), and the other one stands by, naming it.
            let (logs, exits) = (
                [cluster.coord_log(), standby.log()],
                [cluster.coord.try_wait().unwrap(), standby.coord.try_wait().unwrap()],
            );
            for (log, exited) in logs.iter().zip(exits) {
                assert!(exited.is_none(), "a coordinator exited ({exited:?}); its log:\n{log}");
            }
            let standing = format!("{}: {leader} leads", lines::STANDBY);
            if !seen.iter().any(|(i, _, l)| *i != which && l.starts_with(&standing)) {
                await_line(outputs[1 - which], &standing, Duration::from_secs(10));
            }
            let now = status(&addrs).await;
            assert_eq!(now.coordinators.as_ref().unwrap().leader, leader, "{now:?}");
            assert_eq!(pids(&now), servers, "the same servers, taken back again");
            assert!(all_running(&now), "{now:?}");
            let served = |e: &Event| is_write(e) && answered(e) && e.invoke >= ready_again;
            assert!(load.wait_for(Duration::from_secs(10), served).await, "writes again");
            report.note(format!(
                "  members restarted, etcd healthy after {healthy:?}; {} leads after {:?}, \
                 has the servers back (same pids) after {:?} (from the restart)",
                ["the first coordinator (host 0)", "the standby (host 5)"][which],
                led_again - quorum_back,
                ready_again - quorum_back
            ));
            load.answered_since(Some(Instant::now()), Duration::from_secs(10)).await;

            let checked = stop_and_check(addrs.clone(), load).await;
            let events = &checked.events;
            // Unavailable, never unsafe: from the step-down until the next leader led, no
            // operation invoked was answered (the servers' leases had ended before it).
            let answered_meanwhile: Vec<&Event> = events
                .iter()
                .filter(|e| e.invoke >= stepped_at && e.ret < led_again && answered(e))
                .collect();
            assert!(
                answered_meanwhile.is_empty(),
                "answered without quorum: {answered_meanwhile:?}"
            );
            let refused = events
                .iter()
                .filter(|e| e.invoke >= no_quorum && e.invoke < quorum_back && !answered(e))
                .count();
            assert!(refused > 0, "operations failed or timed out while quorum was lost");
            let lost_writes = lost_acknowledged_writes(events, &checked.finals);
            assert!(lost_writes.is_empty(), "acknowledged writes lost on keys {lost_writes:?}");

            // Writes: when they stopped and when they were acknowledged again, from each fault,
            // and from the moment the coordinator that took over had the servers back.
            for (what, from, to, took_over) in [
                ("the cut", cut, healed, Some(took_over)),
                ("the etcd member killed", killed, restarted, None),
                (
                    "the quorum lost",
                    no_quorum,
                    ready_again + Duration::from_millis(500),
                    Some(ready_again),
                ),
            ] {
                let (gap, start, end) = write_outage(events, from, to);
                let mut line = format!(
                    "{what}: no write acknowledged for {gap:?}, from +{start:?} to +{end:?}"
                );
                if let Some(at) = took_over {
                    let first = first_write_after(events, at).unwrap();
                    let back = at - from;
                    write!(line, "; the first write sent once the servers were back (+{back:?})")
                        .unwrap();
                    write!(line, " acknowledged {first:?} after that").unwrap();
                }
                report.note(line);
            }
            // Killing etcd's leader pauses keep-alives for its election (0.5 to 1 s at the
            // tuned timings, longer on a loaded machine), so the servers' leases may lapse
            // for about that long; a pause as long as the leader's grace (2 TTLs + 1 s, then
            // it would step down) would mean writes wait on more than the election.
            let (gap, ..) = write_outage(events, killed, restarted);
            let ttl = Duration::from_secs(etcd_ttl().parse().unwrap());
            let grace = 2 * ttl + Duration::from_secs(1);
            assert!(gap < grace, "writes stalled {gap:?} with a member killed");
            // Per client, after the cut: when each had a write acknowledged again (a client
            // goes on asking the coordinator it knows until that call times out).
            let stopped = cut + write_outage(events, cut, healed).1;
            let mut resumed: Vec<Duration> = (0..8)
                .filter_map(|c| {
                    let after = |e: &&Event| e.client == c && e.invoke >= stopped;
                    let first = events.iter().filter(after).find(|e| is_write(e) && answered(e));
                    first.map(|e| e.ret - cut)
                })
                .collect();
            resumed.sort();
            report.note(format!(
                "  the cut: each client's first write acknowledged once writes had stopped \
                 (+{:?}): {resumed:?}",
                stopped - cut
            ));
            report.note(format!(
                "checked {} keys, {} operations ({} acknowledged writes); nothing lost",
                checked.checked,
                events.len(),
                events.iter().filter(|e| is_write(e) && answered(e)).count()
            ));
            (cluster, standby, hosts, etcd, report, which, checked.finals)
        })
    });
    let (mut cluster, mut standby, hosts, etcd, mut report, which, finals) = ended;

    // ctrl+d to the leader: the servers write their dumps on their hosts, holding every
    // final value; the other coordinator, elected next, finds the cluster stopped and exits.
    let stopped = Instant::now();
    let (leader_exit, other_exit) = if which == 0 {
        let exit = cluster.ctrl_d_within(Duration::from_secs(20));
        (exit, standby.wait_exit(Duration::from_secs(10)))
    } else {
        standby.close_stdin();
        let exit = standby.wait_exit(Duration::from_secs(20)).expect("the leader exits");
        (exit, cluster.wait_coord(Duration::from_secs(10)))
    };
    assert!(leader_exit.success(), "the leader's exit: {leader_exit}");
    assert!(other_exit.is_some_and(|s| s.success()), "the other coordinator: {other_exit:?}");
    let servers = cluster.pids.clone();
    let gone = wait_until(Duration::from_secs(5), || servers.iter().all(|&p| !alive(p)));
    assert!(gone, "the servers exit after writing their dumps");
    assert_remote_dumps(&hosts, &finals);
    report.note(format!(
        "ctrl+d: both coordinators and the servers gone after {:?}, dumps hold every final \
         value; whole test {:?}",
        stopped.elapsed(),
        began.elapsed()
    ));
    print!("\nmeasured:\n{}", report.0);
    drop((cluster, etcd, hosts));
}
