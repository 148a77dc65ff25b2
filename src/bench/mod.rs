//! `client bench`: a load generator in the manner of redis-benchmark.
//!
//! `connections` workers run as tokio tasks; each shares the configuration fetched once from
//! the coordinator and owns a [`Client`] for its connection to every server and for fetching
//! a fresh configuration after a refusal. Every answer is checked, not only counted.
//! `WrongOwner` and `Unavailable` refusals, broken connections and lost answers are retried
//! with a fresh configuration until the request's deadline; anything else is an error.
//!
//! - `options`: what to run, checked; `phase`: what one phase's workers share;
//! - `worker`: the request path; `check`: the answer checks; `keys`: keys and values;
//! - `report`: the counts and the report line; `progress`: the line on standard error.

mod check;
mod keys;
mod options;
mod phase;
mod progress;
mod report;
mod worker;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use tokio::time::Instant;

use crate::client::Client;
use crate::routing::ClusterConfig;

pub use keys::{key_of, value_of};
pub use options::{BenchOp, BenchOptions};
pub use phase::PhaseKind;
pub use report::Report;

use keys::{KeyPicker, StoredKeys, splitmix64};
use phase::Phase;
use progress::Progress;
use worker::Worker;

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
        options::check_open_files(options.connections, config.servers.len())?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| e.to_string())?;
        let mut seed = u64::from_le_bytes(seed);
        let mut workers = Vec::with_capacity(options.connections);
        for turn in 0..options.connections {
            let client = Client::new(options.coordinator.clone(), options.timeout);
            let worker =
                Worker::connect(splitmix64(&mut seed), turn as u32, config.clone(), client)
                    .await
                    .map_err(|e| format!("connecting to the servers: {e}"))?;
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

    /// Runs one phase with every worker and merges their reports.
    pub async fn run_phase(&mut self, kind: PhaseKind) -> Report {
        let phase = Phase::new(kind, &self.options, self.stored.clone(), self.keys.clone());
        let phase = Arc::new(phase);
        let progress = self.options.progress.then(|| Progress::start(phase.clone()));
        let started = Instant::now();
        let tasks: Vec<_> = std::mem::take(&mut self.workers)
            .into_iter()
            .map(|mut worker| {
                let phase = phase.clone();
                tokio::spawn(async move {
                    let share = worker.run(&phase).await;
                    (worker, share)
                })
            })
            .collect();
        let mut report = Report::new(kind);
        for task in tasks {
            let (worker, share) = task.await.expect("benchmark worker panicked");
            self.workers.push(worker);
            report.merge(share);
        }
        report.elapsed = started.elapsed();
        if let Some(progress) = progress {
            progress.finish().await;
        }
        report
    }
}
