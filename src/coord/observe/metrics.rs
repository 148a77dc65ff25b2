//! The coordinator's metrics in the Prometheus text format (`coord --metrics`, served by
//! `scrape`). Cluster-wide counters and histograms follow the event hub's events; the
//! per-server ones are read at each scrape from the servers' last heartbeats, so a scrape
//! shows what `client watch` shows.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::protocol::{ClusterSnapshot, EventKind, OpKind, ServerState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: String,
}

/// Cluster-wide metrics, updated as events happen.
#[derive(Debug, Clone)]
pub struct Metrics {
    started: Counter,
    completed: Counter,
    rolled_back: Counter,
    recovery_seconds: Histogram,
    unavailable_seconds: Histogram,
    failures: Family<Cause, Counter>,
}

/// 5 ms to about 80 s: a recovery takes tens of milliseconds, a lease wait up to the
/// timeout, and rollbacks with backoff many seconds.
fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Counter::default(),
            completed: Counter::default(),
            rolled_back: Counter::default(),
            recovery_seconds: seconds_buckets(),
            unavailable_seconds: seconds_buckets(),
            failures: Family::default(),
        }
    }
}

impl Metrics {
    /// Counts an event.
    pub fn observe(&self, event: &EventKind) {
        let fail = |cause: &str| {
            self.failures.get_or_create(&Cause { cause: cause.into() }).inc();
        };
        match event {
            EventKind::ServerLost { cause, .. } => fail(cause),
            EventKind::RecoveryStarted { .. } => {
                self.started.inc();
            }
            EventKind::KeysServed { ms, .. } => self.unavailable_seconds.observe(*ms as f64 / 1e3),
            EventKind::RolledBack { .. } => {
                self.rolled_back.inc();
                fail("recovery_step_failed");
            }
            EventKind::RecoveryComplete { ms, .. } => {
                self.completed.inc();
                self.recovery_seconds.observe(*ms as f64 / 1e3);
            }
            EventKind::Fatal { .. } => fail("two_faults"),
            EventKind::StepDone { .. }
            | EventKind::ServerStarted { .. }
            | EventKind::ConfigPublished { .. }
            // A replacement for a cut is counted by its ServerLost (cause `stream_cut`).
            | EventKind::StreamCut { .. }
            | EventKind::StreamHealed { .. } => {}
        }
    }

    /// The whole exposition: these metrics, and the servers' from `snapshot`.
    pub fn encode(&self, snapshot: &ClusterSnapshot) -> String {
        let mut registry = Registry::with_prefix("ftkv");
        let epoch: Gauge = Gauge::default();
        epoch.set(snapshot.status.epoch as i64);
        registry.register("epoch", "Epoch of the cluster's configuration", epoch);
        registry.register("recoveries_started", "Recoveries started", self.started.clone());
        registry.register("recoveries_completed", "Recoveries completed", self.completed.clone());
        let rolled_back = self.rolled_back.clone();
        registry.register("recoveries_rolled_back", "Recovery rollbacks to step 1", rolled_back);
        let help = "Time from a server's loss to full redundancy";
        registry.register("recovery_duration_seconds", help, self.recovery_seconds.clone());
        let help = "Time from a server's loss until its keys are served again";
        registry.register("unavailable_after_loss_seconds", help, self.unavailable_seconds.clone());
        let help = "Failures by cause (server losses, failed recovery steps, two faults)";
        registry.register("failures", help, self.failures.clone());
        register_servers(&mut registry, snapshot);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

type Labels = Vec<(&'static str, String)>;

/// The per-server metrics, from the last heartbeats.
fn register_servers(registry: &mut Registry, snapshot: &ClusterSnapshot) {
    let state = Family::<Labels, Gauge>::default();
    let keys = Family::<Labels, Gauge>::default();
    let bytes = Family::<Labels, Gauge>::default();
    let ops = Family::<Labels, Counter>::default();
    let queue = Family::<Labels, Gauge>::default();
    let queue_bytes = Family::<Labels, Gauge>::default();
    use ServerState::*;
    let states = [Starting, Running, Failed, Recovering];
    for (server, stats) in snapshot.status.servers.iter().zip(&snapshot.stats) {
        let id = || ("server", server.id.to_string());
        for s in states {
            let value = i64::from(server.state == s);
            state.get_or_create(&vec![id(), ("state", s.as_str().into())]).set(value);
        }
        let Some((stats, _)) = stats else { continue };
        for (table, k, b) in [
            ("primary", stats.primary_keys, stats.primary_bytes),
            ("secondary", stats.secondary_keys, stats.secondary_bytes),
        ] {
            keys.get_or_create(&vec![id(), ("table", table.into())]).set(k as i64);
            bytes.get_or_create(&vec![id(), ("table", table.into())]).set(b as i64);
        }
        for kind in OpKind::ALL {
            for (outcome, n) in ["done", "refused"].into_iter().zip(stats.ops[kind as usize]) {
                let labels = vec![id(), ("op", kind.as_str().into()), ("outcome", outcome.into())];
                ops.get_or_create(&labels).inc_by(n);
            }
        }
        queue.get_or_create(&vec![id()]).set(stats.repl_queue as i64);
        queue_bytes.get_or_create(&vec![id()]).set(stats.repl_queue_bytes as i64);
    }
    registry.register("server_state", "1 for the state each server is in", state);
    registry.register("server_keys", "Keys in each server's tables", keys);
    registry.register("server_bytes", "Bytes of keys and values in each server's tables", bytes);
    let help = "Client operations answered since the server started, by type and outcome";
    registry.register("server_operations", help, ops);
    let help = "Writes waiting for their copy's acknowledgement (replication lag)";
    registry.register("server_replication_queue", help, queue);
    let help = "Bytes of the writes waiting for their copy's acknowledgement";
    registry.register("server_replication_queue_bytes", help, queue_bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::StatusReport;

    #[test]
    fn events_move_the_counters_and_histograms() {
        let metrics = Metrics::default();
        let lost = EventKind::ServerLost {
            server: 1,
            pid: 9,
            why: "process exited".into(),
            cause: "process_exited".into(),
        };
        metrics.observe(&lost);
        metrics.observe(&EventKind::RecoveryStarted { server: 1 });
        metrics.observe(&EventKind::KeysServed { server: 1, ms: 3 });
        let why = "the new server 1 was lost".to_string();
        metrics.observe(&EventKind::RolledBack { server: 1, why, attempt: 2 });
        let done =
            EventKind::RecoveryComplete { server: 1, ms: 30, keys: 1, bytes: 2, attempts: 2 };
        metrics.observe(&done);
        let status = StatusReport {
            epoch: 7,
            servers: Vec::new(),
            recovery: None,
            cuts: Vec::new(),
            coordinators: None,
        };
        let text = metrics.encode(&ClusterSnapshot { status, stats: Vec::new(), recovery: None });
        for line in [
            "ftkv_epoch 7",
            "ftkv_recoveries_started_total 1",
            "ftkv_recoveries_completed_total 1",
            "ftkv_recoveries_rolled_back_total 1",
            "ftkv_failures_total{cause=\"process_exited\"} 1",
            "ftkv_failures_total{cause=\"recovery_step_failed\"} 1",
            "ftkv_recovery_duration_seconds_bucket{le=\"0.04\"} 1",
            "ftkv_recovery_duration_seconds_bucket{le=\"0.02\"} 0",
            "ftkv_unavailable_after_loss_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
    }
}
