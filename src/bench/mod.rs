//! `client bench`: a load generator in the manner of redis-benchmark.
//!
//! `connections` workers run as tokio tasks; each fetches nothing itself but shares the
//! configuration fetched once from the coordinator, and keeps its own connection to every
//! server. A worker claims up to `pipeline` requests at a time, writes them, then reads the
//! answers (a connection answers in request order). The latency of a request runs from the
//! moment its batch was written to the moment its answer arrived, retries included.
//!
//! The keys of one batch are drawn at random among the keys of one slot, and a worker's
//! successive batches take the slots in turn: every batch is one write and one read on one
//! connection, as a pipeline is against a single Redis (redis-benchmark `--cluster` does the
//! same with hash tags), while over the run the keys spread evenly over every server.
//! Retried requests go to whichever server serves them by then.
//!
//! Every answer is checked: a PUT must be `Stored`; a GET of a key this run stored must
//! return exactly the value stored, and a GET of any other key must return nothing or a
//! value this benchmark could have written (values are a deterministic function of the key).
//! `WrongOwner` and `Unavailable` refusals, broken connections and lost answers are retried
//! with a fresh configuration until the request's deadline; anything else is an error.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::join_all;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::client::Client;
use crate::connection::Connection;
use crate::error::Error;
use crate::protocol::{ClientRequestRef, ClientResponse, MAX_VALUE_LEN, Op, Refusal};
use crate::routing::{ClusterConfig, slot_of};

/// Longest wait for one answer before its request counts as lost (and is retried).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_BACKOFF: Duration = Duration::from_millis(20);
/// Keys are `key:` and 12 decimal digits, like redis-benchmark's `key:__rand_int__`.
pub const KEY_LEN: usize = 16;
/// The bench keeps a bit per key (which were written, so that a GET can be checked): 125 MB
/// at this size. (At 10^12 it tried to allocate 125 GB and aborted.)
const MAX_KEYSPACE: u64 = 1_000_000_000;
/// Keyspaces up to this size get a list of every slot's keys (4 bytes a key, made once);
/// larger ones draw keys until one falls in the slot.
const LISTED_KEYSPACE: u64 = 1 << 21;
/// Error messages kept per phase (the count is always exact).
const KEPT_ERRORS: usize = 5;

/// An operation type to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BenchOp {
    Put,
    Get,
}

impl BenchOp {
    pub fn name(self) -> &'static str {
        match self {
            BenchOp::Put => "put",
            BenchOp::Get => "get",
        }
    }
}

impl FromStr for BenchOp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "put" | "set" => Ok(BenchOp::Put),
            "get" => Ok(BenchOp::Get),
            _ => Err(format!("unknown test {s:?} (expected put or get)")),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// `host:port` of the coordinator's clients port.
    pub coordinator: String,
    /// Requests per operation type (ignored when `duration` is set).
    pub requests: u64,
    /// Run each operation type for this long instead of `requests` requests.
    pub duration: Option<Duration>,
    /// Concurrent workers, each with its own connection to every server.
    pub connections: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Requests in flight per worker.
    pub pipeline: usize,
    /// Operation types; run in the order put, get whatever the order given.
    pub ops: Vec<BenchOp>,
    /// Keys are drawn uniformly from `key:000000000000` .. `key:<keyspace - 1>`.
    pub keyspace: u64,
    /// How long one request keeps retrying before it counts as an error.
    pub timeout: Duration,
    /// Show a progress line on standard error.
    pub progress: bool,
}

impl BenchOptions {
    fn check(&self) -> Result<(), String> {
        if self.requests == 0 && self.duration.is_none() {
            return Err("-n must be at least 1".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err("--duration must be positive".into());
        }
        if self.connections == 0 {
            return Err("-c must be at least 1".into());
        }
        if self.pipeline == 0 {
            return Err("-P must be at least 1".into());
        }
        if self.keyspace == 0 || self.keyspace > MAX_KEYSPACE {
            return Err(format!("-r must be between 1 and {MAX_KEYSPACE}"));
        }
        if self.value_size > MAX_VALUE_LEN {
            return Err(format!("-d must be at most {MAX_VALUE_LEN}"));
        }
        if self.ops.is_empty() {
            return Err("-t names no test".into());
        }
        Ok(())
    }
}

/// One phase of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// Not measured: stores every key of the keyspace once, so that a `-t get` run reads
    /// keys that exist.
    Fill,
    /// Measured: `op` on random keys.
    Measure(BenchOp),
}

/// The outcome of one phase.
pub struct PhaseReport {
    pub kind: PhaseKind,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed (wrong value, unexpected answer, deadline passed).
    pub errors: u64,
    /// Attempts repeated after a refusal, a broken connection or a lost answer.
    pub retries: u64,
    /// GETs that found no value (keys this run did not store).
    pub absent: u64,
    /// The first few errors, for the report.
    pub error_samples: Vec<String>,
    pub elapsed: Duration,
    /// Latency of successful requests, in microseconds.
    pub latency: Histogram<u64>,
}

impl PhaseReport {
    pub fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at `quantile` in microseconds.
    pub fn micros(&self, quantile: f64) -> u64 {
        self.latency.value_at_quantile(quantile)
    }

    /// `put: 85000 ops/s p50=450us p99=1200us p99.9=2500us`, or for the fill phase
    /// `fill: 100000 keys in 1.23 s`.
    pub fn line(&self) -> String {
        match self.kind {
            PhaseKind::Fill => {
                format!("fill: {} keys in {:.2} s", self.ok, self.elapsed.as_secs_f64())
            }
            PhaseKind::Measure(op) => format!(
                "{}: {:.0} ops/s p50={}us p99={}us p99.9={}us",
                op.name(),
                self.ops_per_sec(),
                self.micros(0.50),
                self.micros(0.99),
                self.micros(0.999),
            ),
        }
    }
}

/// The key with index `index`: `key:` and 12 digits.
pub fn key_of(index: u64) -> [u8; KEY_LEN] {
    let mut key = *b"key:000000000000";
    let mut rest = index;
    for byte in key[4..].iter_mut().rev() {
        *byte = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    key
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Key `index`'s value, eight bytes at a time: lowercase letters `a` to `p` from a
/// splitmix stream (one step per 8 bytes, so checking a 1 KiB answer costs little). A value
/// of any length is a prefix of the longer ones, so a value written by an earlier run with
/// another `-d` still checks.
fn value_words(index: u64) -> impl Iterator<Item = [u8; 8]> {
    let mut state = index ^ 0x6674_6b76_6265_6e63;
    std::iter::repeat_with(move || {
        ((splitmix64(&mut state) & 0x0f0f_0f0f_0f0f_0f0f) + 0x6161_6161_6161_6161).to_le_bytes()
    })
}

/// The value the benchmark stores under key `index`.
pub fn value_of(index: u64, len: usize) -> Vec<u8> {
    value_words(index).flatten().take(len).collect()
}

/// Whether `value` is a value the benchmark could have stored under key `index`.
pub fn is_value_of(index: u64, value: &[u8]) -> bool {
    let mut words = value_words(index);
    let mut chunks = value.chunks_exact(8);
    chunks.by_ref().zip(words.by_ref()).all(|(chunk, word)| chunk == word) && {
        let rest = chunks.remainder();
        words.next().is_some_and(|word| rest == &word[..rest.len()])
    }
}

/// Draws random keys of a given slot.
struct KeyPicker {
    keyspace: u64,
    slots: u32,
    /// `by_slot[s]`: the indices of the keys of slot `s`, when the keyspace is listed.
    by_slot: Option<Vec<Vec<u32>>>,
}

impl KeyPicker {
    fn new(keyspace: u64, slots: u32) -> Self {
        let by_slot = (keyspace <= LISTED_KEYSPACE).then(|| {
            let mut by_slot = vec![Vec::new(); slots as usize];
            for index in 0..keyspace {
                by_slot[slot_of(&key_of(index), slots) as usize].push(index as u32);
            }
            by_slot
        });
        KeyPicker { keyspace, slots, by_slot }
    }

    /// A random key index of `slot`, and its slot: `slot`, unless `slot` has no keys at all
    /// (a tiny keyspace), when any key will do.
    fn pick(&self, slot: u32, rng: &mut u64) -> (u64, u32) {
        match &self.by_slot {
            Some(by_slot) => match &by_slot[slot as usize] {
                keys if keys.is_empty() => {
                    let index = below(rng, self.keyspace);
                    (index, slot_of(&key_of(index), self.slots))
                }
                keys => (u64::from(keys[below(rng, keys.len() as u64) as usize]), slot),
            },
            None => loop {
                let index = below(rng, self.keyspace);
                if slot_of(&key_of(index), self.slots) == slot {
                    return (index, slot);
                }
            },
        }
    }
}

/// A random number below `bound`: multiply-shift, uniform enough for a benchmark and no
/// division.
fn below(rng: &mut u64, bound: u64) -> u64 {
    ((u128::from(splitmix64(rng)) * u128::from(bound)) >> 64) as u64
}

/// Which keys a put of this run has stored (acknowledged), one bit per key.
struct StoredKeys(Vec<AtomicU64>);

impl StoredKeys {
    fn new(keyspace: u64) -> Self {
        StoredKeys((0..keyspace.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    fn set(&self, index: u64) {
        self.0[(index / 64) as usize].fetch_or(1 << (index % 64), Ordering::Relaxed);
    }

    fn get(&self, index: u64) -> bool {
        self.0[(index / 64) as usize].load(Ordering::Relaxed) & (1 << (index % 64)) != 0
    }
}

/// What the workers of one phase share.
struct Phase {
    kind: PhaseKind,
    op: BenchOp,
    /// Requests to run, or run until this instant.
    limit: Limit,
    /// Keys in order (fill) or at random.
    sequential: bool,
    claimed: AtomicU64,
    done: AtomicU64,
    stored: Arc<StoredKeys>,
    keys: Arc<KeyPicker>,
    value_size: usize,
    pipeline: usize,
    timeout: Duration,
}

#[derive(Clone, Copy)]
enum Limit {
    Requests(u64),
    Until(Instant),
}

impl Phase {
    /// Claims up to `want` new requests: `(first sequence number, count)`.
    fn claim(&self, want: usize) -> (u64, usize) {
        match self.limit {
            Limit::Requests(total) => {
                let first = self.claimed.fetch_add(want as u64, Ordering::Relaxed);
                (first, total.saturating_sub(first).min(want as u64) as usize)
            }
            Limit::Until(end) if Instant::now() < end => {
                (self.claimed.fetch_add(want as u64, Ordering::Relaxed), want)
            }
            Limit::Until(_) => (0, 0),
        }
    }
}

/// One request of a batch.
struct Pending {
    index: u64,
    key: [u8; KEY_LEN],
    /// The key's slot (fixed for a run: which server serves it may change).
    slot: u32,
    /// When it was first tried: latencies and the retry deadline count from here.
    first_sent: Instant,
}

/// What one worker counted in one phase.
struct Stats {
    ok: u64,
    errors: u64,
    retries: u64,
    absent: u64,
    samples: Vec<String>,
    latency: Histogram<u64>,
}

impl Stats {
    fn new() -> Self {
        Stats {
            ok: 0,
            errors: 0,
            retries: 0,
            absent: 0,
            samples: Vec::new(),
            latency: new_histogram(),
        }
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.samples.len() < KEPT_ERRORS {
            self.samples.push(what);
        }
    }
}

/// Latencies in microseconds (as redis-benchmark), 1 us to 10 minutes, 3 significant digits.
/// Nanoseconds needed a histogram 8 times the size, and recording into it was the costliest
/// line of the load generator (cache misses).
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// A request and its answer, with when the answer was read.
type Answered = (Pending, Result<ClientResponse, String>, Instant);

/// One concurrent connection of the benchmark.
struct Worker {
    rng: u64,
    /// Counts this worker's batches: batch `turn` draws its keys from slot `turn % n`.
    turn: u32,
    config: Arc<ClusterConfig>,
    /// Refreshes the configuration, and holds the connection to every server.
    client: Client,
    /// Buffers kept from one batch to the next, so that a batch to one server allocates
    /// nothing: the requests, the same split by server id, and their answers.
    batch: Vec<Pending>,
    groups: Vec<Vec<Pending>>,
    answers: Vec<Answered>,
}

impl Worker {
    async fn connect_all(&mut self) -> Result<(), Error> {
        for server in &self.config.servers {
            self.client.servers().open(server).await?;
        }
        Ok(())
    }

    async fn run(&mut self, phase: &Phase) -> Stats {
        let mut stats = Stats::new();
        let mut retry: Vec<Pending> = Vec::new();
        // One operation reused for every request: no allocation per request.
        let mut op = match phase.op {
            BenchOp::Put => Op::Put { key: Vec::new(), value: Vec::new() },
            BenchOp::Get => Op::Get { key: Vec::new() },
        };
        loop {
            let mut batch = std::mem::take(&mut self.batch);
            batch.append(&mut retry);
            if batch.len() < phase.pipeline {
                let now = Instant::now();
                let (first, count) = phase.claim(phase.pipeline - batch.len());
                let slot = self.turn % self.config.len();
                self.turn = self.turn.wrapping_add(1);
                for seq in first..first + count as u64 {
                    let (index, slot) = if phase.sequential {
                        let index = seq % phase.keys.keyspace;
                        (index, self.config.slot_of(&key_of(index)))
                    } else {
                        phase.keys.pick(slot, &mut self.rng)
                    };
                    batch.push(Pending { index, key: key_of(index), slot, first_sent: now });
                }
            }
            if batch.is_empty() {
                return stats;
            }
            let mut groups = std::mem::take(&mut self.groups);
            groups.resize_with(self.config.servers.len(), Vec::new);
            for pending in batch.drain(..) {
                let id = self.config.serving[pending.slot as usize] as usize;
                groups[id].push(pending);
            }
            self.batch = batch;

            // Write every group, then read every group's answers concurrently.
            let mut refresh = false;
            for (id, group) in groups.iter_mut().enumerate() {
                if group.is_empty() {
                    continue;
                }
                if let Err(e) = self.send(id, group, phase, &mut op).await {
                    self.client.servers().forget(id as u32);
                    refresh = true;
                    for pending in group.drain(..) {
                        self.again(pending, phase, &e.to_string(), &mut stats, &mut retry);
                    }
                }
            }
            let mut answers = std::mem::take(&mut self.answers);
            let mut busy = groups.iter().enumerate().filter(|(_, group)| !group.is_empty());
            if let (Some((id, _)), None) = (busy.next(), busy.next()) {
                // One server (the usual case: a batch's keys share a slot).
                let conn = self.client.servers().get(id as u32);
                if read_answers(conn, &mut groups[id], &mut answers).await {
                    self.client.servers().forget(id as u32);
                }
            } else {
                let reads = self
                    .client
                    .servers()
                    .each_mut()
                    .zip(groups.iter_mut())
                    .enumerate()
                    .filter(|(_, (_, group))| !group.is_empty())
                    .map(|(id, (conn, group))| async move {
                        let mut answers = Vec::with_capacity(group.len());
                        let failed = read_answers(conn, group, &mut answers).await;
                        (id as u32, failed, answers)
                    });
                for (id, failed, part) in join_all(reads).await {
                    if failed {
                        self.client.servers().forget(id);
                    }
                    answers.extend(part);
                }
            }
            self.groups = groups;
            for (pending, answer, at) in answers.drain(..) {
                match check(phase, &pending, answer) {
                    Checked::Ok { absent } => {
                        let latency = at.duration_since(pending.first_sent);
                        let micros = (latency.as_nanos() + 500) / 1000;
                        stats.latency.saturating_record(micros as u64);
                        stats.ok += 1;
                        stats.absent += u64::from(absent);
                        if phase.op == BenchOp::Put {
                            phase.stored.set(pending.index);
                        }
                        phase.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Checked::Retry(why) => {
                        refresh = true;
                        self.again(pending, phase, &why, &mut stats, &mut retry);
                    }
                    Checked::Error(why) => {
                        stats.error(why);
                        phase.done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            self.answers = answers;
            if refresh {
                tokio::time::sleep(RETRY_BACKOFF).await;
                let deadline = Instant::now() + phase.timeout;
                if let Ok(config) = self.client.refresh_config(deadline).await {
                    self.config = config;
                }
            }
        }
    }

    /// Writes `group`'s requests to server `id` and flushes them.
    async fn send(
        &mut self,
        id: usize,
        group: &[Pending],
        phase: &Phase,
        op: &mut Op,
    ) -> Result<(), Error> {
        let conn = self.client.servers().open(&self.config.servers[id]).await?;
        let epoch = self.config.epoch;
        for pending in group.iter() {
            match op {
                Op::Put { key, value } => {
                    key.clear();
                    key.extend_from_slice(&pending.key);
                    value.clear();
                    value.extend(value_words(pending.index).flatten().take(phase.value_size));
                }
                Op::Get { key } | Op::Del { key } => {
                    key.clear();
                    key.extend_from_slice(&pending.key);
                }
            }
            conn.writer.feed(&ClientRequestRef { epoch, op }).await?;
        }
        conn.writer.flush().await
    }

    /// Queues `pending` for another attempt, or counts an error once its deadline passed.
    fn again(
        &self,
        pending: Pending,
        phase: &Phase,
        why: &str,
        stats: &mut Stats,
        retry: &mut Vec<Pending>,
    ) {
        let expired = pending.first_sent.elapsed() >= phase.timeout;
        if expired {
            let key = String::from_utf8_lossy(&pending.key).into_owned();
            stats.error(format!(
                "{} {key}: gave up after {:?}: {why}",
                phase.op.name(),
                phase.timeout
            ));
            phase.done.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.retries += 1;
            retry.push(pending);
        }
    }
}

/// Reads one answer per request of `group`, in order, within [`ANSWER_TIMEOUT`] for the
/// group. After a failure the rest of the group gets the same error, and the answer is
/// true: the caller drops the connection. The clock is read only when an answer had to be
/// waited for: answers that came in one read arrived together.
async fn read_answers(
    mut conn: Option<&mut Connection>,
    group: &mut Vec<Pending>,
    out: &mut Vec<Answered>,
) -> bool {
    let mut failed: Option<String> = None;
    let mut at = Instant::now();
    let deadline = at + ANSWER_TIMEOUT;
    for pending in group.drain(..) {
        let answer = match (&failed, conn.as_deref_mut()) {
            (Some(why), _) => Err(why.clone()),
            (None, None) => Err("not connected".to_string()),
            (None, Some(conn)) => {
                let waited = !conn.reader.has_complete_frame();
                let answer = match tokio::time::timeout_at(deadline, conn.reader.recv()).await {
                    Ok(Ok(Some(answer))) => Ok(answer),
                    Ok(Ok(None)) => Err(Error::Closed.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(Error::Timeout("waiting for an answer").to_string()),
                };
                if waited {
                    at = Instant::now();
                }
                if let Err(why) = &answer {
                    failed = Some(why.clone());
                }
                answer
            }
        };
        out.push((pending, answer, at));
    }
    failed.is_some()
}

enum Checked {
    Ok { absent: bool },
    Retry(String),
    Error(String),
}

/// Checks one answer against what the benchmark stored.
fn check(phase: &Phase, pending: &Pending, answer: Result<ClientResponse, String>) -> Checked {
    let key = || String::from_utf8_lossy(&pending.key).into_owned();
    let answer = match answer {
        Ok(answer) => answer,
        Err(why) => return Checked::Retry(why),
    };
    match (phase.op, answer) {
        (
            _,
            ClientResponse::Refused(
                refusal @ (Refusal::WrongOwner { .. } | Refusal::Unavailable(_)),
            ),
        ) => Checked::Retry(refusal.to_string()),
        (BenchOp::Put, ClientResponse::Stored) => Checked::Ok { absent: false },
        (BenchOp::Get, ClientResponse::Value(value)) => {
            let stored = phase.stored.get(pending.index);
            match value {
                None if stored => Checked::Error(format!("get {}: not found after a put", key())),
                None => Checked::Ok { absent: true },
                Some(value) if stored && value.len() != phase.value_size => {
                    Checked::Error(format!(
                        "get {}: {} bytes, expected the {} put",
                        key(),
                        value.len(),
                        phase.value_size
                    ))
                }
                Some(value) if is_value_of(pending.index, &value) => Checked::Ok { absent: false },
                Some(value) => Checked::Error(format!(
                    "get {}: wrong value {:?}",
                    key(),
                    String::from_utf8_lossy(&value[..value.len().min(40)])
                )),
            }
        }
        (op, answer) => {
            Checked::Error(format!("{} {}: unexpected answer {answer:?}", op.name(), key()))
        }
    }
}

/// A benchmark ready to run: configuration fetched and every worker connected.
pub struct Bench {
    options: BenchOptions,
    config: Arc<ClusterConfig>,
    workers: Vec<Worker>,
    stored: Arc<StoredKeys>,
    keys: Arc<KeyPicker>,
}

impl Bench {
    /// Fetches the configuration and opens every worker's connections.
    pub async fn connect(options: BenchOptions) -> Result<Bench, String> {
        options.check()?;
        let mut client = Client::new(options.coordinator.clone(), options.timeout);
        let deadline = Instant::now() + options.timeout;
        let config = client.config(deadline).await.map_err(|e| e.to_string())?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| e.to_string())?;
        let mut seed = u64::from_le_bytes(seed);
        let mut workers = Vec::with_capacity(options.connections);
        for turn in 0..options.connections {
            let mut worker = Worker {
                rng: splitmix64(&mut seed),
                turn: turn as u32,
                config: config.clone(),
                client: Client::new(options.coordinator.clone(), options.timeout),
                batch: Vec::new(),
                groups: Vec::new(),
                answers: Vec::new(),
            };
            worker.connect_all().await.map_err(|e| format!("connecting to the servers: {e}"))?;
            workers.push(worker);
        }
        let stored = Arc::new(StoredKeys::new(options.keyspace));
        let keys = Arc::new(KeyPicker::new(options.keyspace, config.len()));
        Ok(Bench { options, config, workers, stored, keys })
    }

    /// The parameters, one line.
    pub fn summary(&self) -> String {
        let o = &self.options;
        let tests: Vec<&str> = self
            .phases()
            .iter()
            .filter_map(|p| match p {
                PhaseKind::Measure(op) => Some(op.name()),
                PhaseKind::Fill => None,
            })
            .collect();
        let amount = match o.duration {
            Some(d) => format!("--duration {}", d.as_secs_f64()),
            None => format!("-n {}", o.requests),
        };
        format!(
            "ftkv bench: {} servers, tests {}, {amount} -c {} -d {} -P {} -r {}",
            self.config.servers.len(),
            tests.join(","),
            o.connections,
            o.value_size,
            o.pipeline,
            o.keyspace,
        )
    }

    /// The phases [`run_phase`](Self::run_phase) should be called with, in order: put, then
    /// get; a get without put first fills the keyspace.
    pub fn phases(&self) -> Vec<PhaseKind> {
        let mut ops = self.options.ops.clone();
        ops.sort();
        ops.dedup();
        let mut phases = Vec::new();
        if ops == [BenchOp::Get] {
            phases.push(PhaseKind::Fill);
        }
        phases.extend(ops.into_iter().map(PhaseKind::Measure));
        phases
    }

    /// Runs one phase with every worker and merges their counts.
    pub async fn run_phase(&mut self, kind: PhaseKind) -> PhaseReport {
        let o = &self.options;
        let (op, limit, sequential) = match kind {
            PhaseKind::Fill => (BenchOp::Put, Limit::Requests(o.keyspace), true),
            PhaseKind::Measure(op) => {
                let limit = match o.duration {
                    Some(d) => Limit::Until(Instant::now() + d),
                    None => Limit::Requests(o.requests),
                };
                (op, limit, false)
            }
        };
        let phase = Arc::new(Phase {
            kind,
            op,
            limit,
            sequential,
            claimed: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stored: self.stored.clone(),
            keys: self.keys.clone(),
            value_size: o.value_size,
            pipeline: o.pipeline,
            timeout: o.timeout,
        });
        let progress = o.progress.then(|| tokio::spawn(show_progress(phase.clone())));
        let started = Instant::now();
        let tasks: Vec<_> = std::mem::take(&mut self.workers)
            .into_iter()
            .map(|mut worker| {
                let phase = phase.clone();
                tokio::spawn(async move {
                    let stats = worker.run(&phase).await;
                    (worker, stats)
                })
            })
            .collect();
        let mut report = PhaseReport {
            kind,
            ok: 0,
            errors: 0,
            retries: 0,
            absent: 0,
            error_samples: Vec::new(),
            elapsed: Duration::ZERO,
            latency: new_histogram(),
        };
        for task in tasks {
            let (worker, stats) = task.await.expect("benchmark worker panicked");
            self.workers.push(worker);
            report.ok += stats.ok;
            report.errors += stats.errors;
            report.retries += stats.retries;
            report.absent += stats.absent;
            for sample in stats.samples {
                if report.error_samples.len() < KEPT_ERRORS {
                    report.error_samples.push(sample);
                }
            }
            report.latency.add(&stats.latency).expect("same histogram bounds");
        }
        report.elapsed = started.elapsed();
        if let Some(progress) = progress {
            progress.abort();
            let _ = progress.await;
            eprint!("\r\x1b[K");
        }
        report
    }
}

/// Rewrites one progress line on standard error four times a second.
async fn show_progress(phase: Arc<Phase>) {
    let started = Instant::now();
    let name = match phase.kind {
        PhaseKind::Fill => "fill",
        PhaseKind::Measure(op) => op.name(),
    };
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let done = phase.done.load(Ordering::Relaxed);
        let rate = done as f64 / started.elapsed().as_secs_f64();
        let of = match phase.limit {
            Limit::Requests(total) => format!("{done}/{total}"),
            Limit::Until(end) => {
                format!(
                    "{done} ({:.0} s left)",
                    end.saturating_duration_since(Instant::now()).as_secs_f64()
                )
            }
        };
        eprint!("\r\x1b[K{name}: {of} requests, {rate:.0} ops/s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sixteen_bytes_like_redis_benchmark() {
        assert_eq!(&key_of(0), b"key:000000000000");
        assert_eq!(&key_of(12345), b"key:000000012345");
        assert_eq!(&key_of(999_999_999_999), b"key:999999999999");
    }

    #[test]
    fn values_are_deterministic_and_prefixes_of_each_other() {
        let v = value_of(42, 1024);
        assert_eq!(v, value_of(42, 1024));
        assert!(v.iter().all(u8::is_ascii_lowercase));
        assert_eq!(&v[..16], &value_of(42, 16)[..]);
        assert_ne!(value_of(42, 16), value_of(43, 16));
        assert!(is_value_of(42, &v));
        assert!(is_value_of(42, &v[..3]));
        assert!(is_value_of(42, b""));
        let mut wrong = v.clone();
        wrong[1000] ^= 1;
        assert!(!is_value_of(42, &wrong));
        assert!(!is_value_of(43, &v));
    }

    #[test]
    fn ops_parse_with_redis_names() {
        assert_eq!("put".parse::<BenchOp>(), Ok(BenchOp::Put));
        assert_eq!("SET".parse::<BenchOp>(), Ok(BenchOp::Put));
        assert_eq!("get".parse::<BenchOp>(), Ok(BenchOp::Get));
        assert!("del".parse::<BenchOp>().is_err());
    }

    #[test]
    fn report_line_format() {
        let mut latency = new_histogram();
        for us in 1..=1000u64 {
            latency.record(us).unwrap();
        }
        let report = PhaseReport {
            kind: PhaseKind::Measure(BenchOp::Put),
            ok: 85_000,
            errors: 0,
            retries: 0,
            absent: 0,
            error_samples: Vec::new(),
            elapsed: Duration::from_secs(1),
            latency,
        };
        assert_eq!(report.line(), "put: 85000 ops/s p50=500us p99=990us p99.9=999us");
    }

    #[test]
    fn claims_stop_at_the_total() {
        let phase = Phase {
            kind: PhaseKind::Fill,
            op: BenchOp::Put,
            limit: Limit::Requests(10),
            sequential: true,
            claimed: AtomicU64::new(0),
            done: AtomicU64::new(0),
            stored: Arc::new(StoredKeys::new(100)),
            keys: Arc::new(KeyPicker::new(100, 3)),
            value_size: 3,
            pipeline: 4,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(phase.claim(4), (0, 4));
        assert_eq!(phase.claim(4), (4, 4));
        assert_eq!(phase.claim(4), (8, 2));
        assert_eq!(phase.claim(4).1, 0);
    }

    #[test]
    fn picked_keys_belong_to_the_slot() {
        let mut rng = 7;
        for picker in [KeyPicker::new(1000, 3), KeyPicker::new(LISTED_KEYSPACE + 1, 3)] {
            let mut seen = std::collections::HashSet::new();
            for slot in 0..3 {
                for _ in 0..200 {
                    let (index, its_slot) = picker.pick(slot, &mut rng);
                    assert!(index < picker.keyspace);
                    assert_eq!(its_slot, slot);
                    assert_eq!(slot_of(&key_of(index), 3), slot);
                    seen.insert(index);
                }
            }
            assert!(seen.len() > 400, "keys repeat too often: {}", seen.len());
        }
        // A keyspace of one key has two empty slots: any key will do.
        let only = (0, slot_of(&key_of(0), 3));
        assert_eq!(KeyPicker::new(1, 3).pick(0, &mut rng), only);
        assert_eq!(KeyPicker::new(1, 3).pick(1, &mut rng), only);
    }

    #[test]
    fn stored_keys_bitset() {
        let stored = StoredKeys::new(130);
        assert!(!stored.get(129));
        stored.set(129);
        stored.set(0);
        assert!(stored.get(129) && stored.get(0) && !stored.get(64));
    }

    /// A fake cluster in one process: a coordinator and three servers sharing one table.
    /// `refusals` requests are answered `WrongOwner` first; with `corrupt`, every GET of an
    /// existing key answers a value with one byte changed.
    mod fake {
        use std::collections::HashMap;
        use std::sync::Mutex;
        use std::sync::atomic::AtomicI64;

        use tokio::net::TcpListener;

        use super::*;
        use crate::protocol::{CoordRequest, CoordResponse};
        use crate::routing::{Replica, ServerAddr};

        pub struct Fake {
            pub coordinator: String,
        }

        pub async fn start(refusals: i64, corrupt: bool) -> Fake {
            let table = Arc::new(Mutex::new(HashMap::<Vec<u8>, Vec<u8>>::new()));
            let refusals = Arc::new(AtomicI64::new(refusals));
            let mut servers = Vec::new();
            for id in 0..3 {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                servers.push(ServerAddr {
                    id,
                    host: "127.0.0.1".into(),
                    client_port: listener.local_addr().unwrap().port(),
                    servers_port: 0,
                    incarnation: 0,
                    state: Replica::Up,
                });
                let (table, refusals) = (table.clone(), refusals.clone());
                tokio::spawn(async move {
                    loop {
                        let (stream, _) = listener.accept().await.unwrap();
                        let mut conn = Connection::new(stream).unwrap();
                        let (table, refusals) = (table.clone(), refusals.clone());
                        tokio::spawn(async move {
                            conn.accept_hello(|_| true, &[]).await.unwrap();
                            while let Ok(Some(request)) =
                                conn.recv::<crate::protocol::ClientRequest>().await
                            {
                                let answer = if refusals.fetch_sub(1, Ordering::SeqCst) > 0 {
                                    ClientResponse::Refused(Refusal::WrongOwner { epoch: 1 })
                                } else {
                                    let mut table = table.lock().unwrap();
                                    match request.op {
                                        Op::Put { key, value } => {
                                            table.insert(key, value);
                                            ClientResponse::Stored
                                        }
                                        Op::Get { key } => {
                                            let mut value = table.get(&key).cloned();
                                            if let Some(v) = value.as_mut().filter(|_| corrupt) {
                                                v[0] = b'A';
                                            }
                                            ClientResponse::Value(value)
                                        }
                                        Op::Del { .. } => unreachable!(),
                                    }
                                };
                                conn.send(&answer).await.unwrap();
                            }
                        });
                    }
                });
            }
            let config = ClusterConfig::new(1, servers);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let coordinator = listener.local_addr().unwrap().to_string();
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let mut conn = Connection::new(stream).unwrap();
                    let config = config.clone();
                    tokio::spawn(async move {
                        conn.accept_hello(|_| true, &[]).await.unwrap();
                        while let Ok(Some(CoordRequest::GetConfig)) = conn.recv().await {
                            conn.send(&CoordResponse::Config(Some(config.clone()))).await.unwrap();
                        }
                    });
                }
            });
            Fake { coordinator }
        }
    }

    fn options(coordinator: String) -> BenchOptions {
        BenchOptions {
            coordinator,
            requests: 500,
            duration: None,
            connections: 3,
            value_size: 8,
            pipeline: 4,
            ops: vec![BenchOp::Get, BenchOp::Put],
            keyspace: 100,
            timeout: Duration::from_secs(5),
            progress: false,
        }
    }

    async fn run_all(options: BenchOptions) -> Vec<PhaseReport> {
        let mut bench = Bench::connect(options).await.unwrap();
        let mut reports = Vec::new();
        for kind in bench.phases() {
            reports.push(bench.run_phase(kind).await);
        }
        reports
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_are_retried_and_every_answer_checks() {
        let fake = fake::start(7, false).await;
        let mut options = options(fake.coordinator);
        // 500 random puts on 1000 keys leave some unstored: their GETs find nothing.
        options.keyspace = 1000;
        let reports = run_all(options).await;
        let kinds: Vec<PhaseKind> = reports.iter().map(|r| r.kind).collect();
        assert_eq!(kinds, [PhaseKind::Measure(BenchOp::Put), PhaseKind::Measure(BenchOp::Get)]);
        for report in &reports {
            assert_eq!((report.ok, report.errors), (500, 0), "{:?}", report.error_samples);
            assert_eq!(report.latency.len(), 500);
        }
        assert_eq!(reports[0].retries, 7);
        assert!(reports[1].absent > 0 && reports[1].absent < 500);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_value_is_an_error() {
        let fake = fake::start(0, true).await;
        let reports = run_all(options(fake.coordinator)).await;
        assert_eq!(reports[0].errors, 0);
        let get = &reports[1];
        assert!(get.errors > 0 && get.errors + get.ok == 500);
        assert!(get.error_samples[0].contains("wrong value"), "{:?}", get.error_samples);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn get_alone_fills_the_keyspace_first() {
        let fake = fake::start(0, false).await;
        let mut options = options(fake.coordinator);
        options.ops = vec![BenchOp::Get];
        let reports = run_all(options).await;
        assert_eq!(reports[0].kind, PhaseKind::Fill);
        assert_eq!(reports[0].ok, 100);
        assert_eq!((reports[1].ok, reports[1].absent, reports[1].errors), (500, 0, 0));
    }

    #[tokio::test]
    async fn bad_options_are_refused() {
        let mut bad = options("127.0.0.1:1".into());
        bad.pipeline = 0;
        assert!(Bench::connect(bad).await.err().unwrap().contains("-P"));
    }
}
