//! Loading the server's own dump files into its tables: a restore with the number of
//! servers unchanged, where every server reads its two files from its own dump directory
//! (on its own host, so remote servers' sets restore too), in parallel with the others,
//! and nothing crosses the network.

use std::sync::Arc;

use tracing::info;

use crate::dumpfile::{self, Entries};
use crate::protocol::{ControlResponse, DumpFile};
use crate::server::Server;
use crate::server::dumps::DumpKind;

impl Server {
    /// Answers a `Load` (see `ControlRequest::Load`), on blocking threads: reading,
    /// checking and parsing the files is most of a restore's work.
    pub(super) async fn load_dumps(
        self: &Arc<Self>,
        n: u32,
        primary: DumpFile,
        secondary: DumpFile,
    ) -> ControlResponse {
        let server = self.clone();
        let loaded = tokio::task::spawn_blocking(move || server.load(n, &primary, &secondary));
        match loaded.await {
            Ok(Ok((keys, bytes))) => ControlResponse::Loaded { keys, bytes },
            Ok(Err(why)) => ControlResponse::Failed(why.to_string()),
            Err(e) => ControlResponse::Failed(format!("loading the dumps: {e}")),
        }
    }

    /// Loads both files, each checked before either table is touched, into empty tables
    /// of a restoring configuration of `n` servers only: anything else would mix the set
    /// with newer data, or place its keys on the wrong servers.
    fn load(
        &self,
        n: u32,
        primary: &DumpFile,
        secondary: &DumpFile,
    ) -> Result<(u64, u64), LoadRefused> {
        let restoring = self.config().as_ref().is_some_and(|c| c.restoring && c.len() == n);
        if !restoring || !self.primary.is_empty() || !self.secondary.is_empty() {
            return Err(LoadRefused::NotARestore { n });
        }
        let began = std::time::Instant::now();
        let (primaries, secondaries) = std::thread::scope(|scope| {
            let other = scope.spawn(|| self.load_file(DumpKind::Secondary, secondary));
            let primaries = self.load_file(DumpKind::Primary, primary);
            (primaries, other.join().unwrap_or(Err(LoadRefused::Panicked)))
        });
        let (primaries, secondaries) = (primaries?, secondaries?);
        let (keys, secondaries_len) = (primaries.len() as u64, secondaries.len());
        let checked_ms = began.elapsed().as_millis() as u64;
        self.primary.extend(primaries);
        self.secondary.extend(secondaries);
        let took_ms = began.elapsed().as_millis() as u64;
        info!(primary = keys, secondary = secondaries_len, checked_ms, took_ms, "dumps loaded");
        // The tables were empty (checked above): what they count now is the set's.
        Ok((keys, self.primary.bytes()))
    }

    /// One of the two files, checked against its entry. Each key's place is not checked
    /// (a tenth of the load): a file with the MD5 its manifest names is the one this
    /// server's id wrote, with only its own slot's keys (primary) or its predecessor's.
    fn load_file(&self, kind: DumpKind, entry: &DumpFile) -> Result<Entries, LoadRefused> {
        let path = self.dump_path(kind);
        match dumpfile::load_file(&path, entry, None) {
            Ok(Some(entries)) => Ok(entries),
            Ok(None) => Err(LoadRefused::File { path, why: "missing".into() }),
            Err(why) => Err(LoadRefused::File { path, why }),
        }
    }
}

/// Why a `Load` was refused; nothing was loaded.
#[derive(Debug, thiserror::Error)]
enum LoadRefused {
    #[error("a load is only taken into the empty tables of a restore among {n}")]
    NotARestore { n: u32 },
    #[error("dump file {}: {why}", path.display())]
    File { path: std::path::PathBuf, why: String },
    #[error("a loading thread panicked")]
    Panicked,
}

#[cfg(test)]
mod tests {
    use md5::{Digest, Md5};

    use super::*;
    use crate::server::tests::server;

    /// Writes `text` as server 1's `kind` dump in `dir`; its entry, with `md5` if given.
    fn dump(dir: &std::path::Path, kind: &str, text: &str, md5: Option<&str>) -> DumpFile {
        let name = format!("server_1.{kind}");
        std::fs::write(dir.join(&name), text).unwrap();
        let real: String = Md5::digest(text).iter().map(|b| format!("{b:02x}")).collect();
        let md5 = md5.map_or(real, str::to_string);
        DumpFile { name, bytes: text.len() as u64, keys: text.lines().count() as u64, md5 }
    }

    /// Refused outside a restore; a file that does not match its entry is refused before
    /// either table is touched; a matching pair loads, with its keys and bytes counted.
    #[tokio::test]
    async fn a_load_takes_only_matching_files_into_the_empty_tables_of_a_restore() {
        let dir = tempfile::tempdir().unwrap();
        let mut server = server().await;
        server.dump_dir = dir.path().into();
        let primary = dump(dir.path(), "primary", "P \"k\" \"value\"\n", None);
        let secondary = dump(dir.path(), "secondary", "P \"j\" \"v\"\n", None);
        let refused = server.load(3, &primary, &secondary).unwrap_err().to_string();
        assert!(refused.contains("only taken into the empty tables of a restore"), "{refused}");

        let mut restoring = server.config().clone().unwrap();
        (restoring.epoch, restoring.restoring) = (2, true);
        server.set_config(restoring).await.unwrap();
        let corrupt = dump(dir.path(), "secondary", "P \"j\" \"v\"\n", Some("00"));
        let refused = server.load(3, &primary, &corrupt).unwrap_err().to_string();
        assert!(refused.contains("server_1.secondary") && refused.contains("MD5"), "{refused}");
        assert!(server.primary.is_empty() && server.secondary.is_empty(), "nothing loaded");
        assert!(server.load(4, &primary, &secondary).is_err(), "another number of servers");

        assert_eq!(server.load(3, &primary, &secondary).unwrap(), (1, 6));
        assert_eq!((server.primary.len(), server.secondary.len()), (1, 1));
    }
}
