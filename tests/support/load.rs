//! Concurrent client load that records every operation for the history checker.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ftkv::client::{Client, OpError};

use super::history::{Event, Op, Outcome, Recorder, check_all};

pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub recorder: Arc<Recorder>,
    pub keys: Vec<Vec<u8>>,
    pub completed: Arc<AtomicU64>,
}

/// The outcome of a write as the history checker sees it.
pub fn write_outcome<T>(result: &Result<T, OpError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(OpError::Unknown(_)) => Outcome::Unknown,
        Err(_) => Outcome::Failed,
    }
}

impl Load {
    /// `clients` tasks doing random PUT (50%), GET (40%) and DEL (10%) on `keys` keys.
    pub fn start(coordinator: String, clients: usize, keys: usize, timeout: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let recorder = Arc::new(Recorder::new());
        let completed = Arc::new(AtomicU64::new(0));
        let key_list: Vec<Vec<u8>> = (0..keys).map(|i| format!("load-{i}").into_bytes()).collect();
        let tasks = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let recorder = recorder.clone();
                let completed = completed.clone();
                let keys = key_list.clone();
                let mut client = Client::new(coordinator.clone(), timeout);
                tokio::spawn(async move {
                    let mut rng = 0x9e37_79b9_7f4a_7c15u64
                        ^ (c as u64 + 1).wrapping_mul(0xff51_afd7_ed55_8ccd);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let key = keys[(rng % keys.len() as u64) as usize].clone();
                        let dice = (rng >> 32) % 10;
                        n += 1;
                        let invoke = Instant::now();
                        let (op, outcome) = if dice < 5 {
                            let value = format!("c{c}-{n}").into_bytes();
                            let result = client.put(&key, &value).await;
                            (Op::Put(value), write_outcome(&result))
                        } else if dice < 9 {
                            let outcome = match client.get(&key).await {
                                Ok(value) => Outcome::Value(value),
                                Err(_) => Outcome::Failed,
                            };
                            (Op::Get, outcome)
                        } else {
                            let result = client.del(&key).await;
                            (Op::Del, write_outcome(&result))
                        };
                        let ret = Instant::now();
                        recorder.record(Event { client: c, key, op, invoke, ret, outcome });
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load { stop, tasks, recorder, keys: key_list, completed }
    }

    /// Waits until every client has had an answer (the load is under way); panics after 10 s.
    pub async fn under_way(&self) {
        self.answered_since(None, Duration::from_secs(10)).await
    }

    /// Waits until every client has had an answer to an operation it sent at `since` or
    /// later (all of them, with `None`); panics after `limit`.
    pub async fn answered_since(&self, since: Option<Instant>, limit: Duration) {
        let clients = self.tasks.len();
        let sent_since = |e: &Event| since.is_none_or(|t| e.invoke >= t);
        let every_client = |events: &[Event]| {
            (0..clients)
                .all(|c| events.iter().any(|e| e.client == c && sent_since(e) && answered(e)))
        };
        let mut waited = Duration::ZERO;
        while !self.recorder.scan(every_client) {
            assert!(waited < limit, "not every client got an answer in {limit:?}");
            tokio::time::sleep(POLL).await;
            waited += POLL;
        }
    }

    /// Waits until an operation recorded so far satisfies `cond`, for `limit` at most;
    /// returns whether one did.
    pub async fn wait_for(&self, limit: Duration, cond: impl Fn(&Event) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        // Newest first: the events waited for are recent.
        while !self.recorder.scan(|events| events.iter().rev().any(&cond)) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
        true
    }

    /// Waits until `more` operations more than now have completed; panics after `limit`.
    pub async fn completes(&self, more: u64, limit: Duration) {
        let target = self.completed.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + limit;
        while self.completed.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "{more} operations not done in {limit:?}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the clients and waits for their last operations.
    pub async fn stop(self) -> (Arc<Recorder>, Vec<Vec<u8>>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        (self.recorder, self.keys)
    }
}

/// How often [`Load::under_way`] and [`Load::wait_for`] look at the history.
const POLL: Duration = Duration::from_millis(20);

/// Whether `event` got an answer: a write acknowledged or a value read.
pub fn answered(event: &Event) -> bool {
    matches!(event.outcome, Outcome::Ok | Outcome::Value(_))
}

/// The end of a fault test's load (see [`stop_and_check`]).
pub struct Checked {
    /// Every operation, the final reads included.
    pub events: Vec<Event>,
    pub keys: Vec<Vec<u8>>,
    /// Each key's final value.
    pub finals: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// How many keys' histories were checked.
    pub checked: usize,
}

/// Stops `load`, reads every key's final value through `coordinator` and checks each key's
/// history for linearizability (panics naming the key if one is not).
pub async fn stop_and_check(coordinator: String, load: Load) -> Checked {
    let (recorder, keys) = load.stop().await;
    let finals = final_reads(coordinator, &recorder, &keys).await;
    let events = recorder.events();
    let checked = check_all(&events).unwrap_or_else(|e| panic!("not linearizable: {e}"));
    Checked { events, keys, finals, checked }
}

/// Reads every key once more (recorded, so the checker also verifies the final state) and
/// returns the final values.
pub async fn final_reads(
    coordinator: String,
    recorder: &Recorder,
    keys: &[Vec<u8>],
) -> HashMap<Vec<u8>, Option<Vec<u8>>> {
    let mut client = Client::new(coordinator, Duration::from_secs(10));
    let mut values = HashMap::new();
    for key in keys {
        let invoke = Instant::now();
        let value = client.get(key).await.expect("final read");
        let ret = Instant::now();
        recorder.record(Event {
            client: usize::MAX,
            key: key.clone(),
            op: Op::Get,
            invoke,
            ret,
            outcome: Outcome::Value(value.clone()),
        });
        values.insert(key.clone(), value);
    }
    values
}

/// Time from `since` until the first operation on one of `keys` that was invoked after
/// `since` succeeded (returned). `None` if none did.
pub fn unavailability(events: &[Event], keys: &[Vec<u8>], since: Instant) -> Option<Duration> {
    events
        .iter()
        .filter(|e| e.invoke >= since && keys.contains(&e.key))
        .filter(|e| answered(e))
        .map(|e| e.ret - since)
        .min()
}
