//! Put latency while a log is being compacted, against the latency outside compactions.
//!
//! A 3-server cluster (`--fsync always`, `--compact-min-mib`, default 64) is filled with
//! `FTKV_BENCH_KEYS` keys (default 250,000) of 100-byte values; then 50 clients overwrite
//! random keys among them until `FTKV_BENCH_REWRITES` compactions (default 3) have run on
//! the servers, or 300 s. A thread watches the dump directory every millisecond for each
//! server's `server_N.aof.rewrite` (the file a compaction writes), which gives the time
//! spans of compactions; every put is timed, and those that overlapped a compaction are
//! counted apart. Prints both percentiles and their ratio (target: p99 within 2x).
//!
//! `cargo bench --bench compaction`; `FTKV_BENCH_KEYS=20000 FTKV_BENCH_COMPACT_MIB=4` for a
//! quick look.

#[path = "../tests/support/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../tests/support/netns.rs"]
mod netns;
#[path = "../tests/support/ports.rs"]
mod ports;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ftkv::client::Client;
use hdrhistogram::Histogram;

const CLIENTS: usize = 50;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One timed put: when it began and ended, since the bench's start.
type Timed = (Duration, Duration);

fn main() {
    let keys = env("FTKV_BENCH_KEYS", 250_000);
    let min_mib = env("FTKV_BENCH_COMPACT_MIB", 64).to_string();
    let rewrites = env("FTKV_BENCH_REWRITES", 3) as usize;
    let cluster = cluster::Cluster::start_with(3, &["--compact-min-mib", &min_mib]);
    let addr = cluster.coord_addr();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let value = vec![b'v'; 100];

    let began = Instant::now();
    runtime.block_on(run_clients(&addr, keys, &value, None));
    println!("filled {keys} keys of 100 bytes in {:.1?}", began.elapsed());

    let epoch = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = watch_rewrites(cluster.dir.path().to_path_buf(), epoch, done.clone(), rewrites);
    let puts = runtime.block_on(run_clients(&addr, keys, &value, Some((epoch, done.clone()))));
    let spans = watcher.join().unwrap();
    let took = epoch.elapsed();
    report(&puts, &spans, took);
    for id in 0..3 {
        let log = std::fs::read_to_string(cluster.path(&format!("server_{id}.log")));
        for line in log.unwrap_or_default().lines().filter(|l| l.contains("log compacted")) {
            println!("server_{id}.log: {line}");
        }
    }
}

/// 50 clients putting keys `0..keys`: each once in turn (the fill, `timed` None), or random
/// ones until `done`, every put timed from `epoch`.
async fn run_clients(
    addr: &str,
    keys: u64,
    value: &[u8],
    timed: Option<(Instant, Arc<AtomicBool>)>,
) -> Vec<Timed> {
    let tasks: Vec<_> = (0..CLIENTS as u64)
        .map(|c| {
            let (mut client, value) =
                (Client::new(addr.to_string(), Duration::from_secs(30)), value.to_vec());
            let timed = timed.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut rng = c.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                let mut next = c;
                loop {
                    let key = match &timed {
                        None if next >= keys => return out,
                        None => {
                            next += CLIENTS as u64;
                            next - CLIENTS as u64
                        }
                        Some((_, done)) if done.load(Ordering::Relaxed) => return out,
                        Some(_) => {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            rng % keys
                        }
                    };
                    let start = Instant::now();
                    client.put(format!("key:{key:012}").as_bytes(), &value).await.expect("put");
                    if let Some((epoch, _)) = &timed {
                        out.push((start - *epoch, start.elapsed()));
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Watches `dir` for the servers' rewrite files; returns the spans during which one
/// existed. Sets `done` after `rewrites` spans or 300 s.
fn watch_rewrites(
    dir: PathBuf,
    epoch: Instant,
    done: Arc<AtomicBool>,
    rewrites: usize,
) -> std::thread::JoinHandle<Vec<(Duration, Duration)>> {
    std::thread::spawn(move || {
        let mut spans = Vec::new();
        let mut since = None;
        while spans.len() < rewrites && epoch.elapsed() < Duration::from_secs(300) {
            let any = (0..3).any(|id| dir.join(format!("server_{id}.aof.rewrite")).exists());
            match (any, since) {
                (true, None) => since = Some(epoch.elapsed()),
                (false, Some(start)) => {
                    spans.push((start, epoch.elapsed()));
                    since = None;
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        done.store(true, Ordering::Relaxed);
        spans
    })
}

fn report(puts: &[Timed], spans: &[(Duration, Duration)], took: Duration) {
    let mut during = Histogram::<u64>::new(3).unwrap();
    let mut outside = Histogram::<u64>::new(3).unwrap();
    for &(start, latency) in puts {
        let end = start + latency;
        let overlaps = spans.iter().any(|&(from, to)| start < to && end > from);
        let us = latency.as_micros() as u64;
        if overlaps { during.record(us) } else { outside.record(us) }.unwrap();
    }
    let in_rewrites: Duration = spans.iter().map(|(from, to)| *to - *from).sum();
    println!(
        "{} puts in {took:.1?} ({:.0}/s), {} compactions taking {in_rewrites:.1?} in all",
        puts.len(),
        puts.len() as f64 / took.as_secs_f64(),
        spans.len()
    );
    println!("| puts | count | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (name, h) in [("during a compaction", &during), ("outside compactions", &outside)] {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let max = h.max() as f64 / 1000.0;
        println!(
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {max:.2} |",
            h.len(),
            ms(0.5),
            ms(0.99),
            ms(0.999)
        );
    }
    let ratio = during.value_at_quantile(0.99) as f64 / outside.value_at_quantile(0.99) as f64;
    println!("p99 during / outside: {ratio:.2}x (target: at most 2x)");
}
