//! Synchronous replication on Redis, for scripts/bench/compare.sh: every operation is `SET key
//! value` followed by `WAIT <replicas> 0`, and counts as done when WAIT answers (when that many
//! replicas acknowledged the write). redis-benchmark cannot time such a pair, so this is a
//! small load generator of the same shape as `client bench`: `-c` tokio tasks on a 2-worker
//! runtime, each with one connection, `-P` operations written at once then their replies read,
//! random keys `key:<12 digits>` out of `-r`. With `--batch-wait`, one WAIT follows each batch
//! of `-P` SETs instead (every SET of the batch is done when that WAIT answers). With
//! `--no-wait` it sends plain SETs (to compare this generator with redis-benchmark).
//!
//! `cargo bench --bench redis_wait -- -p 6390 -n 20000 -c 50 -d 16 -P 1`
//! prints `set+wait: <ops>/s p50=<us>us p99=<us>us p99.9=<us>us`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use ftkv::bench::{key_of, value_of};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(disable_help_flag = true)]
struct Args {
    #[arg(short = 'h', long, default_value = "127.0.0.1")]
    host: String,
    #[arg(short = 'p', long, default_value_t = 6390)]
    port: u16,
    /// Operations in all.
    #[arg(short = 'n', default_value_t = 100_000)]
    requests: u64,
    /// Connections.
    #[arg(short = 'c', default_value_t = 50)]
    clients: usize,
    /// Value size in bytes.
    #[arg(short = 'd', default_value_t = 3)]
    data_size: usize,
    /// Operations (SET+WAIT pairs) written at once per connection.
    #[arg(short = 'P', default_value_t = 1)]
    pipeline: usize,
    /// Keyspace size.
    #[arg(short = 'r', default_value_t = 100_000)]
    keyspace: u64,
    /// Replicas WAIT waits for.
    #[arg(long, default_value_t = 1)]
    replicas: i64,
    /// One WAIT after each batch of `-P` SETs rather than after each SET.
    #[arg(long, conflicts_with = "no_wait")]
    batch_wait: bool,
    /// Plain SET, no WAIT.
    #[arg(long)]
    no_wait: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

struct Stats {
    latency: Histogram<u64>,
    /// Bad replies, and the first few of them.
    bad: u64,
    samples: Vec<String>,
}

async fn worker(args: Arc<Args>, claimed: Arc<AtomicU64>, seed: u64) -> Result<Stats, String> {
    let stream = TcpStream::connect((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("connecting to {}:{}: {e}", args.host, args.port))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut stats = Stats {
        latency: Histogram::new_with_bounds(1, 600_000_000_000, 3).unwrap(),
        bad: 0,
        samples: Vec::new(),
    };
    let mut rng = seed;
    let mut out = Vec::new();
    let mut line = String::new();
    let wait = format!(
        "*3\r\n$4\r\nWAIT\r\n${}\r\n{}\r\n$1\r\n0\r\n",
        args.replicas.to_string().len(),
        args.replicas
    );
    loop {
        let first = claimed.fetch_add(args.pipeline as u64, Ordering::Relaxed);
        let count = args.requests.saturating_sub(first).min(args.pipeline as u64);
        if count == 0 {
            return Ok(stats);
        }
        out.clear();
        for _ in 0..count {
            rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            let index = ((u128::from(z) * u128::from(args.keyspace)) >> 64) as u64;
            out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
            bulk(&mut out, &key_of(index));
            bulk(&mut out, &value_of(index, args.data_size));
            if !args.no_wait && !args.batch_wait {
                out.extend_from_slice(wait.as_bytes());
            }
        }
        if args.batch_wait {
            out.extend_from_slice(wait.as_bytes());
        }
        let sent = Instant::now();
        write.write_all(&out).await.map_err(|e| format!("writing: {e}"))?;
        for i in 0..count {
            let mut replies = vec!["+OK"];
            if !args.no_wait && (!args.batch_wait || i + 1 == count) {
                replies.push(":");
            }
            for expected in replies {
                line.clear();
                match tokio::time::timeout(REPLY_TIMEOUT, read.read_line(&mut line)).await {
                    Ok(Ok(0)) => return Err("connection closed".into()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(format!("reading: {e}")),
                    Err(_) => return Err(format!("no reply within {REPLY_TIMEOUT:?}")),
                }
                let reply = line.trim_end();
                let good = match expected {
                    ":" => reply
                        .strip_prefix(':')
                        .and_then(|n| n.parse::<i64>().ok())
                        .is_some_and(|n| n >= args.replicas),
                    _ => reply == expected,
                };
                if !good {
                    stats.bad += 1;
                    if stats.samples.len() < 5 {
                        stats.samples.push(format!("reply {reply:?}, expected {expected}"));
                    }
                }
            }
            if !args.batch_wait {
                stats.latency.saturating_record(sent.elapsed().as_nanos() as u64);
            }
        }
        if args.batch_wait {
            // Every SET of the batch is done when its WAIT answers.
            stats.latency.saturating_record_n(sent.elapsed().as_nanos() as u64, count);
        }
    }
}

fn main() {
    let args = Arc::new(Args::parse());
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let name = match (args.no_wait, args.batch_wait) {
        (true, _) => "set",
        (false, true) => "set+batch-wait",
        (false, false) => "set+wait",
    };
    let (latency, bad, samples, elapsed) = runtime.block_on(async {
        let claimed = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let tasks: Vec<_> = (0..args.clients)
            .map(|i| tokio::spawn(worker(args.clone(), claimed.clone(), 0x5eed ^ (i as u64) << 32)))
            .collect();
        let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).unwrap();
        let (mut bad, mut samples) = (0, Vec::new());
        for task in tasks {
            match task.await.unwrap() {
                Ok(stats) => {
                    latency.add(&stats.latency).unwrap();
                    bad += stats.bad;
                    samples.extend(stats.samples);
                }
                Err(e) => {
                    eprintln!("redis_wait: {e}");
                    std::process::exit(2);
                }
            }
        }
        (latency, bad, samples, started.elapsed())
    });
    let micros = |q: f64| (latency.value_at_quantile(q) + 500) / 1000;
    println!(
        "{name}: {:.0} ops/s p50={}us p99={}us p99.9={}us",
        latency.len() as f64 / elapsed.as_secs_f64(),
        micros(0.5),
        micros(0.99),
        micros(0.999)
    );
    if bad > 0 {
        for sample in samples.iter().take(5) {
            eprintln!("redis_wait: {sample}");
        }
        eprintln!("redis_wait: {bad} bad replies");
        std::process::exit(2);
    }
}
