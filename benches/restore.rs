//! Restore speed: a set of dumps of N keys of 100-byte values (written here, with its
//! manifest, as a 3-server cluster's orderly shutdown leaves them), then `coord` started
//! on it; reports the time from the start of `coord` to "cluster ready" (the restore is
//! over: every key is on both copies and served), and checks a sample of keys through a
//! client. Compare with `scripts/bench/restore-redis.sh` (Redis loading an RDB of the same data).
//!
//! `cargo bench --bench restore` (1,000,000 keys); `FTKV_BENCH_KEYS=100000` for fewer.

#[path = "../tests/support/cluster.rs"]
mod cluster;
// Only for the ports module: the cluster holds its coordinator's ports where it runs.
#[allow(dead_code)]
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "../tests/support/ports.rs"]
mod ports;
#[path = "../tests/support/set.rs"]
mod set;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ftkv::client::Client;
use set::{key, write_set};

fn main() {
    let keys: usize =
        std::env::var("FTKV_BENCH_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    write_set(dir.path(), 3, keys);
    std::fs::write(
        dir.path().join("config.txt"),
        "3\n".to_string() + &"localhost 0 0 0\n".repeat(3),
    )
    .unwrap();

    let began = Instant::now();
    let mut coord = Command::new(cluster::COORD)
        .current_dir(dir.path())
        .args(["-c", "0", "-s", "0", "-C", "config.txt", "-l", "coord.log"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = 0;
    for line in BufReader::new(coord.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ftkv coordinator: clients port ") {
            port = rest.split(',').next().unwrap().parse().unwrap();
        }
        if line.starts_with(ftkv::lines::RESTORED) {
            println!("{line}");
        }
        if line.starts_with("cluster ready") {
            break;
        }
    }
    let ready = began.elapsed();
    println!("{keys} keys of 100 bytes: coord start to cluster ready (all restored): {ready:.2?}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = Client::new(format!("127.0.0.1:{port}"), Duration::from_secs(10));
        for i in (0..keys).step_by((keys / 1000).max(1)) {
            assert_eq!(client.get(&key(i)).await.unwrap().as_deref(), Some(&set::VALUE[..]));
        }
    });
    println!("checked 1000 keys through a client");
    let log = std::fs::read_to_string(dir.path().join("coord.log")).unwrap_or_default();
    let wanted = ["loaded and checked", "restored", "checked against", "restoring"];
    for line in log.lines().filter(|l| wanted.iter().any(|w| l.contains(w))) {
        println!("coord.log: {line}");
    }
    for id in 0..3 {
        let log = std::fs::read_to_string(dir.path().join(format!("server_{id}.log")));
        for line in log.unwrap_or_default().lines().filter(|l| l.contains("dumps loaded")) {
            println!("server_{id}.log: {line}");
        }
    }
    drop(coord.stdin.take().map(|mut stdin| stdin.flush()));
    let _ = coord.wait();
}
