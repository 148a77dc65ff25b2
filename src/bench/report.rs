//! What a phase counted. One type for both stages: each worker counts into its own
//! [`Report`] (no sharing, no lock on the request path), and the phase merges them.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::phase::PhaseKind;

/// Error messages kept per phase (the count is always exact).
const KEPT_ERRORS: usize = 5;

/// The outcome of one phase, or of one worker's share of it.
pub struct Report {
    pub kind: PhaseKind,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed (wrong value, unexpected answer, deadline passed).
    pub errors: u64,
    /// Of the errors, requests that had no answer before their deadline: the service is
    /// unavailable (a coordinator that died, every server down), and the run stops.
    pub gave_up: u64,
    /// Attempts repeated after a refusal, a broken connection or a lost answer.
    pub retries: u64,
    /// GETs that found no value (keys this run did not store).
    pub absent: u64,
    /// The first few errors, for the report.
    pub error_samples: Vec<String>,
    /// The phase's wall-clock time (zero in a worker's share: the phase times itself).
    pub elapsed: Duration,
    /// Latency of successful requests, in microseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    pub(super) fn new(kind: PhaseKind) -> Self {
        Report {
            kind,
            ok: 0,
            errors: 0,
            gave_up: 0,
            retries: 0,
            absent: 0,
            error_samples: Vec::new(),
            elapsed: Duration::ZERO,
            latency: new_histogram(),
        }
    }

    /// Counts a success that took `latency`, rounded to the microsecond.
    pub(super) fn success(&mut self, latency: Duration, absent: bool) {
        let micros = (latency.as_nanos() + 500) / 1000;
        self.latency.saturating_record(micros as u64);
        self.ok += 1;
        self.absent += u64::from(absent);
    }

    /// Counts a failed request; keeps its message if it is among the first few.
    pub(super) fn error(&mut self, what: String) {
        self.errors += 1;
        self.keep(what);
    }

    fn keep(&mut self, what: String) {
        if self.error_samples.len() < KEPT_ERRORS {
            self.error_samples.push(what);
        }
    }

    /// Adds a worker's share.
    pub(super) fn merge(&mut self, share: Report) {
        self.ok += share.ok;
        self.errors += share.errors;
        self.gave_up += share.gave_up;
        self.retries += share.retries;
        self.absent += share.absent;
        share.error_samples.into_iter().for_each(|what| self.keep(what));
        self.latency.add(&share.latency).expect("same histogram bounds");
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at `quantile` in microseconds.
    pub fn micros(&self, quantile: f64) -> u64 {
        self.latency.value_at_quantile(quantile)
    }

    /// `put: 85000 ops/s p50=450us p99=1200us p99.9=2500us`, or for the fill phase
    /// `fill: 100000 keys in 1.23 s`. Tests and bench/compare.sh parse these lines.
    /// A phase in which nothing succeeded says so (its latencies would all print as 0).
    pub fn line(&self) -> String {
        if self.ok == 0 {
            return format!("{}: no request succeeded ({} errors)", self.kind.name(), self.errors);
        }
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

/// Latencies in microseconds (as redis-benchmark), 1 us to 10 minutes, 3 significant digits.
/// Nanoseconds needed a histogram 8 times the size, and recording into it was the costliest
/// line of the load generator (cache misses).
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::BenchOp;

    #[test]
    fn report_line_format() {
        let mut report = Report::new(PhaseKind::Measure(BenchOp::Put));
        for us in 1..=1000u64 {
            report.latency.record(us).unwrap();
        }
        report.ok = 85_000;
        report.elapsed = Duration::from_secs(1);
        assert_eq!(report.line(), "put: 85000 ops/s p50=500us p99=990us p99.9=999us");
        let mut failed = Report::new(PhaseKind::Measure(BenchOp::Get));
        failed.error("gave up".into());
        assert_eq!(failed.line(), "get: no request succeeded (1 errors)");
    }

    #[test]
    fn merged_shares_keep_the_first_few_errors() {
        let mut total = Report::new(PhaseKind::Fill);
        for worker in 0..3 {
            let mut share = Report::new(PhaseKind::Fill);
            share.success(Duration::from_micros(10), false);
            share.retries += 1;
            (0..4).for_each(|i| share.error(format!("{worker}.{i}")));
            total.merge(share);
        }
        assert_eq!((total.ok, total.errors, total.retries), (3, 12, 3));
        assert_eq!(total.error_samples, ["0.0", "0.1", "0.2", "0.3", "1.0"]);
        assert_eq!(total.latency.len(), 3);
    }
}
