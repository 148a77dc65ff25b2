//! Coordinator restart under load: `kill -9` of `coord`, a new one started 0.5 s later on
//! the same state; reports, per restart, how long client operations were not served (the
//! window from the kill to the first success after it stopped being served) and the time
//! from the new coordinator's start to the first success.
//!
//! `cargo bench --bench coord_restart` (5 restarts; `FTKV_BENCH_RESTARTS` for more).

#[path = "../tests/support/cluster.rs"]
mod cluster;
// Only for the ports module: the cluster holds its coordinator's ports where it runs.
#[allow(dead_code)]
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "../tests/support/ports.rs"]
mod ports;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::Cluster;

const FLAGS: [&str; 4] = ["-t", "1", "--orphan-timeout", "30"];

fn main() {
    let restarts: usize =
        std::env::var("FTKV_BENCH_RESTARTS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut cluster = Cluster::start_with(3, &FLAGS);
    let successes = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|c| {
            let mut client = cluster.client();
            let (successes, stop) = (successes.clone(), stop.clone());
            runtime.spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let key = format!("c{c}-{}", i % 100);
                    if client.put(key.as_bytes(), b"value").await.is_ok() {
                        successes.lock().unwrap().push(Instant::now());
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (mut windows, mut after_start) = (Vec::new(), Vec::new());
    for _ in 0..restarts {
        let killed = Instant::now();
        cluster.kill_coord();
        std::thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        cluster.restart_coord(&FLAGS);
        std::thread::sleep(Duration::from_secs(2));
        let seen = successes.lock().unwrap().clone();
        let after: Vec<Instant> = seen.into_iter().filter(|&t| t >= killed).collect();
        // The longest stretch without a success, from the kill on.
        let (gap, resumed) = after
            .windows(2)
            .map(|w| (w[1] - w[0], w[1]))
            .chain(after.first().map(|&t| (t - killed, t)))
            .max()
            .expect("operations succeed after the restart");
        windows.push(gap);
        after_start.push(resumed.saturating_duration_since(started));
        println!(
            "kill -9 -> longest time unserved {gap:.2?}; first success {:.2?} after the new \
             coordinator was started",
            resumed.saturating_duration_since(started)
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        runtime.block_on(task).unwrap();
    }
    windows.sort();
    after_start.sort();
    println!(
        "{restarts} restarts: unserved median {:.2?} max {:.2?}; served again after the new \
         coordinator's start: median {:.2?} max {:.2?}",
        windows[restarts / 2],
        windows[restarts - 1],
        after_start[restarts / 2],
        after_start[restarts - 1]
    );
    cluster.ctrl_d();
}
