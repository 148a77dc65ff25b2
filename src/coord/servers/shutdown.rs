//! Stopping the service in order: every server drains (no write in flight), writes its
//! dumps and exits; servers that cannot write them keep their data and are asked again.

use std::pin::Pin;
use std::time::Duration;

use futures::future::join_all;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::coord::servers::links::ControlLink;
use crate::coord::servers::process::Processes;
use crate::error::{Error, Result};
use crate::lines;
use crate::protocol::{ControlRequest, ControlResponse, DumpFile, Dumps};

/// Deadline of the drain phase of a shutdown (writes in flight settle).
const DRAIN_LIMIT: Duration = Duration::from_secs(3);
/// Deadline of the dump phase: writing dumps takes time in proportion to the data, and a
/// server killed mid-dump leaves none, so this one is generous.
const DUMP_LIMIT: Duration = Duration::from_secs(120);
/// Pause between requests to write dumps that a server could not write.
const DUMP_RETRY: Duration = Duration::from_secs(1);

pub type StopSignal = Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// Resolves with a reason on end of standard input (if watched), SIGINT or SIGTERM. The
/// signals are caught from the call on (not from the first poll: tokio drops a signal that
/// arrives while nobody listens), so a second one can be made ready before it is awaited.
pub fn stop_signal(watch_stdin: bool) -> StopSignal {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    Box::pin(async move {
        let stdin_closed = async {
            if !watch_stdin {
                return std::future::pending().await;
            }
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 1024];
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            _ = stdin_closed => "end of standard input".to_string(),
            _ = int.recv() => "SIGINT".to_string(),
            _ = term.recv() => "SIGTERM".to_string(),
        }
    })
}

/// Drains every server in `links` (`None`: lost before the stop, so without dumps), then
/// has each write its dumps and exit; finally reaps the processes, killing any that did not
/// exit. A server that cannot write its dumps (a full disk) keeps its data and stays up: it
/// is asked again until it succeeds, or until a second SIGINT or SIGTERM gives up on it,
/// which leaves it running (it retries on its own) and is an error. Returns, with the
/// outcome, the servers left running that way, and the dump files each server reported
/// (by id; `None`: none written).
pub async fn stop_servers(
    links: &[Option<ControlLink>],
    processes: &mut Processes,
) -> (Result<()>, Vec<u32>, Vec<Option<Dumps>>) {
    let began = Instant::now();
    let give_up = stop_signal(false);
    let live: Vec<ControlLink> = links.iter().flatten().cloned().collect();
    let drained = join_all(live.iter().map(|l| l.call(ControlRequest::Drain, DRAIN_LIMIT))).await;
    // A server that answered the drain gets all the time its dump needs; one that did
    // not (paused, cut off) only a short try, so it cannot hold the others' exit.
    let dumps = live.iter().zip(&drained).map(|(link, drained)| {
        let limit = if drained.is_ok() { DUMP_LIMIT } else { DRAIN_LIMIT };
        link.call(ControlRequest::Shutdown, limit)
    });
    let results = join_all(dumps).await;
    let mut gone: Vec<u32> =
        (0..).zip(links).filter(|(_, link)| link.is_none()).map(|(id, _)| id).collect();
    let mut written = vec![None; links.len()];
    let pending = sort_dumps(live.into_iter().zip(results).collect(), 1, &mut gone, &mut written);
    let abandoned = retry_dumps(pending, give_up, &mut gone, &mut written).await;
    processes.reap(&abandoned).await;
    info!(elapsed_ms = began.elapsed().as_millis() as u64, "shutdown complete");
    let mut problems = Vec::new();
    if !gone.is_empty() {
        problems.push(format!(
            "server(s) {gone:?} did not answer the shutdown and wrote no dumps (their keys \
             are in the next servers' secondary dumps)"
        ));
    }
    if !abandoned.is_empty() {
        problems.push(format!(
            "the dumps of server(s) {abandoned:?} are not written; they keep their data and \
             retry on their own every second (kill them to throw it away)"
        ));
    }
    if problems.is_empty() {
        return (Ok(()), abandoned, written);
    }
    let problems = problems.join("; ");
    error!(%problems, "shutdown incomplete");
    (Err(Error::Unavailable(problems)), abandoned, written)
}

/// Whether a server's dumps are written, still to be asked for, or beyond asking.
enum Dump {
    Written(Option<Dumps>),
    /// It could not write them and is still up, keeping its data.
    Pending,
    /// It did not answer (dead, paused, cut off).
    Gone,
}

/// Sorts the answers to one round of Shutdowns: returns the servers to ask again, adds
/// those beyond asking to `gone`, and the files of those that wrote them to `written`.
fn sort_dumps(
    answers: Vec<(ControlLink, Result<ControlResponse>)>,
    attempt: u64,
    gone: &mut Vec<u32>,
    written: &mut [Option<Dumps>],
) -> Vec<ControlLink> {
    let mut pending = Vec::new();
    for (link, result) in answers {
        match dumped(&link, result, attempt) {
            Dump::Written(dumps) => written[link.id() as usize] = dumps,
            Dump::Pending => pending.push(link),
            Dump::Gone => gone.push(link.id()),
        }
    }
    pending
}

/// Logs the answer to a Shutdown (a failure to write only at the 1st, 2nd, 4th, 8th...
/// `attempt`) and classifies it.
fn dumped(link: &ControlLink, result: Result<ControlResponse>, attempt: u64) -> Dump {
    let id = link.id();
    match result {
        Ok(ControlResponse::ShutDown { dumps }) => {
            let keys = |f: fn(&Dumps) -> &DumpFile| dumps.as_ref().map_or(0, |d| f(d).keys);
            let (primary_keys, secondary_keys) = (keys(|d| &d.primary), keys(|d| &d.secondary));
            info!(id, primary_keys, secondary_keys, "server dumped and stopped");
            Dump::Written(dumps)
        }
        Ok(ControlResponse::Failed(why)) => {
            if attempt.is_power_of_two() {
                error!(id, %why, attempt, "server could not write its dumps; it keeps its data");
            }
            Dump::Pending
        }
        other => {
            warn!(id, ?other, "server did not shut down cleanly; no dumps from it");
            Dump::Gone
        }
    }
}

/// Asks the servers in `pending` to write their dumps again every [`DUMP_RETRY`], until all
/// have (or are beyond asking: added to `gone`), or until `give_up` resolves. Returns the
/// ids of those that still have not.
async fn retry_dumps(
    mut pending: Vec<ControlLink>,
    mut give_up: StopSignal,
    gone: &mut Vec<u32>,
    written: &mut [Option<Dumps>],
) -> Vec<u32> {
    if pending.is_empty() {
        return Vec::new();
    }
    let ids = |links: &[ControlLink]| links.iter().map(ControlLink::id).collect::<Vec<_>>();
    say(&format!(
        "server(s) {:?} could not write their dumps (see the log); they keep their data. \
         Asking again every {} s until they can; SIGINT (ctrl+c) or SIGTERM gives up",
        ids(&pending),
        DUMP_RETRY.as_secs()
    ));
    let mut attempt = 1;
    let gone_before = gone.len();
    while !pending.is_empty() {
        attempt += 1;
        let ask_again = async {
            tokio::time::sleep(DUMP_RETRY).await;
            join_all(pending.iter().map(|l| l.call(ControlRequest::Shutdown, DUMP_LIMIT))).await
        };
        let results = tokio::select! {
            why = &mut give_up => {
                error!(%why, servers = ?ids(&pending), "{}", lines::GAVE_UP_ON_DUMPS);
                return ids(&pending);
            }
            results = ask_again => results,
        };
        pending = sort_dumps(pending.into_iter().zip(results).collect(), attempt, gone, written);
    }
    let all = gone.len() == gone_before;
    say(if all { "every dump is written" } else { "no server is left to ask" });
    Vec::new()
}

/// A line for whoever runs the coordinator, on standard error, which may be gone (a closed
/// terminal, a pipe whose reader died): never fail on it.
fn say(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("ftkv coordinator: {line}\n").as_bytes());
}
