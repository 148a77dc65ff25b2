//! Writing a server's two dump files, and telling the files this start of the server wrote
//! from those a newer start of its id wrote (without marking the files: other tools read
//! their `P "key" "value"` lines).

use std::fmt;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use crate::lines;
use crate::manifest::{FORMAT, ServerManifest, server_manifest_name, utc_time, write_atomically};
use crate::protocol::{DumpFile, Dumps};
use crate::routing::Replica;
use crate::server::{Server, Table};

/// Pause between attempts at writing dumps that failed.
const DUMP_RETRY: Duration = Duration::from_secs(1);

/// One of a server's two dump files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpKind {
    Primary,
    Secondary,
}

impl DumpKind {
    pub const BOTH: [DumpKind; 2] = [DumpKind::Primary, DumpKind::Secondary];

    /// The file name's extension: `server_<id>.<name>`.
    pub fn name(self) -> &'static str {
        match self {
            DumpKind::Primary => "primary",
            DumpKind::Secondary => "secondary",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// How a failure to write it is named.
    fn what(self) -> &'static str {
        match self {
            DumpKind::Primary => "primary dump",
            DumpKind::Secondary => "secondary dump",
        }
    }
}

impl fmt::Display for DumpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which file a dump path holds: the same file (device and inode; a rename keeps them, and
/// a newer dump is a new file renamed over the old one), unchanged (time and size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    modified: Option<SystemTime>,
    len: u64,
}

impl FileStamp {
    pub fn of(meta: &Metadata) -> Self {
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            modified: meta.modified().ok(),
            len: meta.len(),
        }
    }
}

/// Why dumps were not written: each file that failed ("primary dump", "dump manifest"...),
/// and why.
#[derive(Debug, thiserror::Error)]
pub struct DumpsFailed(pub Vec<(&'static str, std::io::Error)>);

impl fmt::Display for DumpsFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (what, e)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{what}: {e}")?;
        }
        Ok(())
    }
}

/// The dumps of one round (one Shutdown from the coordinator, or all the retries after losing
/// it): which are written yet, and what they hold. A retry writes only those still
/// missing, so that on a full disk a dump already written does not need room a second time.
#[derive(Debug, Default)]
pub struct DumpRound {
    files: [Option<DumpFile>; 2],
    /// The server's manifest ([`ServerManifest`]) is written, after both files.
    manifest_written: bool,
}

impl DumpRound {
    pub fn missing(&self) -> Vec<DumpKind> {
        DumpKind::BOTH.into_iter().filter(|kind| self.files[kind.index()].is_none()).collect()
    }

    pub fn written(&mut self, kind: DumpKind, file: DumpFile) {
        self.files[kind.index()] = Some(file);
    }

    /// Both dumps once both are written, never a half set: a server with one dump written
    /// still holds data that is nowhere else.
    pub fn complete(&self) -> Option<Dumps> {
        let [primary, secondary] = self.files.clone();
        Some(Dumps { primary: primary?, secondary: secondary? })
    }
}

/// What this start of the server knows of its own dumps: the file it last wrote for each
/// kind, and how many attempts failed.
#[derive(Debug, Default)]
pub struct OwnDumps {
    last_written: [Option<FileStamp>; 2],
    failures: u64,
}

impl OwnDumps {
    pub fn record(&mut self, kind: DumpKind, stamp: FileStamp) {
        self.last_written[kind.index()] = Some(stamp);
    }

    /// Whether `found` (the file at `kind`'s path now, if any) is a newer start's: written
    /// after this one lost its coordinator at `lost`, and not the file this start wrote (the
    /// time alone cannot tell: this start's own dumps are written after `lost` too).
    pub fn newer_start_wrote(
        &self,
        kind: DumpKind,
        found: Option<FileStamp>,
        lost: SystemTime,
    ) -> bool {
        found.is_some_and(|found| {
            found.modified.is_some_and(|modified| modified > lost)
                && self.last_written[kind.index()] != Some(found)
        })
    }

    /// Counts a failed attempt; whether to log it. Retried every second, so the log (maybe on
    /// the same full disk) gets the 1st, 2nd, 4th, 8th... failure.
    fn failed(&mut self) -> bool {
        self.failures += 1;
        self.failures.is_power_of_two()
    }
}

impl Server {
    /// Writes the dumps `round` still misses, then the server's manifest; returns both
    /// dumps once all three are written (`None`: nothing to write, see below). Each missing
    /// dump is tried even if another failed.
    pub(super) fn dump(&self, round: &mut DumpRound) -> Result<Option<Dumps>, DumpsFailed> {
        let mut own = self.dumping.lock().unwrap_or_else(|e| e.into_inner());
        let Some((epoch, complete)) = self.dump_state() else {
            return Ok(None);
        };
        let mut failed = Vec::new();
        for kind in round.missing() {
            match self.table(kind).dump(&self.dump_path(kind)) {
                Ok((file, meta)) => {
                    own.record(kind, FileStamp::of(&meta));
                    round.written(kind, file);
                }
                Err(e) => failed.push((kind.what(), e)),
            }
        }
        if let Some(dumps) = round.complete() {
            if !round.manifest_written {
                match self.write_own_manifest(&dumps, epoch, complete) {
                    Ok(()) => round.manifest_written = true,
                    Err(e) => failed.push(("dump manifest", e)),
                }
            }
            if round.manifest_written {
                let (primary, secondary) = (dumps.primary.keys, dumps.secondary.keys);
                let dir = self.dump_dir.display();
                info!(primary, secondary, %dir, "{}", lines::DUMPS_WRITTEN);
                return Ok(Some(dumps));
            }
        }
        let failed = DumpsFailed(failed);
        if own.failed() {
            error!(error = %failed, failures = own.failures, "{}", lines::CANNOT_WRITE_DUMPS);
        }
        Err(failed)
    }

    /// The epoch of this server's configuration and whether its copy is complete (up in
    /// it), for its manifest; `None` when it must write no dumps:
    /// - a first start that never got a configuration (the start failed), so empty: empty
    ///   dumps would only overwrite those of an earlier run. (A replacement does write its
    ///   empty ones: what is there is from the instance it replaced.)
    /// - a restore under way: the files still hold the whole set being restored, its
    ///   tables part of it at most.
    fn dump_state(&self) -> Option<(u64, bool)> {
        let config = self.config();
        if config.as_ref().is_some_and(|c| c.restoring) {
            info!("{}", lines::NO_DUMPS_DURING_RESTORE);
            return None;
        }
        if self.incarnation == 0 && config.is_none() {
            info!("no configuration ever installed: no dumps written");
            return None;
        }
        let me = config.as_ref().and_then(|c| c.servers.get(self.id as usize));
        let complete =
            me.is_some_and(|me| me.incarnation == self.incarnation && me.state == Replica::Up);
        Some((config.as_ref().map_or(0, |c| c.epoch), complete))
    }

    /// `server_<id>.manifest`, after both files (see `crate::manifest`).
    fn write_own_manifest(&self, dumps: &Dumps, epoch: u64, complete: bool) -> std::io::Result<()> {
        let manifest = ServerManifest {
            format: FORMAT,
            id: self.id,
            incarnation: self.incarnation,
            epoch,
            time: utc_time(SystemTime::now()),
            complete,
            primary: dumps.primary.clone(),
            secondary: dumps.secondary.clone(),
        };
        write_atomically(&self.dump_dir, &server_manifest_name(self.id), &manifest.encode())
    }

    /// Retries [`dump`](Self::dump) every second until both dumps are written: with nobody
    /// left to ask again, exiting on a failed dump (a full disk) would throw the data away.
    /// Only a kill ends the wait.
    ///
    /// A dump file that appears meanwhile, other than the ones this start wrote, is from a
    /// newer start of this server id, which replaced this one (paused or cut off, it was
    /// declared lost) and whose data is newer: it is not overwritten.
    pub(super) async fn dump_until_written(&self) {
        let lost = SystemTime::now();
        let mut round = DumpRound::default();
        while self.dump(&mut round).is_err() {
            tokio::time::sleep(DUMP_RETRY).await;
            if self.newer_dumps_since(lost) {
                warn!("{}", lines::NEWER_DUMPS);
                return;
            }
        }
    }

    /// Whether either dump path holds a newer start's file (see [`OwnDumps::newer_start_wrote`]).
    fn newer_dumps_since(&self, lost: SystemTime) -> bool {
        let own = self.dumping.lock().unwrap_or_else(|e| e.into_inner());
        DumpKind::BOTH.into_iter().any(|kind| {
            let found = std::fs::metadata(self.dump_path(kind)).ok();
            // A directory in the way is no dump (and makes this one fail until it is gone).
            let found = found.filter(Metadata::is_file).map(|meta| FileStamp::of(&meta));
            own.newer_start_wrote(kind, found, lost)
        })
    }

    pub(super) fn table(&self, kind: DumpKind) -> &Table {
        match kind {
            DumpKind::Primary => &self.primary,
            DumpKind::Secondary => &self.secondary,
        }
    }

    pub(super) fn dump_path(&self, kind: DumpKind) -> std::path::PathBuf {
        self.dump_dir.join(format!("server_{}.{kind}", self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ino: u64, modified: SystemTime) -> FileStamp {
        FileStamp { dev: 1, ino, modified: Some(modified), len: 10 }
    }

    /// The defect: a server that wrote its primary dump after losing its coordinator took that
    /// file for a newer start's. Its own file is not; another file written since is; one
    /// from before (an earlier run's) is not.
    #[test]
    fn only_files_this_start_did_not_write_count_as_a_newer_starts() {
        let lost = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let later = lost + Duration::from_millis(10);
        let mut own = OwnDumps::default();
        let primary = DumpKind::Primary;
        let mine = stamp(7, later);
        own.record(primary, mine);
        assert!(!own.newer_start_wrote(primary, Some(mine), lost), "its own file");
        assert!(!own.newer_start_wrote(primary, None, lost), "no file");
        assert!(own.newer_start_wrote(primary, Some(stamp(8, later)), lost), "renamed over");
        let rewritten = FileStamp { len: 11, ..mine };
        assert!(own.newer_start_wrote(primary, Some(rewritten), lost), "changed since");
        let earlier = stamp(9, lost - Duration::from_secs(5));
        assert!(!own.newer_start_wrote(primary, Some(earlier), lost), "an earlier run's");
        assert!(own.newer_start_wrote(DumpKind::Secondary, Some(mine), lost), "per kind");
    }

    /// A round retries only what is missing and reports counts only for a full set.
    #[test]
    fn a_round_is_complete_only_with_both_dumps() {
        let file =
            |name: &str, keys| DumpFile { name: name.into(), bytes: 0, keys, md5: String::new() };
        let mut round = DumpRound::default();
        assert_eq!(round.missing(), DumpKind::BOTH);
        round.written(DumpKind::Primary, file("p", 3));
        assert_eq!(round.complete(), None, "half a set");
        assert_eq!(round.missing(), [DumpKind::Secondary]);
        round.written(DumpKind::Secondary, file("s", 0));
        let dumps = round.complete().unwrap();
        assert_eq!((dumps.primary.keys, dumps.secondary.name.as_str()), (3, "s"));
        assert!(round.missing().is_empty());
    }

    #[test]
    fn failures_are_logged_at_powers_of_two() {
        let mut own = OwnDumps::default();
        let logged: Vec<bool> = (0..8).map(|_| own.failed()).collect();
        assert_eq!(logged, [true, true, false, true, false, false, false, true]);
    }

    #[test]
    fn a_failure_names_each_dump_that_failed() {
        let failed = DumpsFailed(vec![
            (DumpKind::Primary.what(), std::io::Error::other("disk full")),
            (DumpKind::Secondary.what(), std::io::Error::other("is a directory")),
        ]);
        assert_eq!(failed.to_string(), "primary dump: disk full; secondary dump: is a directory");
    }
}
