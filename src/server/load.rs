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
            Ok(Err(why)) => ControlResponse::Failed(why),
            Err(e) => ControlResponse::Failed(format!("loading the dumps: {e}")),
        }
    }

    /// Loads both files, each checked before either table is touched, into empty tables
    /// of a restoring configuration of `n` servers only: anything else would mix the set
    /// with newer data, or place its keys on the wrong servers.
    fn load(&self, n: u32, primary: &DumpFile, secondary: &DumpFile) -> Result<(u64, u64), String> {
        let restoring = self.config().as_ref().is_some_and(|c| c.restoring && c.len() == n);
        if !restoring || !self.primary.is_empty() || !self.secondary.is_empty() {
            return Err(format!(
                "a load is only taken into the empty tables of a restore among {n}"
            ));
        }
        let began = std::time::Instant::now();
        let (primaries, secondaries) = std::thread::scope(|scope| {
            let other = scope.spawn(|| self.load_file(DumpKind::Secondary, secondary));
            let primaries = self.load_file(DumpKind::Primary, primary);
            (primaries, other.join().unwrap_or_else(|_| Err("a loading thread panicked".into())))
        });
        let (primaries, secondaries) = (primaries?, secondaries?);
        let (keys, secondaries_len) = (primaries.len() as u64, secondaries.len());
        let bytes = primaries.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        let checked_ms = began.elapsed().as_millis() as u64;
        self.primary.extend(primaries);
        self.secondary.extend(secondaries);
        let took_ms = began.elapsed().as_millis() as u64;
        info!(primary = keys, secondary = secondaries_len, checked_ms, took_ms, "dumps loaded");
        Ok((keys, bytes))
    }

    /// One of the two files, checked against its entry. Each key's place is not checked
    /// (a tenth of the load): a file with the MD5 its manifest names is the one this
    /// server's id wrote, with only its own slot's keys (primary) or its predecessor's.
    fn load_file(&self, kind: DumpKind, entry: &DumpFile) -> Result<Entries, String> {
        let path = self.dump_path(kind);
        let shown = path.display();
        match dumpfile::load_file(&path, entry, None) {
            Ok(Some(entries)) => Ok(entries),
            Ok(None) => Err(format!("dump file {shown}: missing")),
            Err(why) => Err(format!("dump file {shown}: {why}")),
        }
    }
}
