//! `client bench`: runs the load generator with the command line's options, printing a line
//! per test and the totals.

use std::io::IsTerminal;
use std::time::Duration;

use ftkv::bench::{Bench, BenchOptions, PhaseKind};
use ftkv::client::session::Outcome;

use crate::args::{BenchArgs, seconds};
use crate::{LetGo, out};

pub fn run(coordinator: String, timeout: Duration, args: BenchArgs) -> Result<Outcome, String> {
    let duration = match args.duration {
        Some(secs) => Some(seconds(secs, "--duration")?),
        None => None,
    };
    let options = BenchOptions {
        coordinator,
        requests: args.requests,
        duration,
        connections: args.clients,
        value_size: args.data_size,
        pipeline: args.pipeline,
        ops: args.tests,
        keyspace: args.keyspace,
        timeout,
        progress: std::io::stderr().is_terminal(),
    };
    // One thread, like redis-benchmark: on 2 cores shared with the servers it measured
    // faster than two (fewer wake-ups across threads), for -P 1 by a sixth.
    let runtime = LetGo(Some(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?,
    ));
    runtime.block_on(phases(options))
}

/// Runs every phase, printing a line for each, then the totals. A phase in which requests
/// failed for a whole `--timeout` ends the run with an error: the service is unavailable,
/// and the phases after it would only wait out their deadlines too.
async fn phases(options: BenchOptions) -> Result<Outcome, String> {
    let timeout = options.timeout;
    let mut bench = Bench::connect(options).await?;
    out(&format!("{}\n", bench.summary()))?;
    let (mut errors, mut retries, mut answers, mut absent) = (0, 0, 0, 0);
    for kind in bench.phases() {
        let report = bench.run_phase(kind).await;
        out(&format!("{}\n", report.line()))?;
        for sample in &report.error_samples {
            eprintln!("client bench: {sample}");
        }
        if report.gave_up > 0 {
            return Err(format!(
                "stopped in {}: {} requests failed for a whole --timeout of {timeout:?} (the \
                 service is unavailable: is the coordinator running?)",
                kind.name(),
                report.gave_up,
            ));
        }
        errors += report.errors;
        retries += report.retries;
        answers += report.ok + report.errors;
        if kind != PhaseKind::Fill {
            absent += report.absent;
        }
    }
    out(&format!(
        "checked: {answers} answers, {errors} errors, {retries} retries, {absent} gets of absent keys\n"
    ))?;
    Ok(if errors == 0 { Outcome::Ok } else { Outcome::Failed })
}
