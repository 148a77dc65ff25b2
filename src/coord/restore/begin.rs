//! How a start begins, decided from the state file the previous coordinator left and the
//! dump directory, before anything is bound or started:
//!
//! - the previous run's servers still run: take them back (`Cluster::readopt`);
//! - they are all gone, each after writing its dumps alone (the orphan timeout): restore
//!   the dumps they left ([`gather`]), like after an orderly stop;
//! - they are all gone otherwise (killed at once: a crash): start each again from its
//!   append-only log (`Cluster::start_from_logs`), or, when the configuration names other
//!   servers (another N), reshard the logs: read here, written as a set of dumps of the old
//!   N ([`logs`]), restored onto the new servers as any set;
//! - it was killed during a restore: kill the servers it had started (they hold part of the
//!   set at most, and wrote no dumps over it) and restore the same set again;
//! - it stopped in order: restore its set (with the servers' own manifests when one server
//!   was lost before the stop, so that no `dumps.manifest` was written);
//! - nothing to take back or restore: start empty.

use crate::config::{Host, ServerSpec};
use crate::coord::ha::store::Store;
use crate::coord::restore::gather::{gather, gathered};
use crate::coord::restore::{self, Restore, logs};
use crate::coord::servers::process;
use crate::coord::state::machine_id;
use crate::coord::{CoordOptions, CoordState, new_token};
use crate::error::{Error, Result};
use crate::lines;
use crate::manifest::{MANIFEST, is_server_manifest_name, set_files};

/// What the coordinator does first.
pub enum Begin {
    /// Take back the servers a coordinator that died left running.
    TakeBack,
    /// Start new servers, filled with an earlier run's set if there is one.
    New(Option<Restore>),
    /// Start every server again from its own log: they all died at once (a crash).
    FromLogs,
}

/// The state to run with, and how to begin (see the module's comment).
pub async fn begin(opts: &CoordOptions, store: &Store) -> Result<(CoordState, Begin)> {
    // A state without a configuration died before every server joined: they exit alone.
    let Some(previous) = store.load()?.filter(|s| s.config.is_some()) else {
        return new_run(opts, None);
    };
    let restoring = previous.config.as_ref().is_some_and(|c| c.restoring);
    let dir = &opts.dump_dir;
    if previous.running {
        same_machine(&previous, store)?;
        let same = same_servers(&previous, &opts.specs, store);
        if restoring {
            same?;
            say(&format!(
                "{}: killing the servers it started; restoring again",
                lines::RESTORE_AGAIN
            ));
            process::kill_all(&previous.members, &opts.server_bin).await;
        } else if !process::all_gone(&previous.members, &opts.server_bin, &opts.ssh_args).await {
            same?;
            return Ok((previous, Begin::TakeBack));
        } else if opts.fresh {
            say(&format!("{}: starting empty (--fresh)", lines::SERVERS_GONE));
        } else if gathered(dir, &previous)?.servers.iter().all(|s| s.complete) {
            // Another N too: the restore reshards them.
            say(&format!("{}: restoring the dumps its servers wrote", lines::SERVERS_GONE));
            gather(dir, &previous)?;
        } else if same.is_ok() {
            say(lines::FROM_LOGS);
            return Ok((previous, Begin::FromLogs));
        } else {
            say(lines::RESHARD_LOGS);
            logs::reshard(dir, &previous, &opts.specs)?;
        }
    } else if !restoring && !opts.fresh && !dir.join(MANIFEST).exists() && has_own_manifests(dir) {
        gather(dir, &previous)?;
    }
    new_run(opts, Some(&previous))
}

/// A new cluster: restores the set in the dump directory (or moves it aside with
/// `--fresh`), at epochs past the previous run's and the set's.
fn new_run(opts: &CoordOptions, previous: Option<&CoordState>) -> Result<(CoordState, Begin)> {
    let restore = restore::prepare(&opts.dump_dir, &opts.specs, opts.fresh)?;
    let newest = previous.map_or(0, CoordState::epoch).max(restore.as_ref().map_or(0, |r| r.epoch));
    let state = CoordState {
        clients_port: opts.clients_port,
        servers_port: opts.servers_port,
        first_epoch: newest + 1,
        ..CoordState::new(&opts.specs, new_token()?)
    };
    Ok((state, Begin::New(restore)))
}

/// On standard output and in the log.
fn say(line: &str) {
    println!("{line}");
    tracing::info!("{line}");
}

/// Whether `dir` holds a server's own manifest.
fn has_own_manifests(dir: &std::path::Path) -> bool {
    set_files(dir).is_ok_and(|files| files.iter().any(|f| is_server_manifest_name(f)))
}

/// A restarted coordinator takes back its `localhost` servers only on the machine they run
/// on (an elected standby may run on another).
fn same_machine(state: &CoordState, store: &Store) -> Result<()> {
    let local = state.members.iter().any(|m| matches!(m.spec.host, Host::Local(_)));
    if let (true, Some(there), Some(here)) = (local, &state.machine, machine_id())
        && *there != here
    {
        return Err(Error::Unavailable(format!(
            "the running cluster of {} has servers on localhost of machine {there}, and this \
             coordinator runs on machine {here}: it cannot take them back (list servers by \
             host names, reached over ssh, to lead them from other machines)",
            store.describe()
        )));
    }
    Ok(())
}

/// A restarted coordinator takes back, or restarts from their logs, only the servers its
/// configuration file describes; a crashed cluster's logs are resharded onto others.
fn same_servers(state: &CoordState, specs: &[ServerSpec], store: &Store) -> Result<()> {
    let running: Vec<&ServerSpec> = state.members.iter().map(|m| &m.spec).collect();
    if running.iter().copied().eq(specs.iter()) {
        return Ok(());
    }
    Err(Error::Unavailable(format!(
        "{} holds a running cluster of {} servers that the configuration file ({} servers) \
         does not describe; start with the same file, or stop that cluster first",
        store.describe(),
        running.len(),
        specs.len()
    )))
}
