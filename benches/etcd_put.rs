//! Durable puts on etcd, for scripts/bench/durable-etcd.sh: the other side of ftkv's
//! `--fsync always` puts. etcd acknowledges a put once it is in its raft log and that log is
//! fsync'ed (its WAL), so one etcd member on the same disk is the durable store to compare
//! with. A small load generator of the same shape as `client bench` and benches/redis_wait.rs:
//! `-c` tokio tasks on a 2-worker runtime, each sending one put at a time (etcd's gRPC API has
//! no pipelining), random keys `key:<12 digits>` out of `-r`, values of `-d` bytes.
//!
//! Connections: `--conns` gRPC channels (HTTP/2 connections), the tasks spread over them in
//! turn; by default one per task, as `client bench -c 50` and redis_wait hold one connection
//! per worker (etcd's own `benchmark` tool takes both numbers, `--conns` and `--clients`).
//!
//! `cargo bench --bench etcd_put -- --endpoints http://127.0.0.1:2379 -n 20000 -c 50 -d 16`
//! prints `etcd-put: <ops> ops/s p50=<us>us p99=<us>us p99.9=<us>us`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, ConnectOptions};
use ftkv::bench::{key_of, value_of};
use hdrhistogram::Histogram;

/// A put not answered in this long fails the run (etcd answers in milliseconds when well).
const PUT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
struct Args {
    /// etcd's client URLs, comma-separated.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Puts in all.
    #[arg(short = 'n', default_value_t = 20_000)]
    requests: u64,
    /// Concurrent puts (tasks, each with one put outstanding).
    #[arg(short = 'c', default_value_t = 50)]
    clients: usize,
    /// gRPC connections the tasks share (0: one per task).
    #[arg(long, default_value_t = 0)]
    conns: usize,
    /// Value size in bytes.
    #[arg(short = 'd', default_value_t = 16)]
    data_size: usize,
    /// Keyspace size.
    #[arg(short = 'r', default_value_t = 100_000)]
    keyspace: u64,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The next key index of a worker's splitmix64 sequence, in `0..range`: the same draw as
/// redis_wait's, so both generators spread their puts over the keyspace alike.
fn draw(state: &mut u64, range: u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((u128::from(z) * u128::from(range)) >> 64) as u64
}

/// Puts one at a time until `claimed` reaches the total; the latency of each.
async fn worker(
    args: Arc<Args>,
    mut client: Client,
    claimed: Arc<AtomicU64>,
    seed: u64,
) -> Result<Histogram<u64>, String> {
    let mut latency = Histogram::new_with_bounds(1, 600_000_000_000, 3).unwrap();
    let mut rng = seed;
    while claimed.fetch_add(1, Ordering::Relaxed) < args.requests {
        let index = draw(&mut rng, args.keyspace);
        let (key, value) = (key_of(index).to_vec(), value_of(index, args.data_size));
        let sent = Instant::now();
        match tokio::time::timeout(PUT_TIMEOUT, client.put(key, value, None)).await {
            Ok(Ok(_)) => latency.saturating_record(sent.elapsed().as_nanos() as u64),
            Ok(Err(e)) => return Err(format!("put: {e}")),
            Err(_) => return Err(format!("put: no answer within {PUT_TIMEOUT:?}")),
        }
    }
    Ok(latency)
}

fn main() {
    let args = Arc::new(Args::parse());
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let result = runtime.block_on(async {
        let conns = if args.conns == 0 { args.clients } else { args.conns.min(args.clients) };
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(5));
        let mut channels = Vec::with_capacity(conns);
        for _ in 0..conns {
            let client = Client::connect(&args.endpoints, Some(options.clone())).await;
            channels.push(client.map_err(|e| format!("connecting to {:?}: {e}", args.endpoints))?);
        }
        let claimed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.clients)
            .map(|i| {
                let client = channels[i % conns].clone();
                let seed = 0x5eed ^ (i as u64) << 32;
                tokio::spawn(worker(args.clone(), client, claimed.clone(), seed))
            })
            .collect();
        let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).unwrap();
        for task in tasks {
            latency.add(&task.await.map_err(|e| e.to_string())??).unwrap();
        }
        Ok::<_, String>((latency, started.elapsed()))
    });
    let (latency, elapsed) = result.unwrap_or_else(|e| {
        eprintln!("etcd_put: {e}");
        std::process::exit(2);
    });
    let micros = |q: f64| (latency.value_at_quantile(q) + 500) / 1000;
    println!(
        "etcd-put: {:.0} ops/s p50={}us p99={}us p99.9={}us",
        latency.len() as f64 / elapsed.as_secs_f64(),
        micros(0.5),
        micros(0.99),
        micros(0.999)
    );
}
