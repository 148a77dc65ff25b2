//! The start after a crash of every process (a power cut, the OOM killer, a reboot): the
//! state names servers and none of them runs. Each server id is started again on its host,
//! loads its own append-only log (nothing crosses the network), and the cluster serves only
//! once every key is back on both copies:
//!
//! 1. every server of the last configuration that was up starts with `--from-log` (a new
//!    incarnation) and is told to load its log (`LoadLog`), which writes nothing: a start
//!    refused now (a damaged log) changes no file;
//! 2. a configuration with `resync` set: a server whose primary is up empties its secondary
//!    table (its primary's log holds the newer copy), and every owner streams its whole
//!    primary table to its secondary (a snapshot, as in recovery step 2), which logs what it
//!    receives before acknowledging it;
//! 3. once every such stream caught up, the next configuration (without `resync`) goes to
//!    the servers and to clients. A server that was down or being replaced at the crash is
//!    then recovered as usual, from its secondary's copy.
//!
//! A failure before step 3 kills the servers without dumps and leaves the state as it was,
//! so the next start tries again from the same logs.

use super::*;
use crate::coord::state::Member;
use crate::protocol::LogLoaded;
use crate::routing::{Replica, ServerAddr};

/// Longest a server may take to load its log (a big one takes seconds).
const LOAD_LIMIT: Duration = Duration::from_secs(120);
/// Longest the copies may take to be filled again from their owners.
const RESYNC_LIMIT: Duration = Duration::from_secs(300);

impl Cluster {
    /// Starts the servers of a crashed cluster from their logs (see the module's comment).
    pub async fn start_from_logs(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) -> Result<()> {
        self.loading_logs = true;
        // A recovery under way at the crash starts again from the beginning, after.
        self.state.recovery = None;
        let last = self.state.config.clone().expect("only a configured cluster crashed");
        let missing = not_up(&last);
        self.spawn_from_logs(&missing, events, internal).await?;
        let addrs = self.state.members.iter().map(Member::addr).collect();
        let config = config_after_crash(&last, addrs, &missing);
        let (keys, bytes) = self.load_logs().await?;
        let resync = ClusterConfig { epoch: config.epoch + 1, resync: true, ..config.clone() };
        self.configure(&resync).await?;
        self.await_resync(&resync, events, internal).await?;
        let serving = ClusterConfig { epoch: resync.epoch + 1, resync: false, ..resync };
        self.configure(&serving).await?;
        self.loading_logs = false;
        println!("{} {keys} keys ({bytes} bytes) from the servers' logs", lines::RESTORED);
        info!(keys, bytes, "{} from the logs", lines::RESTORED);
        self.open_to_clients(serving);
        if let Some(&id) = missing.first() {
            self.lost(id, Loss::NotBack);
        }
        Ok(())
    }

    /// Starts every server but `missing` again, each a new incarnation that keeps its log,
    /// and waits for them to report.
    async fn spawn_from_logs(
        &mut self,
        missing: &[u32],
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) -> Result<()> {
        let n = self.state.len();
        self.processes.launcher.from_log = true;
        for id in 0..n {
            let incarnation = self.state.members[id as usize].incarnation + 1;
            self.fence(id, incarnation);
            self.state.members[id as usize].live = false;
            if missing.contains(&id) {
                continue;
            }
            let started = self.processes.launcher.spawn(&self.state.members[id as usize], n).await;
            let started = started.inspect_err(|_| self.processes.launcher.from_log = false)?;
            self.adopt(id, incarnation, started);
        }
        self.processes.launcher.from_log = false;
        self.await_reports(missing, events, internal).await?;
        for member in self.state.members.iter().filter(|m| m.live) {
            let link =
                ControlLink::connect(member.id, &member.control_addr(), &self.shared).await?;
            self.links[member.id as usize] = Some(link);
        }
        Ok(())
    }

    /// Has every server started load its log, all at once; prints what each found. Returns
    /// the keys and bytes of the primary tables.
    async fn load_logs(&self) -> Result<(u64, u64)> {
        let links: Vec<&ControlLink> = self.links.iter().flatten().collect();
        let calls = links.iter().map(|link| link.call(ControlRequest::LoadLog, LOAD_LIMIT));
        let (mut keys, mut bytes) = (0, 0);
        for (link, answer) in links.iter().zip(join_all(calls).await) {
            let id = link.id();
            match answer {
                Ok(ControlResponse::LogLoaded(loaded)) => {
                    say_loaded(id, &loaded);
                    keys += loaded.primary_keys;
                    bytes += loaded.bytes;
                }
                Ok(ControlResponse::Failed(why)) => {
                    return Err(Error::Unavailable(format!(
                        "server {id} cannot start from its log: {why}; nothing was changed (the \
                         next start tries the logs again; --fresh starts empty)"
                    )));
                }
                other => {
                    return Err(Error::Unavailable(format!(
                        "server {id} loading its log: {other:?}"
                    )));
                }
            }
        }
        Ok((keys, bytes))
    }

    /// Waits until every owner that streams to an up secondary under `config` reported its
    /// snapshot acknowledged (`Updated`): from then on every key has both copies again.
    async fn await_resync(
        &mut self,
        config: &ClusterConfig,
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) -> Result<()> {
        let mut waiting = resyncing(config);
        let deadline = Instant::now() + RESYNC_LIMIT;
        while !waiting.is_empty() {
            tokio::select! {
                event = events.recv() => match event.ok_or(Error::Closed)? {
                    Event::Updated { id, epoch, copied, .. } if epoch == config.epoch => {
                        info!(id, entries = copied.entries, bytes = copied.bytes, "copy filled again");
                        waiting.retain(|&w| w != id);
                    }
                    other => info!(?other, "during the resync; ignored"),
                },
                Some(Internal::Exited { id, status, .. }) = internal.recv() => {
                    return Err(Error::Unavailable(format!(
                        "server {id} exited while the copies were filled again ({status})"
                    )));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Unavailable(format!(
                        "the copies of servers {waiting:?} were not filled again within \
                         {RESYNC_LIMIT:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The servers to recover after the start: down or being replaced at the crash.
fn not_up(last: &ClusterConfig) -> Vec<u32> {
    (0..last.len()).filter(|&id| last.servers[id as usize].state != Replica::Up).collect()
}

/// The configuration to start again with after a crash, at `last`'s epoch: the servers at
/// their new addresses, and those `missing` left down, their keys served by their
/// secondary, which holds their newest copy.
fn config_after_crash(
    last: &ClusterConfig,
    addrs: Vec<ServerAddr>,
    missing: &[u32],
) -> ClusterConfig {
    let mut config = ClusterConfig::new(last.epoch, addrs);
    for &id in missing {
        config.servers[id as usize].state = Replica::Down;
        config.serving[id as usize] = crate::routing::secondary_of(id, last.len());
    }
    config
}

/// The servers whose own stream refills a copy under `config`: those that serve their own
/// keys, with an up secondary.
fn resyncing(config: &ClusterConfig) -> Vec<u32> {
    let n = config.len();
    (0..n)
        .filter(|&id| config.serving[id as usize] == id)
        .filter(|&id| {
            config.servers[crate::routing::secondary_of(id, n) as usize].state == Replica::Up
        })
        .collect()
}

/// `server 1: 68 keys and 70 copies (2048 bytes) from /dir/server_1.aof; a torn last
/// record cut at offset 4096 (17 bytes)`, on standard output and in the log.
fn say_loaded(id: u32, loaded: &LogLoaded) {
    let LogLoaded { file, primary_keys, secondary_keys, bytes, torn, .. } = loaded;
    let mut line = format!(
        "server {id}: {primary_keys} keys and {secondary_keys} copies ({bytes} bytes) from {file}"
    );
    if let Some((offset, cut)) = torn {
        line += &format!("; {} at offset {offset} ({cut} bytes)", lines::TORN_TAIL_CUT);
        warn!("{line}");
    } else {
        info!("{line}");
    }
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_down_at_the_crash_stays_down_and_every_other_owner_refills_its_copy() {
        let up = ClusterConfig::for_tests(3);
        let missing = not_up(&up);
        assert!(missing.is_empty());
        let config = config_after_crash(&up, up.servers.clone(), &missing);
        assert_eq!(resyncing(&ClusterConfig { resync: true, ..config }), [0, 1, 2]);

        let down = up.take_over(1).unwrap();
        let missing = not_up(&down);
        assert_eq!(missing, [1]);
        let config = config_after_crash(&down, up.servers.clone(), &missing);
        assert_eq!((config.serving.clone(), config.epoch), (vec![0, 2, 2], down.epoch));
        // 0 streams to 1, which is down (degraded); 2 serves 1's keys and its own.
        assert_eq!(resyncing(&config), [2]);
    }
}
