//! The set of a run that ended without a dumps manifest: every server gone while the
//! coordinator was (they wrote their dumps alone, after the orphan timeout), or an orderly
//! stop in which a server was already lost. Each server wrote its own manifest next to its
//! files (`server_<id>.manifest`); the coordinator's state of that run says which start of
//! each server held the newest copy of its keys. Together they make the set's manifest,
//! written as `dumps.manifest`, from which the next start restores as after any orderly
//! stop (`restore`): a server whose files cannot be trusted is marked incomplete, and its
//! keys come from its neighbour's copy, or the start is refused naming what is missing.

use std::path::Path;

use tracing::{info, warn};

use crate::coord::restore::RestoreError;
use crate::coord::state::{CoordState, Member};
use crate::manifest::{
    FORMAT, MANIFEST, Manifest, ServerDumps, ServerManifest, dump_name, server_manifest_name,
    utc_time, write_atomically,
};
use crate::protocol::DumpFile;
use crate::routing::{ClusterConfig, Replica};

/// Builds the manifest of the set the servers of `state` left in `dir`, writes it as
/// `dumps.manifest` (over any other: the servers' tables were newer than an older set), and
/// returns it.
pub fn gather(dir: &Path, state: &CoordState) -> Result<Manifest, RestoreError> {
    let manifest = gathered(dir, state)?;
    write_atomically(dir, MANIFEST, &manifest.encode()).map_err(|err| RestoreError::Io {
        what: format!("writing {}", dir.join(MANIFEST).display()),
        err,
    })?;
    Ok(manifest)
}

/// The manifest [`gather`] writes, not written.
pub fn gathered(dir: &Path, state: &CoordState) -> Result<Manifest, RestoreError> {
    let config = state.config.as_ref().expect("only a configured cluster left dumps");
    let (mut servers, mut times) = (Vec::new(), Vec::new());
    for member in &state.members {
        let found = read_server_manifest(dir, member.id)?;
        let verdict = found
            .ok_or(Unusable::NoDumps { id: member.id })
            .and_then(|found| judge(found, member, config, state.first_epoch));
        servers.push(match verdict {
            Ok(usable) => {
                info!(id = member.id, epoch = usable.epoch, "its own dumps are usable");
                times.push(usable.time);
                ServerDumps {
                    id: member.id,
                    complete: true,
                    why_incomplete: None,
                    primary: usable.primary,
                    secondary: usable.secondary,
                }
            }
            Err(why) => {
                warn!(id = member.id, %why, "its files are not used");
                unusable(member.id, why.to_string())
            }
        });
    }
    let time = times.into_iter().max().unwrap_or_else(|| utc_time(std::time::SystemTime::now()));
    let n = state.len();
    Ok(Manifest { format: FORMAT, n, epoch: config.epoch, time, servers, origin: None })
}

/// Server `id`'s manifest in `dir`, if it wrote one.
fn read_server_manifest(dir: &Path, id: u32) -> Result<Option<ServerManifest>, RestoreError> {
    let path = dir.join(server_manifest_name(id));
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(RestoreError::Io { what: format!("reading {}", path.display()), err });
        }
    };
    ServerManifest::decode(&bytes, id).map(Some).map_err(|why| RestoreError::Manifest { path, why })
}

/// Whether `found` describes the newest copy of `member`'s keys: written in this run
/// (`first_epoch` on), by the start of the server that the run's state names, up in the
/// run's last configuration, and complete by its own account.
fn judge(
    found: ServerManifest,
    member: &Member,
    config: &ClusterConfig,
    first_epoch: u64,
) -> Result<ServerManifest, Unusable> {
    let id = member.id;
    if found.epoch < first_epoch {
        return Err(Unusable::EarlierRun { id, epoch: found.epoch, first_epoch });
    }
    if found.incarnation != member.incarnation {
        let (found, named) = (found.incarnation, member.incarnation);
        return Err(Unusable::OtherStart { id, found, named });
    }
    let named = &config.servers[id as usize];
    if named.state != Replica::Up || named.incarnation != member.incarnation {
        return Err(Unusable::BeingRecovered { id });
    }
    if !found.complete {
        return Err(Unusable::Incomplete { id });
    }
    Ok(found)
}

/// Why a server's own dumps are not used.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("server {id} wrote no dumps of its own")]
    NoDumps { id: u32 },
    #[error("server_{id}.manifest is from an earlier run (epoch {epoch} < {first_epoch})")]
    EarlierRun { id: u32, epoch: u64, first_epoch: u64 },
    #[error(
        "server_{id}.manifest is from start {found} of server {id}, the cluster's state names \
         start {named}"
    )]
    OtherStart { id: u32, found: u64, named: u64 },
    #[error("server {id} was being recovered")]
    BeingRecovered { id: u32 },
    #[error("server {id} said its copy was incomplete")]
    Incomplete { id: u32 },
}

/// The entry of a server whose files are not used.
pub(super) fn unusable(id: u32, why: String) -> ServerDumps {
    let file = |kind| DumpFile { name: dump_name(id, kind), bytes: 0, keys: 0, md5: String::new() };
    ServerDumps {
        id,
        complete: false,
        why_incomplete: Some(why),
        primary: file("primary"),
        secondary: file("secondary"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Host, ServerSpec};

    /// Server `id` of three, at `incarnation`.
    fn member(id: u32, incarnation: u64) -> Member {
        let host = Host::Local("localhost".into());
        let spec = ServerSpec { host, client_port: 0, servers_port: 0, coord_port: 0 };
        let state = CoordState::new(&[spec.clone(), spec.clone(), spec], String::new());
        Member { incarnation, ..state.members[id as usize].clone() }
    }

    fn found(id: u32, incarnation: u64, epoch: u64, complete: bool) -> ServerManifest {
        let file =
            |kind| DumpFile { name: dump_name(id, kind), bytes: 1, keys: 1, md5: "x".into() };
        ServerManifest {
            format: FORMAT,
            id,
            incarnation,
            epoch,
            time: "t".into(),
            complete,
            primary: file("primary"),
            secondary: file("secondary"),
        }
    }

    /// Usable only from this run, from the start the state names, up, and complete.
    #[test]
    fn only_the_named_start_of_a_server_up_in_this_run_is_trusted() {
        let config = ClusterConfig::for_tests(3);
        let judged = |m: ServerManifest, inc| judge(m, &member(1, inc), &config, 5);
        assert!(judged(found(1, 0, 7, true), 0).is_ok());
        let earlier = judged(found(1, 0, 4, true), 0).unwrap_err().to_string();
        assert!(earlier.contains("earlier run"), "{earlier}");
        let older_start = judged(found(1, 0, 7, true), 1).unwrap_err().to_string();
        assert!(
            older_start.contains("start 0") && older_start.contains("start 1"),
            "{older_start}"
        );
        let incomplete = judged(found(1, 0, 7, false), 0).unwrap_err().to_string();
        assert!(incomplete.contains("incomplete"), "{incomplete}");
        let down = config.take_over(1).unwrap();
        let recovering =
            judge(found(1, 0, 7, true), &member(1, 0), &down, 5).unwrap_err().to_string();
        assert!(recovering.contains("being recovered"), "{recovering}");
    }
}
