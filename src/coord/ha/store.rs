//! Where the coordinator keeps its state: written whole before any change it records is
//! published, so that the next coordinator never knows less than the cluster.
//!
//! - [`StateFile`] (the embedded default): one file, written atomically, and a lock that
//!   keeps a second coordinator off the same state. A coordinator that dies (kill -9, a
//!   crash) leaves the file saying `running`; the next one started on the same directory
//!   takes the running servers back from it instead of starting new, empty ones.
//! - [`EtcdStore`] (`coord --etcd`): the same bytes under the cluster's prefix in etcd,
//!   written only while this coordinator's election key still stands (see `etcd`), read
//!   by whichever coordinator is elected next.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use etcd_client::LeaderKey;

use super::retry::{Retry, retry};
use super::step_down::step_down;
use crate::coord::ha::authority::Authority;
use crate::coord::ha::etcd::Etcd;
use crate::coord::state::CoordState;
use crate::error::{Error, Result};

const STATE_FILE: &str = "coord.state";
const LOCK_FILE: &str = "coord.lock";
/// Bumped when the file's shape changes incompatibly.
const FORMAT: u32 = 1;

/// The file's shape, written: the state and the format it is in.
#[derive(Serialize)]
struct Saved<'a> {
    format: u32,
    state: &'a CoordState,
}

/// The file's shape, read.
#[derive(Deserialize)]
struct Loaded {
    format: u32,
    state: CoordState,
}

/// The coordinator state's home.
pub enum Store {
    File(StateFile),
    /// Boxed: the etcd client is large.
    Etcd(Box<EtcdStore>),
}

impl Store {
    /// Whether this coordinator was elected (through etcd) rather than started alone.
    pub fn is_elected(&self) -> bool {
        matches!(self, Store::Etcd(_))
    }

    /// Where the state lives, for messages.
    pub fn describe(&self) -> String {
        match self {
            Store::File(file) => file.path().display().to_string(),
            Store::Etcd(etcd) => format!("etcd (cluster {})", etcd.etcd.cluster),
        }
    }

    /// The state a previous coordinator left, if any.
    pub fn load(&self) -> Result<Option<CoordState>> {
        match self {
            Store::File(file) => file.load(),
            Store::Etcd(store) => {
                let bytes =
                    block_on(retry("reading the state", store.retry(), || store.etcd.load()));
                let decoded = bytes.map(|b| Store::decode(&b)).transpose();
                decoded.map_err(|why| {
                    Error::Unavailable(format!("the state in {} is {why}", self.describe()))
                })
            }
        }
    }

    /// Writes `bytes` (from [`encode`](Self::encode)). To etcd, a write that fails ends
    /// this coordinator's leadership (see `step_down`): it never returns then.
    pub fn save(&self, bytes: &[u8]) -> Result<()> {
        match self {
            Store::File(file) => file.save(bytes),
            Store::Etcd(store) => block_on(store.save(bytes)),
        }
    }

    /// The bytes [`save`](Self::save) writes for `state` (a caller may compare them to skip
    /// writing what is already stored).
    pub fn encode(state: &CoordState) -> Vec<u8> {
        serde_json::to_vec_pretty(&Saved { format: FORMAT, state })
            .expect("a CoordState always encodes")
    }

    /// A state from the bytes [`encode`](Self::encode) made; the error completes "... is".
    pub fn decode(bytes: &[u8]) -> std::result::Result<CoordState, Undecodable> {
        let loaded: Loaded = serde_json::from_slice(bytes).map_err(Undecodable::NotAState)?;
        if loaded.format != FORMAT {
            return Err(Undecodable::Format(loaded.format));
        }
        Ok(loaded.state)
    }
}

/// Why stored bytes are not a state this coordinator reads; completes "... is".
#[derive(Debug, thiserror::Error)]
pub enum Undecodable {
    #[error("not a coordinator state ({0}); move it away to start a new cluster")]
    NotAState(serde_json::Error),
    #[error("a coordinator state of format {0}, this coordinator reads {FORMAT}")]
    Format(u32),
}

/// Runs `call` to completion from the coordinator's event loop, which is not async where
/// it persists or checks its authority (the next step must wait for either anyway); the
/// runtime's other worker threads go on serving the ports meanwhile.
pub fn block_on<T>(call: impl Future<Output = T>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(call))
}

/// The state in etcd, and the election key that guards every write of it.
pub struct EtcdStore {
    pub etcd: Etcd,
    leader: LeaderKey,
    authority: Arc<Authority>,
}

impl EtcdStore {
    pub fn new(etcd: Etcd, leader: LeaderKey, authority: Arc<Authority>) -> Self {
        EtcdStore { etcd, leader, authority }
    }

    fn retry(&self) -> Retry<'_> {
        Retry::Leading(&self.authority)
    }

    /// A guarded write, tried again for a while (the write is the same each time, so one
    /// that did land is harmless to repeat). A guard that fails ends the leadership here.
    async fn save(&self, bytes: &[u8]) -> Result<()> {
        let guarded =
            retry("writing the state", self.retry(), || self.etcd.save(&self.leader, bytes));
        if !guarded.await {
            step_down("a guarded write of the state failed: another coordinator leads");
        }
        Ok(())
    }
}

/// A locked state directory.
pub struct StateFile {
    dir: PathBuf,
    /// Held for the coordinator's lifetime; the kernel drops it when the process dies.
    _lock: Flock<File>,
}

impl StateFile {
    /// Locks `dir` (created if missing) for this process, or names the coordinator that
    /// holds it.
    pub fn lock(dir: &Path) -> Result<StateFile> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Unavailable(format!("state directory {}: {e}", dir.display())))?;
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::Unavailable(format!("{}: {e}", path.display())))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() { "unknown" } else { holder };
                return Err(Error::Unavailable(format!(
                    "another coordinator (pid {holder}) runs on the state in {}; stop it first \
                     or give another --state-dir",
                    dir.display()
                )));
            }
        };
        let pid = std::process::id().to_string();
        let written = lock.set_len(0).and_then(|()| lock.rewind()).and_then(|()| {
            lock.write_all(pid.as_bytes())?;
            lock.sync_all()
        });
        written.map_err(|e| Error::Unavailable(format!("{}: {e}", path.display())))?;
        Ok(StateFile { dir: dir.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The state a previous coordinator left, if any.
    pub fn load(&self) -> Result<Option<CoordState>> {
        let path = self.path();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::Unavailable(format!("{}: {e}", path.display()))),
        };
        Store::decode(&text)
            .map(Some)
            .map_err(|why| Error::Unavailable(format!("{} is {why}", path.display())))
    }

    /// Replaces the state file with `bytes` (from [`encode`](Self::encode)): a temporary file,
    /// fsync, rename, fsync of the directory. A crash at any point leaves the old file or the
    /// new one, whole.
    pub fn save(&self, bytes: &[u8]) -> Result<()> {
        let path = self.path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        written.map_err(|e| Error::Unavailable(format!("writing {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::config;

    fn state() -> CoordState {
        let specs =
            config::parse("3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n").unwrap();
        CoordState { servers_port: 7001, ..CoordState::new(&specs, "ab".repeat(32)) }
    }

    #[test]
    fn a_saved_state_loads_back_and_only_its_owner_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateFile::lock(dir.path()).unwrap();
        assert!(store.load().unwrap().is_none());
        store.save(&Store::encode(&state())).unwrap();
        let back = store.load().unwrap().unwrap();
        assert_eq!((back.token_hex, back.servers_port), ("ab".repeat(32), 7001));
        assert_eq!(back.members.len(), 3);
        let mode = std::fs::metadata(store.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join("coord.state.tmp").exists());
    }

    #[test]
    fn a_second_coordinator_on_the_same_state_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let _first = StateFile::lock(dir.path()).unwrap();
        let Err(e) = StateFile::lock(dir.path()) else { panic!("locked twice") };
        let message = e.to_string();
        assert!(message.contains(&format!("pid {}", std::process::id())), "{message}");
    }

    #[test]
    fn the_lock_goes_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        drop(StateFile::lock(dir.path()).unwrap());
        assert!(StateFile::lock(dir.path()).is_ok());
    }

    #[test]
    fn a_corrupt_state_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateFile::lock(dir.path()).unwrap();
        std::fs::write(store.path(), b"{\"format\": 1, \"token").unwrap();
        let message = store.load().unwrap_err().to_string();
        assert!(message.contains("not a coordinator state"), "{message}");
        assert!(message.contains("coord.state"), "{message}");
    }
}
