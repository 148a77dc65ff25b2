//! The manifests of a set of dumps.
//!
//! - `<dump-dir>/dumps.manifest` ([`Manifest`]): written by the coordinator last, after an
//!   orderly shutdown in which every server wrote its dumps, so that its presence says the
//!   set is whole. It lists each server's two files (name, size, key count, MD5, as the
//!   servers reported them: the coordinator does not read remote servers' files) and whether
//!   that server's copy was complete. A restarted coordinator restores the set from it
//!   (`coord::restore`).
//! - `server_<id>.manifest` ([`ServerManifest`]): written by a server after its two files,
//!   whoever asked for them (a shutdown, or the server itself once its coordinator stayed
//!   away for the orphan timeout). A coordinator that finds every server of its cluster gone
//!   builds the set's manifest from these and its own state (which says which incarnation
//!   of each server held which keys).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::{DumpFile, Dumps};

/// The manifest's file name in the dump directory.
pub const MANIFEST: &str = "dumps.manifest";
/// Bumped on any incompatible change of [`Manifest`]; other formats are refused.
pub const FORMAT: u32 = 1;

/// One server's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerDumps {
    pub id: u32,
    /// False for a replacement whose recovery copy had not been handed its keys when the
    /// service stopped: its files may lack keys (their copies are on its neighbours).
    pub complete: bool,
    /// Why not, when not complete (for the message that refuses a set without a copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why_incomplete: Option<String>,
    pub primary: DumpFile,
    pub secondary: DumpFile,
}

/// What [`ServerDumps::why_incomplete`] says of a replacement being filled at a shutdown.
pub const BEING_FILLED: &str = "its server was being recovered";

/// The whole set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The number of servers the keys were placed among.
    pub n: u32,
    pub epoch: u64,
    /// When the set was written, UTC (`2026-12-01 10:05:13 UTC`).
    pub time: String,
    pub servers: Vec<ServerDumps>,
    /// What the set was made from when it is not a run's own dumps: the logs of a crashed
    /// cluster, read and written as dumps by the coordinator for a start with another
    /// number of servers (`coord::restore::logs`). Said by the line of what was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl Manifest {
    /// The manifest of a shutdown: `dumps[id]` as server `id` reported them, `recovering`
    /// the server whose replacement was still being filled, if any. `None` unless every
    /// server wrote its dumps.
    pub fn of_shutdown(
        epoch: u64,
        dumps: &[Option<Dumps>],
        recovering: Option<u32>,
        now: std::time::SystemTime,
    ) -> Option<Manifest> {
        let servers = (0..)
            .zip(dumps)
            .map(|(id, dumps)| {
                let Dumps { primary, secondary } = dumps.clone()?;
                let complete = recovering != Some(id);
                let why_incomplete = (!complete).then(|| BEING_FILLED.to_string());
                Some(ServerDumps { id, complete, why_incomplete, primary, secondary })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Manifest {
            format: FORMAT,
            n: dumps.len() as u32,
            epoch,
            time: utc_time(now),
            servers,
            origin: None,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses and checks a manifest: the format, and one entry per server, in order, with
    /// its own file names.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        check_format(manifest.format)?;
        if manifest.servers.len() != manifest.n as usize || manifest.n == 0 {
            return Err(format!(
                "{} servers listed for n = {}",
                manifest.servers.len(),
                manifest.n
            ));
        }
        for (id, server) in (0..).zip(&manifest.servers) {
            if !names_its_files(id, server.id, &server.primary, &server.secondary) {
                return Err(format!("entry {id} is not server {id}'s files"));
            }
        }
        Ok(manifest)
    }
}

/// What one server wrote about its own dumps, next to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerManifest {
    pub format: u32,
    pub id: u32,
    /// Which start of server `id` wrote the files: only the incarnation the coordinator's
    /// state names held the newest copy of its keys.
    pub incarnation: u64,
    /// The configuration it had last.
    pub epoch: u64,
    pub time: String,
    /// Its tables held every key of its slot and of its predecessor's: it was up in its
    /// configuration (not a replacement still being filled), and no restore was under way.
    pub complete: bool,
    pub primary: DumpFile,
    pub secondary: DumpFile,
}

impl ServerManifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a manifest always serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parses and checks a server's manifest: the format, and that it describes server
    /// `id`'s own files.
    pub fn decode(bytes: &[u8], id: u32) -> Result<ServerManifest, String> {
        let manifest: ServerManifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        check_format(manifest.format)?;
        if !names_its_files(id, manifest.id, &manifest.primary, &manifest.secondary) {
            return Err(format!("it does not describe server {id}'s files"));
        }
        Ok(manifest)
    }
}

/// Manifests of another format are refused.
fn check_format(format: u32) -> Result<(), String> {
    match format == FORMAT {
        true => Ok(()),
        false => Err(format!("format {format} (this coordinator reads {FORMAT})")),
    }
}

/// Whether an entry that says it is server `named`'s, with these files, is server `id`'s.
fn names_its_files(id: u32, named: u32, primary: &DumpFile, secondary: &DumpFile) -> bool {
    named == id
        && primary.name == dump_name(id, "primary")
        && secondary.name == dump_name(id, "secondary")
}

/// `server_<id>.manifest`.
pub fn server_manifest_name(id: u32) -> String {
    dump_name(id, "manifest")
}

/// `server_<id>.<kind>`.
pub fn dump_name(id: u32, kind: &str) -> String {
    format!("server_{id}.{kind}")
}

/// Whether `name` is a dump file's name (`server_<id>.primary` or `.secondary`).
pub fn is_dump_name(name: &str) -> bool {
    split_name(name).is_some_and(|(_, kind)| matches!(kind, "primary" | "secondary"))
}

/// Whether `name` is a server's append-only log (`server_<id>.aof`).
pub fn is_log_name(name: &str) -> bool {
    split_name(name).is_some_and(|(_, kind)| kind == "aof")
}

/// The server id of a set's file (`server_<id>.<kind>`: a dump or a server's manifest).
pub fn server_of(name: &str) -> Option<u32> {
    split_name(name).and_then(|(id, _)| id.parse().ok())
}

/// `server_<digits>.<kind>` as its two parts.
fn split_name(name: &str) -> Option<(&str, &str)> {
    let (id, kind) = name.strip_prefix("server_")?.split_once('.')?;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then_some((id, kind))
}

/// Writes `bytes` to `dir/name` atomically: a temporary file, fsync, rename, fsync of the
/// directory.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Whether `name` is a server's manifest's name (`server_<id>.manifest`).
pub fn is_server_manifest_name(name: &str) -> bool {
    name.strip_prefix("server_")
        .and_then(|rest| rest.strip_suffix(".manifest"))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// The dump files, the logs and the manifests in `dir` (what `--fresh` moves aside).
pub fn set_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if is_dump_name(&name)
            || is_log_name(&name)
            || is_server_manifest_name(&name)
            || name == MANIFEST
        {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Moves `names` from `dir` into a new directory `dir/dumps-<UTC time>` (a suffix if it
/// exists); returns it. Nothing is deleted.
pub fn move_aside(
    dir: &Path,
    names: &[String],
    now: std::time::SystemTime,
) -> std::io::Result<PathBuf> {
    let stamp = utc_time(now).replace([' ', ':'], "").replace("UTC", "Z");
    let mut aside = dir.join(format!("dumps-{stamp}"));
    let mut suffix = 1;
    while let Err(e) = std::fs::create_dir(&aside) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(e);
        }
        suffix += 1;
        aside = dir.join(format!("dumps-{stamp}-{suffix}"));
    }
    for name in names {
        std::fs::rename(dir.join(name), aside.join(name))?;
    }
    std::fs::File::open(&aside)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(aside)
}

/// `2026-12-01 10:05:13 UTC` (the civil calendar from days since 1970, after Howard
/// Hinnant's `civil_from_days`).
pub fn utc_time(now: std::time::SystemTime) -> String {
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3600, rest / 60 % 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC")
}

/// Why the dump directory cannot be restored (or started on). Nothing was started or changed.
/// Here, at the bottom of the crate beside the set's description, so that the library's
/// error type can carry it without depending on the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("dumps manifest {path}: {why}; nothing was started or changed")]
    Manifest { path: PathBuf, why: String },
    #[error(
        "dump file {path}: {why}; nothing was started or changed (move the set away, or \
         start with --fresh to set it aside and start empty)"
    )]
    File { path: PathBuf, why: String },
    #[error(
        "cannot restore the dumps in {dir}: {missing}; nothing was started or changed \
         (start with --fresh to set the set aside and start empty)"
    )]
    NoCopy { dir: PathBuf, missing: String },
    #[error(
        "{dir} holds a dumps manifest, but the cluster has servers on other hosts, whose \
         dumps are on those hosts: they restore only in place (the same number of servers, \
         every server's files complete), which this set is not; start with --fresh to set \
         the manifest and the local dumps aside and start empty"
    )]
    Remote { dir: PathBuf },
    #[error(
        "{dir} holds dump files ({files}) but no dumps manifest (from an older version, or a \
         shutdown that did not finish): starting would write over them; start with --fresh \
         to move them aside and start empty"
    )]
    NoManifest { dir: PathBuf, files: String },
    #[error(
        "cannot reshard the logs of the crashed cluster of {was} servers onto the {now} servers \
         of the configuration: {which} on other hosts, and resharding reads every log here and \
         writes every key through this coordinator (logs would have to be shipped between \
         hosts); nothing was started or changed: start with the crashed cluster's \
         configuration ({was} servers), whose servers each load their own log where it is"
    )]
    RemoteLogs { was: u32, now: usize, which: &'static str },
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("restoring the dumps: {0}")]
    Write(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn file(name: &str, keys: u64) -> DumpFile {
        DumpFile { name: name.into(), bytes: keys * 10, keys, md5: "00".repeat(16) }
    }

    fn dumps(id: u32) -> Option<Dumps> {
        Some(Dumps {
            primary: file(&dump_name(id, "primary"), 3),
            secondary: file(&dump_name(id, "secondary"), 2),
        })
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc_time(UNIX_EPOCH), "1970-01-01 00:00:00 UTC");
        // date -u -d @1796123113
        let t = UNIX_EPOCH + Duration::from_secs(1_796_123_113);
        assert_eq!(utc_time(t), "2026-12-01 11:05:13 UTC");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_time(leap), "2000-02-29 00:00:00 UTC");
    }

    /// Written only when every server reported its files; the replacement being filled is
    /// marked incomplete; what is encoded decodes to the same.
    #[test]
    fn a_manifest_round_trips_and_marks_the_replacement() {
        let now = UNIX_EPOCH;
        assert_eq!(Manifest::of_shutdown(4, &[dumps(0), None, dumps(2)], None, now), None);
        let manifest = Manifest::of_shutdown(4, &[dumps(0), dumps(1), dumps(2)], Some(1), now)
            .expect("every server wrote");
        assert_eq!((manifest.n, manifest.epoch, manifest.format), (3, 4, FORMAT));
        let complete: Vec<bool> = manifest.servers.iter().map(|s| s.complete).collect();
        assert_eq!(complete, [true, false, true]);
        assert_eq!(Manifest::decode(&manifest.encode()).unwrap(), manifest);
    }

    #[test]
    fn a_manifest_that_does_not_describe_its_servers_is_refused() {
        let now = UNIX_EPOCH;
        let mut manifest =
            Manifest::of_shutdown(1, &[dumps(0), dumps(1), dumps(2)], None, now).unwrap();
        manifest.servers.swap(0, 1);
        assert!(Manifest::decode(&manifest.encode()).unwrap_err().contains("entry 0"));
        manifest.servers.swap(0, 1);
        manifest.n = 4;
        assert!(Manifest::decode(&manifest.encode()).is_err());
        manifest.n = 3;
        manifest.format = 99;
        assert!(Manifest::decode(&manifest.encode()).unwrap_err().contains("format 99"));
        assert!(Manifest::decode(b"{ not json").is_err());
    }

    #[test]
    fn dump_names() {
        assert!(is_dump_name("server_0.primary") && is_dump_name("server_12.secondary"));
        for other in ["server_.primary", "server_1.primary.tmp", "server_x.primary", "server_1.log"]
        {
            assert!(!is_dump_name(other), "{other}");
        }
        assert!(is_server_manifest_name("server_3.manifest"));
        for other in ["server_.manifest", "server_3.manifest.tmp", "server_3.primary", MANIFEST] {
            assert!(!is_server_manifest_name(other), "{other}");
        }
    }
}
