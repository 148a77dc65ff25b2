//! The start after a crash with other servers than the crashed cluster had (another number
//! of them, most often). Each log holds the keys of its server's slot under the old N, so
//! the servers cannot load their own again; the coordinator reads them here instead and
//! writes them back as a set of dumps of the old N with its manifest, which the restore
//! that exists reshards onto the new servers ([`super::prepare`] rebuilds it, `write_in`
//! writes every key through the cluster). As dumps rather than held in memory, so that a
//! coordinator killed during that restore is followed by one that restores the same set
//! again (`begin`), as after any restore: the new servers' logs replace nothing of it.
//!
//! For each old server, its tables are its own dumps where the state says they are its
//! newest ([`gathered`]: written at its end, after the orphan timeout, nothing logged since
//! then could have been acknowledged), else its log. Owner i's keys come from its primary
//! table if it was up at the crash and its files could be read, else from the secondary
//! table of i+1, which holds the copy of every write acknowledged ([`choose_sources`]).
//! Refused, nothing changed, when some owner has neither.
//!
//! Then the crashed cluster's files move into `dumps-<time>` (as `--fresh` moves a set):
//! first all but the logs, then the set is written (`dumps.manifest` last), then the logs.
//! A coordinator killed before the manifest finds the logs in place and does it all again;
//! one killed after it finds the set whole ([`finished`]) and only moves the logs left.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::gather::{gathered, unusable};
use super::{FileState, RestoreError, choose_sources};
use crate::aof::{self, Change, LogError};
use crate::config::{Host, ServerSpec};
use crate::coord::state::CoordState;
use crate::dumpfile;
use crate::lines;
use crate::manifest::{
    self, FORMAT, MANIFEST, Manifest, ServerDumps, dump_name, is_log_name, utc_time,
    write_atomically,
};
use crate::protocol::TableKind;
use crate::routing::{Replica, secondary_of};

type Map = HashMap<Vec<u8>, Vec<u8>>;

/// One server of the crashed cluster, read back.
enum Read {
    /// Its two tables, the line that says what they were read from, and the name of the
    /// file that held its secondary table (where its predecessor's keys come from if need be).
    Usable { primary: Map, secondary: Map, said: String, copies: String },
    /// Why its files are not used.
    Unusable(String),
}

/// `server_<id>.aof`.
pub fn log_name(id: u32) -> String {
    dump_name(id, "aof")
}

/// What the set written from the logs of a crashed cluster of `n` says it was made from.
pub fn origin(n: u32) -> String {
    format!("the logs of the {n} servers of a crashed cluster")
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> RestoreError {
    move |err| RestoreError::Io { what, err }
}

/// Writes the keys of the crashed cluster of `state` (every server gone, no complete set of
/// dumps) in `dir` as a set of dumps of its N, to be restored onto the servers of `specs`,
/// and moves its own files aside (see the module's comment). Prints what it read.
pub fn reshard(dir: &Path, state: &CoordState, specs: &[ServerSpec]) -> Result<(), RestoreError> {
    refuse_remote(state, specs)?;
    let n = state.len();
    if finished(dir, state) {
        say("the crashed cluster's logs were already written as a set of dumps");
        let logs: Vec<String> = files(dir)?.into_iter().filter(|f| is_log_name(f)).collect();
        if !logs.is_empty() {
            let aside = manifest::move_aside(dir, &logs, std::time::SystemTime::now())
                .map_err(io(format!("moving the logs aside in {}", dir.display())))?;
            say(&format!("moved the crashed cluster's logs to {}", aside.display()));
        }
        return Ok(());
    }
    let dumps = gathered(dir, state)?;
    let reads: Vec<Read> = (0..n).map(|id| read_server(dir, state, id, &dumps.servers)).collect();
    let states: Vec<FileState> = reads
        .iter()
        .map(|r| match r {
            Read::Usable { .. } => FileState::Usable,
            Read::Unusable(_) => FileState::Missing,
        })
        .collect();
    choose_sources(&states, &states).map_err(|owners| RestoreError::NoCopy {
        dir: dir.into(),
        missing: describe_missing(&owners, &reads, n),
    })?;
    say_reads(&reads, n);
    let files = files(dir)?;
    let (logs, others): (Vec<String>, Vec<String>) =
        files.into_iter().partition(|f| is_log_name(f));
    let now = std::time::SystemTime::now();
    let aside = manifest::move_aside(dir, &others, now)
        .map_err(io(format!("moving the crashed cluster's files aside in {}", dir.display())))?;
    write_set(dir, state, reads)?;
    for name in &logs {
        std::fs::rename(dir.join(name), aside.join(name))
            .map_err(io(format!("moving {name} to {}", aside.display())))?;
    }
    std::fs::File::open(&aside)
        .and_then(|d| d.sync_all())
        .and_then(|()| std::fs::File::open(dir)?.sync_all())
        .map_err(io(format!("syncing {}", aside.display())))?;
    let count = logs.len() + others.len();
    say(&format!("moved the crashed cluster's files ({count}) to {}", aside.display()));
    Ok(())
}

/// What was read from each server, and for those not used, where their keys come from.
fn say_reads(reads: &[Read], n: u32) {
    for (id, read) in (0..).zip(reads) {
        match read {
            Read::Usable { said, .. } => say(said),
            Read::Unusable(why) => {
                let next = secondary_of(id, n);
                // Usable: choose_sources found a copy of every owner's keys.
                let copies = match &reads[next as usize] {
                    Read::Usable { copies, .. } => copies.as_str(),
                    Read::Unusable(_) => "no file",
                };
                let line = format!(
                    "server {id}: not used ({why}); its keys come from their copy in server \
                     {next}'s {copies}"
                );
                warn!("{line}");
                println!("{line}");
            }
        }
    }
}

/// Logs of servers on other hosts stay there (nothing is shipped), and a restore onto other
/// hosts happens only in place: refused, before anything is read.
fn refuse_remote(state: &CoordState, specs: &[ServerSpec]) -> Result<(), RestoreError> {
    let remote = |host: &Host| matches!(host, Host::Ssh { .. });
    let which = if state.members.iter().any(|m| remote(&m.spec.host)) {
        "the crashed cluster's servers were"
    } else if specs.iter().any(|s| remote(&s.host)) {
        "some of the new servers are"
    } else {
        return Ok(());
    };
    Err(RestoreError::RemoteLogs { was: state.len(), now: specs.len(), which })
}

/// Whether `dir` holds the set written from `state`'s logs already (its manifest is
/// written last): a coordinator was killed after writing it, before it moved every log.
fn finished(dir: &Path, state: &CoordState) -> bool {
    let Ok(bytes) = std::fs::read(dir.join(MANIFEST)) else { return false };
    let epoch = state.config.as_ref().map(|c| c.epoch);
    Manifest::decode(&bytes).is_ok_and(|m| {
        m.origin == Some(origin(state.len())) && Some(m.epoch) == epoch && m.n == state.len()
    })
}

fn files(dir: &Path) -> Result<Vec<String>, RestoreError> {
    manifest::set_files(dir).map_err(io(format!("reading {}", dir.display())))
}

/// Server `id`'s tables at the crash: from its own dumps if `dumps` says they are its
/// newest, else from its log; or why neither can be used.
fn read_server(dir: &Path, state: &CoordState, id: u32, dumps: &[ServerDumps]) -> Read {
    let config = state.config.as_ref().expect("only a configured cluster crashed");
    if config.servers[id as usize].state != Replica::Up {
        return Read::Unusable("it was down or being recovered at the crash".into());
    }
    let own = &dumps[id as usize];
    if own.complete {
        match read_dumps(dir, state.len(), own) {
            Ok(read) => return read,
            Err(why) => warn!(id, %why, "its own dumps cannot be read; its log is read instead"),
        }
    }
    read_log(dir, state, id)
}

/// The two dump files `own` lists, checked as a restore checks them.
fn read_dumps(dir: &Path, n: u32, own: &ServerDumps) -> Result<Read, String> {
    let load = |entry: &crate::protocol::DumpFile, slot| {
        let path = dir.join(&entry.name);
        match dumpfile::load_file(&path, entry, Some((n, slot))) {
            Ok(Some(entries)) => Ok(entries.into_iter().collect::<Map>()),
            Ok(None) => Err(format!("{} is missing", path.display())),
            Err(why) => Err(format!("{}: {why}", path.display())),
        }
    };
    let primary = load(&own.primary, own.id)?;
    let secondary = load(&own.secondary, crate::routing::primary_of(own.id, n))?;
    let said = format!(
        "server {}: {} ({} written at its end, newer than its log)",
        own.id,
        counts(&primary, &secondary),
        [&own.primary.name, &own.secondary.name]
            .map(|n| dir.join(n).display().to_string())
            .join(" and ")
    );
    let copies = own.secondary.name.clone();
    Ok(Read::Usable { primary, secondary, said, copies })
}

/// Server `id`'s log, read as a server loads it, the file left as it is.
fn read_log(dir: &Path, state: &CoordState, id: u32) -> Read {
    let path = dir.join(log_name(id));
    let digest = aof::cluster_digest(state.token_hex.as_bytes());
    let (mut primary, mut secondary) = (Map::new(), Map::new());
    let read = aof::read(&path, id, digest, |table, change| {
        let map = match table {
            TableKind::Primary => &mut primary,
            TableKind::Secondary => &mut secondary,
        };
        match change {
            Change::Put { key, value } => {
                map.insert(key, value);
            }
            Change::Del { key } => {
                map.remove(&key);
            }
            Change::Clear => map.clear(),
        }
    });
    match read {
        Ok(loaded) => {
            let mut said =
                format!("server {id}: {} from {}", counts(&primary, &secondary), path.display());
            if let Some((offset, cut)) = loaded.torn {
                said += &format!(
                    "; {} at offset {offset} ({cut} bytes; the file is set aside as it was)",
                    lines::TORN_TAIL_CUT
                );
            }
            Read::Usable { primary, secondary, said, copies: log_name(id) }
        }
        Err(LogError::Missing { .. }) => Read::Unusable(format!("{} is missing", path.display())),
        Err(refused) => Read::Unusable(format!("its log is refused: {refused}")),
    }
}

/// `68 keys and 70 copies (2048 bytes)`.
fn counts(primary: &Map, secondary: &Map) -> String {
    let bytes: usize = primary.iter().chain(secondary).map(|(k, v)| k.len() + v.len()).sum();
    format!("{} keys and {} copies ({bytes} bytes)", primary.len(), secondary.len())
}

/// "the keys of server 1 have no copy: server 1 (why) and server 2 (why)".
fn describe_missing(owners: &[u32], reads: &[Read], n: u32) -> String {
    let why = |id: u32| match &reads[id as usize] {
        Read::Unusable(why) => format!("server {id}: {why}"),
        Read::Usable { .. } => format!("server {id} is usable"),
    };
    let parts: Vec<String> = owners
        .iter()
        .map(|&owner| {
            let next = secondary_of(owner, n);
            format!("the keys of server {owner} have no copy left ({}; {})", why(owner), why(next))
        })
        .collect();
    parts.join("; ")
}

/// Writes every usable server's tables as its two dumps and the set's manifest, last.
fn write_set(dir: &Path, state: &CoordState, reads: Vec<Read>) -> Result<(), RestoreError> {
    let mut servers = Vec::new();
    for (id, read) in (0..).zip(reads) {
        servers.push(match read {
            Read::Usable { primary, secondary, .. } => {
                let write = |kind: &str, map: Map| {
                    let path: PathBuf = dir.join(dump_name(id, kind));
                    let mut entries: Vec<(Vec<u8>, Vec<u8>)> = map.into_iter().collect();
                    dumpfile::write(&path, &mut entries)
                        .map(|(file, _)| file)
                        .map_err(io(format!("writing {}", path.display())))
                };
                let primary = write("primary", primary)?;
                let secondary = write("secondary", secondary)?;
                ServerDumps { id, complete: true, why_incomplete: None, primary, secondary }
            }
            Read::Unusable(why) => unusable(id, why),
        });
    }
    let n = state.len();
    let epoch = state.config.as_ref().map_or(0, |c| c.epoch);
    let time = utc_time(std::time::SystemTime::now());
    let manifest = Manifest { format: FORMAT, n, epoch, time, servers, origin: Some(origin(n)) };
    write_atomically(dir, MANIFEST, &manifest.encode())
        .map_err(io(format!("writing {}", dir.join(MANIFEST).display())))?;
    info!(n, epoch, "the crashed cluster's logs written as a set of dumps");
    Ok(())
}

/// On standard output and in the log.
fn say(line: &str) {
    println!("{line}");
    info!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aof::{FsyncPolicy, Log};
    use crate::protocol::Op;
    use crate::routing::{ClusterConfig, slot_of};

    fn local(n: usize) -> Vec<ServerSpec> {
        let host = Host::Local("localhost".into());
        vec![ServerSpec { host, client_port: 0, servers_port: 0, coord_port: 0 }; n]
    }

    /// A crashed cluster of three in `dir`: each server's log holds its own keys of `keys`
    /// and the copies of its predecessor's.
    fn crashed(dir: &Path, keys: usize) -> CoordState {
        let state = CoordState {
            config: Some(ClusterConfig::for_tests(3)),
            ..CoordState::new(&local(3), "ab".repeat(32))
        };
        let digest = aof::cluster_digest(state.token_hex.as_bytes());
        for id in 0..3 {
            let log = Log::create(&dir.join(log_name(id)), id, digest, FsyncPolicy::No).unwrap();
            for i in 0..keys {
                let key = format!("key-{i}").into_bytes();
                let op = Op::Put { key: key.clone(), value: b"v".to_vec() };
                match slot_of(&key, 3) {
                    owner if owner == id => log.append(TableKind::Primary, &[op]).unwrap(),
                    owner if secondary_of(owner, 3) == id => {
                        log.append(TableKind::Secondary, &[op]).unwrap()
                    }
                    _ => continue,
                };
            }
        }
        state
    }

    /// Server 1's log gone: its keys come from server 2's copy, it is marked incomplete in
    /// the set, and the logs move aside. A second run (a coordinator killed after the set
    /// was written) finds the set whole and only moves the logs that are left.
    #[test]
    fn a_missing_log_is_replaced_by_its_copy_and_a_finished_set_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = crashed(dir.path(), 200);
        let log_1 = dir.path().join(log_name(1));
        std::fs::rename(&log_1, dir.path().join("elsewhere")).unwrap();
        reshard(dir.path(), &state, &local(4)).unwrap();

        let manifest = Manifest::decode(&std::fs::read(dir.path().join(MANIFEST)).unwrap());
        let manifest = manifest.unwrap();
        assert_eq!((manifest.n, manifest.origin.clone()), (3, Some(origin(3))));
        let complete: Vec<bool> = manifest.servers.iter().map(|s| s.complete).collect();
        assert_eq!(complete, [true, false, true]);
        let keys: u64 = [&manifest.servers[0].primary, &manifest.servers[2].secondary]
            .iter()
            .chain([&&manifest.servers[2].primary])
            .map(|f| f.keys)
            .sum();
        assert_eq!(keys, 200, "every key once among 0's and 2's own and 1's copy on 2");
        assert!(files(dir.path()).unwrap().iter().all(|f| !is_log_name(f)), "logs aside");

        std::fs::write(dir.path().join(log_name(0)), b"left behind").unwrap();
        assert!(finished(dir.path(), &state));
        reshard(dir.path(), &state, &local(4)).unwrap();
        assert!(!dir.path().join(log_name(0)).exists(), "moved aside too");
        let again = std::fs::read(dir.path().join(MANIFEST)).unwrap();
        assert_eq!(Manifest::decode(&again).unwrap(), manifest, "the set kept as it was");
    }

    /// Two neighbours' logs gone: server 1's keys have no copy left; refused, naming both,
    /// and nothing moved.
    #[test]
    fn an_owner_without_any_copy_is_refused_and_nothing_moves() {
        let dir = tempfile::tempdir().unwrap();
        let state = crashed(dir.path(), 50);
        for id in [1, 2] {
            std::fs::remove_file(dir.path().join(log_name(id))).unwrap();
        }
        let refused = reshard(dir.path(), &state, &local(4)).unwrap_err().to_string();
        assert!(refused.contains("the keys of server 1 have no copy left"), "{refused}");
        assert!(refused.contains("server_2.aof is missing"), "{refused}");
        assert_eq!(files(dir.path()).unwrap(), [log_name(0)]);
    }

    #[test]
    fn servers_on_other_hosts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = crashed(dir.path(), 1);
        let mut specs = local(4);
        specs[3].host = Host::Ssh { user: None, host: "db1".into() };
        let refused = reshard(dir.path(), &state, &specs).unwrap_err().to_string();
        assert!(refused.contains("some of the new servers are on other hosts"), "{refused}");
        assert_eq!(files(dir.path()).unwrap().len(), 3, "nothing moved");
    }
}
