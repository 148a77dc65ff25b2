//! Recovery speed: load keys into a 3-server cluster, kill -9 one server, and report how
//! long until full redundancy is restored (from the coordinator's log).
//!
//! `cargo bench --bench recovery` (100,000 keys of 100 bytes);
//! `FTKV_BENCH_KEYS=1000000 cargo bench --bench recovery` for a million.

#[path = "../tests/support/cluster.rs"]
mod cluster;
// Only for the ports module: the cluster holds its coordinator's ports where it runs.
#[allow(dead_code)]
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "../tests/support/ports.rs"]
mod ports;

use std::time::{Duration, Instant};

use cluster::{Cluster, kill, wait_until};

fn main() {
    let keys: usize =
        std::env::var("FTKV_BENCH_KEYS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = Cluster::start_with(3, &["-t", "1"]);
    let began = Instant::now();
    runtime.block_on(async {
        let clients = 32;
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let mut client = cluster.client();
                tokio::spawn(async move {
                    let value = [b'v'; 100];
                    for i in (c..keys).step_by(clients) {
                        client.put(format!("key-{i:08}").as_bytes(), &value).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    println!("loaded {keys} keys of 100 bytes in {:.2?}", began.elapsed());

    let victim = 1;
    kill(cluster.pids[victim], "KILL");
    let killed = Instant::now();
    let done =
        wait_until(Duration::from_secs(300), || cluster.coord_log().contains("recovery complete"));
    assert!(done, "recovery did not complete:\n{}", cluster.coord_log());
    let log = cluster.coord_log();
    let line =
        |needle: &str| log.lines().find(|l| l.contains(needle)).unwrap_or_default().to_string();
    let timestamp = |l: &str| l.split_whitespace().next().unwrap_or_default().to_string();
    let started = line("replacement server started");
    let complete = line("recovery complete");
    println!("kill -9 to full redundancy (observed): {:.2?}", killed.elapsed());
    println!("a+ started at {}", timestamp(&started));
    println!("{complete}");
    let field = |name: &str| {
        complete
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or("?")
            .to_string()
    };
    let micros = |ts: &str| -> Option<f64> {
        let time = ts.split('T').nth(1)?.trim_end_matches('Z');
        let mut parts = time.split(':');
        let (h, m, s): (f64, f64, f64) =
            (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
        Some((h * 3600.0 + m * 60.0 + s) * 1e6)
    };
    if let (Some(a), Some(b)) = (micros(&timestamp(&started)), micros(&timestamp(&complete))) {
        println!("a+ started to full redundancy: {:.0} ms", (b - a) / 1000.0);
    }
    println!(
        "keys copied {}, bytes copied {}, whole recovery (incl. lease wait) {} ms",
        field("keys_copied"),
        field("bytes_copied"),
        field("took_ms")
    );
    cluster.ctrl_d();
}
