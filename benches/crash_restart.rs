//! Restart after a crash: a 3-server cluster (`--fsync always`, the default) filled with N
//! keys of 100-byte values through `client bench` (its fill phase stores each key of the
//! keyspace once), then `kill -9` of every process at once (the coordinator's process group,
//! as tests/crash.rs does: a power cut, the OOM killer), then the same `coord` command in the
//! same directory. Reports the time from the start of that `coord` to "cluster ready": each
//! server loaded its own log, every copy was filled again from its owner, the cluster serves.
//! Then a sample of 1,000 keys is read back through a client. Compare with
//! `scripts/bench/restart-redis.sh` (Redis with `appendonly yes` on the same data).
//!
//! `cargo bench --bench crash_restart` (1,000,000 keys); `FTKV_BENCH_KEYS=100000` for fewer;
//! `FTKV_BENCH_CRASHES=2` crashes and restarts again on the logs the first restart left (they
//! are not compacted, so each restart reads more).

#[path = "../tests/support/cluster.rs"]
mod cluster;
// Only for the ports module: the cluster holds its coordinator's ports where it runs.
#[allow(dead_code)]
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "../tests/support/ports.rs"]
mod ports;

use std::time::{Duration, Instant};

use cluster::{Cluster, alive, wait_until};
use ftkv::bench::{key_of, value_of};
use ftkv::client::Client;

/// Longest the restart may take before the bench gives up (the coordinator's own limits on a
/// log load and a resync are 120 s and 300 s).
const READY_LIMIT: Duration = Duration::from_secs(300);

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `kill -9` of the coordinator and every server together, then waits until none runs.
fn crash(cluster: &mut Cluster) {
    let pids = cluster.server_pids();
    assert_eq!(pids.len(), 3, "3 servers running");
    // SAFETY: kill(2) of the cluster's own process group.
    unsafe { libc::kill(-(cluster.coord_group() as i32), libc::SIGKILL) };
    let _ = cluster.coord.wait();
    let gone = wait_until(Duration::from_secs(10), || pids.iter().all(|&pid| !alive(pid)));
    assert!(gone, "servers {pids:?} still running after kill -9");
}

/// Starts the same `coord` again and waits for "cluster ready", echoing what it says it
/// restored; returns the time from its start.
fn restart(cluster: &mut Cluster) -> Duration {
    let began = Instant::now();
    cluster.spawn_coord_again(&[]);
    loop {
        let left = READY_LIMIT.saturating_sub(began.elapsed());
        let line = cluster.stdout.recv_timeout(left).unwrap_or_else(|_| {
            panic!("not ready within {READY_LIMIT:?}; log:\n{}", cluster.coord_log())
        });
        if line.starts_with("server ") || line.starts_with(ftkv::lines::RESTORED) {
            println!("  coord: {line}");
        }
        if line.starts_with("cluster ready") {
            return began.elapsed();
        }
    }
}

/// The word after `name` in `line` (`records: 12,` gives `12`, `took_ms=5` with `=`).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = &line[line.find(name)? + name.len()..];
    rest.split([',', ' ', '}']).find(|w| !w.is_empty())
}

/// The sizes of the servers' logs, and what their own logs and the coordinator's (from byte
/// `since` on: this start's) say about where the restart's time went: each log's load, each
/// copy filled again.
fn report_files(cluster: &Cluster, since: usize) {
    for id in 0..3 {
        let aof = cluster.path(&format!("server_{id}.aof"));
        let bytes = std::fs::metadata(&aof).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::read_to_string(cluster.path(&format!("server_{id}.log")));
        let log = log.unwrap_or_default();
        let loaded = log.lines().rfind(|l| l.contains("log loaded")).unwrap_or_default();
        let (records, took) = (field(loaded, "records: "), field(loaded, "took_ms="));
        let (records, took) = (records.unwrap_or("?"), took.unwrap_or("?"));
        println!("  server_{id}.aof: {bytes} bytes now; loaded {records} records in {took} ms");
    }
    let log = cluster.coord_log();
    for line in log.get(since..).unwrap_or_default().lines() {
        if line.contains("copy filled again") {
            println!("  coord.log: {line}");
        }
    }
}

fn main() {
    let keys = env("FTKV_BENCH_KEYS", 1_000_000);
    let crashes = env("FTKV_BENCH_CRASHES", 1);
    let mut cluster = Cluster::start_with(3, &[]);

    let filled = Instant::now();
    let range = keys.to_string();
    let fill = ["bench", "-t", "get", "-n", "1", "-r", &range, "-d", "100", "-c", "50", "-P", "16"];
    let run = cluster.run_client(&fill, "");
    assert_eq!(run.code, 0, "filling: {}{}", run.stdout, run.stderr);
    println!("{keys} keys of 100 bytes stored (--fsync always) in {:.2?}", filled.elapsed());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    for round in 1..=crashes {
        crash(&mut cluster);
        let since = cluster.coord_log().len();
        let ready = restart(&mut cluster);
        println!("crash {round}: {keys} keys, coord start to cluster ready: {ready:.2?}");
        report_files(&cluster, since);
        runtime.block_on(async {
            let mut client = Client::new(cluster.coord_addr(), Duration::from_secs(10));
            for i in (0..keys as u64).step_by((keys / 1000).max(1)) {
                let got = client.get(&key_of(i)).await.unwrap();
                assert_eq!(got, Some(value_of(i, 100)), "key {i}");
            }
        });
        println!("  checked {} keys through a client", keys.div_ceil((keys / 1000).max(1)));
    }
}
