//! Restoring the dumps of a planned restart. A coordinator that starts a new cluster looks
//! in its dump directory before it starts anything:
//!
//! - a [`Manifest`] (written last by an orderly shutdown, or gathered from the servers' own
//!   manifests: `gather`): with N unchanged and every server's files complete, each server
//!   loads its own files ([`SetData::InPlace`]; the coordinator checks the sizes first).
//!   Otherwise every dump file present is checked against it (size, MD5, key count, and
//!   each key's placement under the manifest's N); each key's value is taken from its
//!   owner's primary dump or, when that file is missing or its server's copy incomplete,
//!   from the owner's successor's secondary dump ([`choose_sources`]); once the servers
//!   run, every key is written through the normal replicated path under the current N
//!   ([`write_in`]);
//! - dump files without a manifest: refused, since this run would write its dumps over
//!   data it never had (`--fresh` moves them aside);
//! - `--fresh`: the dump files and the manifest move into `dumps-<UTC time>`.
//!
//! A crashed cluster's logs, for a start with another number of servers, become such a set
//! first ([`logs`]).
//!
//! Anything wrong is refused without a dump file or manifest touched; all but a file whose MD5
//! does not match (found by the server that loads it in place) before a server is started.

pub mod begin;
pub mod gather;
pub mod logs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::config::{Host, ServerSpec};
use crate::connection::Connection;
use crate::dumpfile::{self, Entries};
pub use crate::manifest::RestoreError;
use crate::manifest::{self, BEING_FILLED, MANIFEST, Manifest, ServerDumps, dump_name};
use crate::protocol::{ClientRequestRef, ClientResponse, DumpFile, Hello, Op, Role};
use crate::routing::{ClusterConfig, ServerAddr, primary_of, secondary_of};

/// Concurrent writers of a restore per server, each with its own connection, and the puts
/// each has in flight: enough to keep both copies of every server busy.
const WRITERS: usize = 8;
const PIPELINE: usize = 64;
/// How long one restored key's write may keep retrying.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |err| RestoreError::Io { what, err }
}

/// A set checked, to be written into the new cluster.
#[derive(Debug)]
pub struct Restore {
    pub data: SetData,
    /// When the set was written (the manifest's time), and the epoch it was written at.
    pub time: String,
    /// What it was made from, for the lines that say what a start restores: `the dumps of
    /// <time>`, or the manifest's origin (a crashed cluster's logs).
    pub origin: String,
    pub epoch: u64,
    /// The dump directory it is in.
    pub dir: PathBuf,
}

/// How a set gets into the servers.
#[derive(Debug)]
pub enum SetData {
    /// The number of servers is unchanged and every server's files are usable: each server
    /// loads its own two (`ControlRequest::Load`), all at once, from its own dump directory
    /// (on its host: remote servers' sets restore too). The coordinator checked the sizes
    /// of those it can see (local servers') before starting anything.
    InPlace(Manifest),
    /// Rebuilt here from the usable files (N changed, or a server's files are missing or
    /// incomplete) and written through the cluster ([`write_in`]).
    Rebuilt { entries: Entries, bytes: u64 },
}

impl Restore {
    /// How many keys the set holds.
    pub fn keys(&self) -> u64 {
        match &self.data {
            SetData::InPlace(manifest) => {
                manifest.servers.iter().fold(0, |sum, s| sum.saturating_add(s.primary.keys))
            }
            SetData::Rebuilt { entries, .. } => entries.len() as u64,
        }
    }

    /// Once the set's keys live in the servers, its manifests go: the servers' own first,
    /// the set's last, so that while `dumps.manifest` is there a start knows that this did
    /// not finish (`Cluster::readopt` finishes it). The dump files stay until the servers
    /// write theirs over them.
    pub fn consume(dir: &Path) -> std::io::Result<()> {
        let files = manifest::set_files(dir)?;
        for name in files.iter().filter(|f| manifest::is_server_manifest_name(f)) {
            std::fs::remove_file(dir.join(name))?;
        }
        std::fs::remove_file(dir.join(MANIFEST))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// After a restore onto fewer servers, the files of the servers the new cluster has not
/// (id `n` and up) would stay beside the new set, listed nowhere: they move into a
/// `dumps-<time>` folder, as `--fresh` moves a set. Returns where, if anything moved.
pub fn set_aside_beyond(dir: &Path, n: u32) -> std::io::Result<Option<(PathBuf, Vec<String>)>> {
    let beyond: Vec<String> = manifest::set_files(dir)?
        .into_iter()
        .filter(|name| manifest::server_of(name).is_some_and(|id| id >= n))
        .collect();
    if beyond.is_empty() {
        return Ok(None);
    }
    let aside = manifest::move_aside(dir, &beyond, std::time::SystemTime::now())?;
    Ok(Some((aside, beyond)))
}

/// What a start does with the dump directory: moves the set aside (`fresh`), loads the set
/// a manifest describes, or refuses (see the module's comment). `None`: start empty.
pub fn prepare(
    dir: &Path,
    specs: &[ServerSpec],
    fresh: bool,
) -> Result<Option<Restore>, RestoreError> {
    let files = match manifest::set_files(dir) {
        Ok(files) => files,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_error(format!("reading {}", dir.display()))(e)),
    };
    if fresh {
        if !files.is_empty() {
            let aside = manifest::move_aside(dir, &files, std::time::SystemTime::now())
                .map_err(io_error(format!("moving the old dumps aside in {}", dir.display())))?;
            println!("moved the old dumps ({} files) to {}", files.len(), aside.display());
        }
        return Ok(None);
    }
    if !files.iter().any(|f| f == MANIFEST) {
        if files.is_empty() {
            return Ok(None);
        }
        return Err(RestoreError::NoManifest { dir: dir.into(), files: files.join(", ") });
    }
    let manifest_path = dir.join(MANIFEST);
    let bytes = std::fs::read(&manifest_path)
        .map_err(io_error(format!("reading {}", manifest_path.display())))?;
    let manifest = Manifest::decode(&bytes)
        .map_err(|why| RestoreError::Manifest { path: manifest_path.clone(), why })?;
    let (time, epoch) = (manifest.time.clone(), manifest.epoch);
    let origin = manifest.origin.clone().unwrap_or_else(|| format!("the dumps of {time}"));
    let remote = specs.iter().any(|s| matches!(s.host, Host::Ssh { .. }));
    let same_n = manifest.n as usize == specs.len();
    let whole = same_n && manifest.servers.iter().all(|s| s.complete);
    let data = if whole && (remote || precheck(dir, &manifest)?) {
        SetData::InPlace(manifest)
    } else if remote {
        return Err(RestoreError::Remote { dir: dir.into() });
    } else {
        rebuild(dir, manifest)?
    };
    Ok(Some(Restore { data, time, origin, epoch, dir: dir.into() }))
}

/// Checks the size of every file of the set in `dir` against its entry: whether all are
/// there. That much costs nothing and finds a truncated file before anything starts; the
/// rest (MD5, key count) is checked by the server that loads the file (checking the MD5
/// here too cost a third of a big restore).
fn precheck(dir: &Path, manifest: &Manifest) -> Result<bool, RestoreError> {
    let mut all_there = true;
    for entry in manifest.servers.iter().flat_map(|s| [&s.primary, &s.secondary]) {
        let path = dir.join(&entry.name);
        let size = match std::fs::metadata(&path) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                all_there = false;
                continue;
            }
            Err(e) => return Err(io_error(format!("reading {}", path.display()))(e)),
        };
        dumpfile::check_size(size, entry).map_err(|why| RestoreError::File { path, why })?;
    }
    Ok(all_there)
}

/// Loads and checks the set `manifest` describes in `dir`, and takes each key from its
/// copy ([`choose_sources`]).
fn rebuild(dir: &Path, manifest: Manifest) -> Result<SetData, RestoreError> {
    let began = std::time::Instant::now();
    let n = manifest.n;
    let (mut primaries, mut secondaries) = load_files(dir, &manifest)?;
    let states = |files: &[Loaded]| files.iter().map(Loaded::state).collect::<Vec<_>>();
    let sources = choose_sources(&states(&primaries), &states(&secondaries)).map_err(|owners| {
        RestoreError::NoCopy {
            dir: dir.into(),
            missing: describe_missing(&owners, &primaries, &secondaries, n),
        }
    })?;
    let mut entries = Vec::new();
    for source in sources {
        let file = match source {
            Source::Primary(id) => &mut primaries[id as usize],
            Source::SecondaryOn(id) => &mut secondaries[id as usize],
        };
        if let Loaded::Usable(file_entries) = file {
            entries.append(file_entries);
        }
    }
    let bytes = entries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    let took_ms = began.elapsed().as_millis() as u64;
    tracing::info!(keys = entries.len(), bytes, took_ms, "dumps loaded and checked");
    Ok(SetData::Rebuilt { entries, bytes })
}

/// Every server's primary and secondary dump, loaded and checked ([`load_file`]).
fn load_files(dir: &Path, manifest: &Manifest) -> Result<(Vec<Loaded>, Vec<Loaded>), RestoreError> {
    let n = manifest.n;
    // Each file on a thread of its own: reading, MD5 and parsing take most of a big
    // restore's load, and the files are independent.
    let (primaries, secondaries) = std::thread::scope(|scope| {
        let spawn =
            |entry, server, slot| scope.spawn(move || load_file(dir, entry, server, n, slot));
        let threads: Vec<_> = manifest
            .servers
            .iter()
            .map(|s| {
                let primary = spawn(&s.primary, s, s.id);
                (primary, spawn(&s.secondary, s, primary_of(s.id, n)))
            })
            .collect();
        let join =
            |t: std::thread::ScopedJoinHandle<'_, _>| t.join().expect("a loading thread panicked");
        let mut primaries = Vec::new();
        let mut secondaries = Vec::new();
        for (primary, secondary) in threads {
            primaries.push(join(primary));
            secondaries.push(join(secondary));
        }
        (
            primaries.into_iter().collect::<Result<Vec<_>, _>>(),
            secondaries.into_iter().collect::<Result<Vec<_>, _>>(),
        )
    });
    Ok((primaries?, secondaries?))
}

/// One dump file of the set: its entries, or why they cannot be used.
enum Loaded {
    Usable(Entries),
    Missing,
    /// Its server's copy was not complete, for this reason (the file is not read).
    Incomplete(String),
}

impl Loaded {
    fn state(&self) -> FileState {
        match self {
            Loaded::Usable(_) => FileState::Usable,
            Loaded::Missing => FileState::Missing,
            Loaded::Incomplete(_) => FileState::Incomplete,
        }
    }
}

/// Reads one file of `server`'s and checks it ([`dumpfile::load_file`]). A file that is
/// absent is [`Loaded::Missing`]; one that is present but does not match is an error; one
/// of a server whose copy was incomplete is not read.
fn load_file(
    dir: &Path,
    entry: &DumpFile,
    server: &ServerDumps,
    n: u32,
    slot: u32,
) -> Result<Loaded, RestoreError> {
    if !server.complete {
        let why = server.why_incomplete.as_deref().unwrap_or(BEING_FILLED);
        return Ok(Loaded::Incomplete(why.to_string()));
    }
    let path = dir.join(&entry.name);
    match dumpfile::load_file(&path, entry, Some((n, slot))) {
        Ok(Some(entries)) => Ok(Loaded::Usable(entries)),
        Ok(None) => Ok(Loaded::Missing),
        Err(why) => Err(RestoreError::File { path, why }),
    }
}

/// Whether one dump file can serve as a key's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    Usable,
    Missing,
    Incomplete,
}

/// Where the keys of one owner come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The owner's primary dump.
    Primary(u32),
    /// The secondary dump on the owner's successor (this id).
    SecondaryOn(u32),
}

/// The rebuild rule: the keys of owner i come from its primary dump if usable, else from
/// the secondary dump of its successor (i+1 mod n) if usable. `primaries[i]` and
/// `secondaries[i]` are server i's files. Err: the owners whose keys have no usable copy.
pub fn choose_sources(
    primaries: &[FileState],
    secondaries: &[FileState],
) -> Result<Vec<Source>, Vec<u32>> {
    let n = primaries.len() as u32;
    let mut sources = Vec::new();
    let mut uncovered = Vec::new();
    for owner in 0..n {
        let next = secondary_of(owner, n);
        if primaries[owner as usize] == FileState::Usable {
            sources.push(Source::Primary(owner));
        } else if secondaries[next as usize] == FileState::Usable {
            sources.push(Source::SecondaryOn(next));
        } else {
            uncovered.push(owner);
        }
    }
    if uncovered.is_empty() { Ok(sources) } else { Err(uncovered) }
}

/// "the keys of server 1 have no complete copy: server_1.primary is missing and
/// server_2.secondary is missing".
fn describe_missing(
    owners: &[u32],
    primaries: &[Loaded],
    secondaries: &[Loaded],
    n: u32,
) -> String {
    let what = |file: &Loaded, name: String| match file {
        Loaded::Missing => format!("{name} is missing"),
        Loaded::Incomplete(why) => format!("{name} is not usable ({why})"),
        Loaded::Usable(_) => format!("{name} is usable"),
    };
    let parts: Vec<String> = owners
        .iter()
        .map(|&owner| {
            let next = secondary_of(owner, n);
            format!(
                "the keys of server {owner} have no complete copy: {} and {}",
                what(&primaries[owner as usize], dump_name(owner, "primary")),
                what(&secondaries[next as usize], dump_name(next, "secondary"))
            )
        })
        .collect();
    parts.join("; ")
}

/// Writes every entry into the cluster of `config` through the normal replicated path (the
/// owner's primary, then its secondary, under the current N), before the coordinator
/// publishes the configuration (so that no client reads a half-restored set): [`WRITERS`]
/// tasks per server, each pipelining [`PIPELINE`] puts at a time on a connection of its own
/// to that key's owner. A batch that does not come back all stored is written again one
/// put at a time by a [`Client`] given the configuration, which retries; writing a put
/// twice is harmless here, since nothing else writes these keys during the restore.
pub async fn write_in(
    entries: Entries,
    config: ClusterConfig,
    coordinator: String,
) -> Result<(), RestoreError> {
    let config = Arc::new(config);
    let writers = config.servers.len() * WRITERS;
    let mut shares: Vec<Vec<Op>> = (0..writers).map(|_| Vec::new()).collect();
    let mut turn = vec![0; config.servers.len()];
    for (key, value) in entries {
        let owner = config.server_for(&key).id as usize;
        shares[owner * WRITERS + turn[owner] % WRITERS].push(Op::Put { key, value });
        turn[owner] += 1;
    }
    let tasks = shares.into_iter().enumerate().map(|(i, share)| {
        let client = Client::with_config(coordinator.clone(), WRITE_TIMEOUT, config.clone());
        let server = config.servers[i / WRITERS].clone();
        tokio::spawn(write_share(share, server, config.epoch, client))
    });
    for result in futures::future::join_all(tasks).await {
        result.map_err(|e| RestoreError::Write(e.to_string()))??;
    }
    Ok(())
}

/// One writer of [`write_in`]: `ops` all owned by `server`.
async fn write_share(
    ops: Vec<Op>,
    server: ServerAddr,
    epoch: u64,
    mut client: Client,
) -> Result<(), RestoreError> {
    let hello = Hello::new(Role::Client, &[]);
    let mut conn = Connection::connect(&server.client_addr(), &hello).await.ok();
    for batch in ops.chunks(PIPELINE) {
        let stored = match conn.as_mut() {
            Some(conn) => pipelined(conn, batch, epoch).await,
            None => false,
        };
        if stored {
            continue;
        }
        conn = None;
        for op in batch {
            client.execute(op.clone()).await.map_err(|e| {
                RestoreError::Write(format!("key {}: {e}", crate::text::quote(op.key())))
            })?;
        }
    }
    Ok(())
}

/// Sends `batch` on `conn` in one write and reads its answers: whether all were stored.
async fn pipelined(conn: &mut Connection, batch: &[Op], epoch: u64) -> bool {
    let sent = async {
        for op in batch {
            conn.writer.feed(&ClientRequestRef { epoch, op }).await?;
        }
        conn.writer.flush().await?;
        for _ in batch {
            let answer: ClientResponse = conn
                .reader
                .recv_within(WRITE_TIMEOUT, "waiting for a restored key's answer")
                .await?;
            if answer != ClientResponse::Stored {
                return Ok(false);
            }
        }
        Ok::<_, crate::error::Error>(true)
    };
    sent.await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::FileState::{Incomplete, Missing, Usable};
    use super::Source::{Primary, SecondaryOn};
    use super::*;

    #[test]
    fn every_owner_takes_its_primary_when_usable() {
        let all = [Usable; 3];
        assert_eq!(choose_sources(&all, &all).unwrap(), [Primary(0), Primary(1), Primary(2)]);
    }

    /// Server 1's files gone (or incomplete): its keys come from server 2's secondary; the
    /// keys of server 0, whose secondary copy was on 1, still come from 0's primary.
    #[test]
    fn a_missing_or_incomplete_owner_is_replaced_by_its_successors_secondary() {
        for lost in [Missing, Incomplete] {
            let primaries = [Usable, lost, Usable];
            let secondaries = [Usable, lost, Usable];
            assert_eq!(
                choose_sources(&primaries, &secondaries).unwrap(),
                [Primary(0), SecondaryOn(2), Primary(2)]
            );
        }
        // The last server's successor is server 0.
        let sources = choose_sources(&[Usable, Usable, Missing], &[Usable; 3]).unwrap();
        assert_eq!(sources, [Primary(0), Primary(1), SecondaryOn(0)]);
    }

    /// Two neighbours gone: the keys of the first have no copy left; one server and a
    /// secondary elsewhere gone still leave a copy of everything.
    #[test]
    fn an_owner_without_any_copy_is_named() {
        let gone = [Usable, Missing, Missing];
        assert_eq!(choose_sources(&gone, &gone), Err(vec![1]));
        let four = [Usable, Missing, Missing, Missing];
        assert_eq!(choose_sources(&four, &four), Err(vec![1, 2]));
        let scattered = [Usable, Missing, Usable];
        assert!(choose_sources(&scattered, &[Missing, Usable, Usable]).is_ok());
        assert_eq!(choose_sources(&scattered, &[Usable, Usable, Missing]), Err(vec![1]));
    }
}
