//! A cut between a server and its copy only, both still reaching the coordinator and the
//! clients (`coord::cut`): the coordinator replaces the owner, its keys are written again
//! within `-t` + 1 s, nothing acknowledged is lost, and the histories stay linearizable.
//! Servers on network-namespace hosts over ssh (root needed; skips otherwise), cuts with
//! nftables in the owner's host. Plus the other side: heavy load with no cut replaces nothing.

mod support;

use std::time::{Duration, Instant};

use ftkv::lines;
use ftkv::routing::{secondary_of, slot_of};
use support::cluster::{Cluster, wait_until};
use support::history::{Event, Op as HistOp};
use support::load::{Checked, Load, answered, stop_and_check};
use support::netns::{Hosts, run_in};
use support::remote::{CLIENTS_HOST, N, assert_remote_dumps, load_runtime, remote_cluster_with};

/// The slot whose stream is cut: server 0 (host 1) to its copy, server 1 (host 2).
const CUT_SLOT: u32 = 0;
const OWNER_HOST: usize = CUT_SLOT as usize + 1;
/// Host of server 1, `secondary_of(CUT_SLOT, N)`.
const COPY_HOST: usize = 2;

/// How the link is cut, in the owner's host.
#[derive(Clone, Copy)]
enum Cut {
    Both,
    /// Only what comes from the copy: the acknowledgements.
    AcksOnly,
    /// Only what goes to the copy: the writes.
    WritesOnly,
}

impl Cut {
    fn apply(self, hosts: &Hosts) {
        let (incoming, outgoing) = match self {
            Cut::Both => (true, true),
            Cut::AcksOnly => (true, false),
            Cut::WritesOnly => (false, true),
        };
        hosts.cut_one_way(OWNER_HOST, COPY_HOST, incoming, outgoing);
    }
}

/// One cut of a run: when its rules were in place and when they were lifted.
#[derive(Clone, Copy)]
struct Window {
    cut_at: Instant,
    healed_at: Instant,
}

fn is_write(e: &Event) -> bool {
    !matches!(e.op, HistOp::Get)
}

/// Time from the cut to the first acknowledged write on the cut slot sent after it.
fn back_after(events: &[Event], w: Window) -> Option<Duration> {
    events
        .iter()
        .filter(|e| e.invoke >= w.cut_at && slot_of(&e.key, N) == CUT_SLOT)
        .filter(|e| is_write(e) && answered(e))
        .map(|e| e.ret - w.cut_at)
        .min()
}

/// Runs load from the clients' host and cuts the link `cut` for each `(start, length)` of
/// `schedule` (from the load's start), then waits for full redundancy and a clean status,
/// checks the histories and the dumps. Returns the cluster, each cut's window and the
/// checked events.
fn cuts_under_load(
    hosts: Hosts,
    flags: &[&str],
    cut: Cut,
    schedule: Vec<(Duration, Duration)>,
) -> (Cluster, Vec<Window>, Checked) {
    let cluster = remote_cluster_with(&hosts, flags);
    let epoch = cluster.status()["epoch"].as_u64().unwrap();
    let (cluster, hosts, windows, checked) = run_in(&hosts.ns(CLIENTS_HOST), move || {
        load_runtime().block_on(async move {
            let load = Load::start(cluster.coord_addr(), 8, 30, Duration::from_secs(10));
            load.under_way().await;
            let began = tokio::time::Instant::now();
            let mut windows = Vec::new();
            for (start, length) in schedule {
                tokio::time::sleep_until(began + start).await;
                // Taken after the rules are in place and before they are lifted: starting
                // `nft` under load can take a good part of a second.
                cut.apply(&hosts);
                let cut_at = Instant::now();
                tokio::time::sleep(length).await;
                hosts.heal_between(OWNER_HOST);
                windows.push(Window { cut_at, healed_at: Instant::now() });
            }
            let clean = tokio::task::block_in_place(|| {
                cluster.wait_recovered(epoch, Duration::from_secs(40));
                wait_until(Duration::from_secs(5), || {
                    cluster.status()["cuts"].as_array().is_some_and(Vec::is_empty)
                })
            });
            assert!(clean, "status still shows a cut: {}", cluster.status());
            let recovered = Instant::now();
            let on_new =
                |e: &Event| e.invoke >= recovered && answered(e) && slot_of(&e.key, N) == CUT_SLOT;
            assert!(load.wait_for(Duration::from_secs(10), on_new).await, "cut slot served");
            let checked = stop_and_check(cluster.coord_addr(), load).await;
            (cluster, hosts, windows, checked)
        })
    });
    let mut cluster = cluster;
    assert!(cluster.ctrl_d().success());
    assert_remote_dumps(&hosts, &checked.finals);
    (cluster, windows, checked)
}

fn replacements(cluster: &Cluster) -> usize {
    cluster.coord_log().matches(lines::CUT_REPLACING).count()
}

/// The whole cut under load, `FTKV_CUT_CYCLES` times (default 1; each after the backoff of
/// the one before): the owner is replaced, the cut slot's writes are acknowledged again
/// within `-t` + 1 s (every key of it during the cut), and after healing the cluster is
/// whole and `status` clean. Prints each cycle's time to the first acknowledged write.
#[test]
fn a_cut_between_a_server_and_its_copy_replaces_the_owner_within_the_timeout() {
    let Some(hosts) = Hosts::up("ftkv-f", 4) else { return };
    assert_eq!(secondary_of(CUT_SLOT, N) as usize + 1, COPY_HOST);
    let cycles: u32 =
        std::env::var("FTKV_CUT_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let period = Duration::from_secs(12);
    let schedule = (0..cycles)
        .map(|i| (period * i, Duration::from_secs(if i == 0 { 5 } else { 2 })))
        .collect();
    let (cluster, windows, Checked { events, keys, .. }) =
        cuts_under_load(hosts, &["-t", "1"], Cut::Both, schedule);
    let mut backs: Vec<Duration> =
        windows.iter().map(|&w| back_after(&events, w).unwrap()).collect();
    for (i, back) in backs.iter().enumerate() {
        println!("cut {i}: first acknowledged write on the cut slot {back:?} after the cut");
        assert!(*back <= Duration::from_secs(2), "cut {i}: {back:?} > -t + 1 s");
    }
    backs.sort();
    println!(
        "median {:?}, max {:?} over {cycles} cuts",
        backs[backs.len() / 2],
        backs.last().unwrap()
    );
    let first = windows[0];
    // The replacement joins while the cut lasts, and its copy from server 1 cannot cross
    // it: writes must still be acknowledged (server 1 alone) until the link heals.
    let late = first.cut_at + Duration::from_secs(3);
    let late_acks = events
        .iter()
        .filter(|e| slot_of(&e.key, N) == CUT_SLOT && is_write(e) && answered(e))
        .filter(|e| e.invoke > late && e.ret < first.healed_at)
        .count();
    println!("writes to the cut slot acknowledged from 3 s after the cut to its end: {late_acks}");
    assert!(late_acks > 0, "writes to the cut slot held up again while the cut lasts");
    for key in keys.iter().filter(|k| slot_of(k, N) == CUT_SLOT) {
        let written = events.iter().any(|e| {
            &e.key == key
                && is_write(e)
                && answered(e)
                && e.invoke > first.cut_at
                && e.ret < first.healed_at
        });
        assert!(
            written,
            "key {:?} of the cut slot was written during the cut",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(replacements(&cluster), cycles as usize, "{}", cluster.coord_log());
}

/// Only the acknowledgements dropped (the owner's writes reach the copy and are applied
/// there, none is answered): detected like a whole cut, the owner replaced.
#[test]
fn a_cut_of_the_acknowledgements_only_replaces_the_owner() {
    let Some(hosts) = Hosts::up("ftkv-g", 4) else { return };
    let schedule = vec![(Duration::ZERO, Duration::from_secs(3))];
    let (cluster, windows, Checked { events, .. }) =
        cuts_under_load(hosts, &["-t", "1"], Cut::AcksOnly, schedule);
    let back = back_after(&events, windows[0]).unwrap();
    println!("acknowledgements cut: writes acknowledged again {back:?} after the cut");
    assert!(back <= Duration::from_secs(2), "{back:?}");
    assert_eq!(replacements(&cluster), 1);
}

/// The reverse: only the owner's writes to the copy dropped.
#[test]
fn a_cut_of_the_writes_only_replaces_the_owner() {
    let Some(hosts) = Hosts::up("ftkv-h", 4) else { return };
    let schedule = vec![(Duration::ZERO, Duration::from_secs(3))];
    let (cluster, windows, Checked { events, .. }) =
        cuts_under_load(hosts, &["-t", "1"], Cut::WritesOnly, schedule);
    let back = back_after(&events, windows[0]).unwrap();
    println!("writes cut: writes acknowledged again {back:?} after the cut");
    assert!(back <= Duration::from_secs(2), "{back:?}");
    assert_eq!(replacements(&cluster), 1);
}

/// A flapping link: 3 cuts of 0.5 s in 5 s. With `-t 0.3` each is detected; only the first
/// replaces the owner, the others fall within the backoff and say so.
#[test]
fn a_flapping_link_replaces_once_and_logs_the_backoff() {
    let Some(hosts) = Hosts::up("ftkv-i", 4) else { return };
    let half = Duration::from_millis(500);
    let schedule = (0..3).map(|i| (Duration::from_secs(2) * i, half)).collect();
    let flags = ["-t", "0.3", "--heartbeat-ms", "50"];
    let (cluster, _, _) = cuts_under_load(hosts, &flags, Cut::Both, schedule);
    let log = cluster.coord_log();
    assert_eq!(replacements(&cluster), 1, "{log}");
    assert!(log.contains(lines::CUT_HELD), "the backoff is logged: {log}");
    assert_eq!(log.matches("server lost").count(), 1, "nothing else lost: {log}");
}

/// Heavy load (`client bench -c 50 -d 1024`, a put phase and a get phase) and no cut:
/// nothing is replaced. `FTKV_NO_CUT_SECS` sets each phase's length (default 8 s; the
/// longer run is in docs/testing.md).
#[test]
fn heavy_load_without_a_cut_replaces_nothing() {
    let secs = std::env::var("FTKV_NO_CUT_SECS").unwrap_or_else(|_| "8".into());
    let cluster = Cluster::start_with(3, &["-t", "1"]);
    let pids = cluster.pids.clone();
    let args = ["bench", "-c", "50", "-d", "1024", "-t", "put,get", "--duration", &secs];
    let run = cluster.run_client(&args, "");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let log = cluster.coord_log();
    assert!(!log.contains(lines::CUT_REPLACING) && !log.contains("server lost"), "{log}");
    assert_eq!((0..3).map(|id| cluster.pid_of(id)).collect::<Vec<_>>(), pids);
    println!("{}", run.stdout.lines().last().unwrap_or_default());
}
