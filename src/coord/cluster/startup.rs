//! Starting the cluster: spawning every server and installing the first configuration (after
//! restoring the dumps of an orderly stop), or taking back the servers of a coordinator that
//! died (see `store`).

use super::*;
use crate::coord::ha::step_down::step_down;
use crate::coord::restore::SetData;
use crate::coord::restore::begin::Begin;
use crate::coord::servers::process;
use crate::coord::state::Member;
use crate::server::{ATTEMPT_LIMIT, GRACE_WITH_STANDBYS};

/// Longest a server may take to load its dumps (a big set takes seconds).
const LOAD_LIMIT: Duration = Duration::from_secs(120);

impl Cluster {
    /// Starts the cluster as `begin` decided: new (or restoring a set), or taken back.
    /// Elected, a take-back that fails leaves the cluster to the next leader rather than
    /// stopping it: the servers may well run, out of this coordinator's reach, and a
    /// stopped state would have the next leader start empty.
    pub async fn begin(
        &mut self,
        begin: Begin,
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) -> Result<()> {
        match begin {
            Begin::New(restore) => self.start(restore, events, internal).await,
            Begin::FromLogs => self.start_from_logs(events, internal).await,
            Begin::TakeBack => match self.readopt(events, internal).await {
                Err(e) if self.is_elected() && !matches!(e, Error::DoubleFault(_)) => {
                    step_down(&format!("taking the cluster back failed ({e})"))
                }
                done => done,
            },
        }
    }

    /// Spawns every server, waits for all to report, opens control links, installs the
    /// first configuration, writes the set to `restore` in, and then only publishes the
    /// configuration.
    pub async fn start(
        &mut self,
        restore: Option<Restore>,
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) -> Result<()> {
        let n = self.state.len();
        for id in 0..n {
            let started =
                self.processes.launcher.spawn(&self.state.members[id as usize], n).await?;
            self.adopt(id, 0, started);
        }
        self.await_reports(&[], events, internal).await?;
        for member in &self.state.members {
            let link =
                ControlLink::connect(member.id, &member.control_addr(), &self.shared).await?;
            self.links[member.id as usize] = Some(link);
        }
        let mut config = self.state.initial_config();
        config.restoring = restore.is_some();
        self.configure(&config).await?;
        if let Some(set) = restore {
            config = self.restore(set, config).await?;
        }
        self.open_to_clients(config);
        Ok(())
    }

    /// Writes an earlier run's set into the servers, configured with `filling` (which says
    /// that a restore is under way: no server writes dumps over the set meanwhile, and a
    /// coordinator killed now starts the restore again; see `begin`), then configures
    /// them to serve and returns that configuration, still unpublished: clients see all of
    /// the set or nothing, the simplest correct way, since a client reaches the servers
    /// only through the configuration, and it costs no new state in the servers. Then the
    /// set's manifests go ([`Restore::consume`]): the servers' tables are newer from now on.
    async fn restore(&mut self, set: Restore, filling: ClusterConfig) -> Result<ClusterConfig> {
        let (keys, began) = (set.keys(), Instant::now());
        info!(keys, time = %set.time, "{}", lines::RESTORING);
        println!("{} {keys} keys from {}", lines::RESTORING, set.origin);
        let (keys, bytes) = match set.data {
            SetData::InPlace(manifest) => self.load_in_place(&manifest).await?,
            SetData::Rebuilt { entries, bytes } => {
                let keys = entries.len() as u64;
                let coordinator = format!("127.0.0.1:{}", self.state.clients_port);
                restore::write_in(entries, filling.clone(), coordinator).await?;
                (keys, bytes)
            }
        };
        let serving = ClusterConfig { epoch: filling.epoch + 1, restoring: false, ..filling };
        self.configure(&serving).await?;
        Restore::consume(&set.dir)?;
        if let Some((aside, files)) = restore::set_aside_beyond(&set.dir, self.state.len())? {
            let n = self.state.len();
            let (count, aside) = (files.len(), aside.display());
            info!(?files, %aside, "files of servers beyond the new {n} moved aside");
            println!("moved {count} files of servers {n} and up (this cluster has {n}) to {aside}");
        }
        let took_ms = began.elapsed().as_millis() as u64;
        info!(keys, bytes, took_ms, time = %set.time, "{}", lines::RESTORED);
        println!("{} {keys} keys ({bytes} bytes) from {}", lines::RESTORED, set.origin);
        Ok(serving)
    }

    /// Has every server load its own files of `manifest` (`ControlRequest::Load`), all at
    /// once; returns the keys and bytes loaded (primary tables).
    async fn load_in_place(&self, manifest: &Manifest) -> Result<(u64, u64)> {
        let links: Vec<&ControlLink> = self.links.iter().flatten().collect();
        let calls = links.iter().map(|link| {
            let files = &manifest.servers[link.id() as usize];
            let (primary, secondary) = (files.primary.clone(), files.secondary.clone());
            link.call(ControlRequest::Load { n: manifest.n, primary, secondary }, LOAD_LIMIT)
        });
        let (mut keys, mut bytes) = (0, 0);
        for (link, answer) in links.iter().zip(join_all(calls).await) {
            let id = link.id();
            match answer {
                Ok(ControlResponse::Loaded { keys: k, bytes: b }) => {
                    (keys, bytes) = (keys + k, bytes + b)
                }
                Ok(ControlResponse::Failed(why)) => {
                    return Err(Error::Unavailable(format!(
                        "server {id} cannot load its dumps: {why}; nothing was changed (the \
                         set stays as it is; start with --fresh to set it aside)"
                    )));
                }
                other => {
                    return Err(Error::Unavailable(format!(
                        "server {id} loading its dumps: {other:?}"
                    )));
                }
            }
        }
        Ok((keys, bytes))
    }

    /// Installs the cluster's first configuration (after a start, or a restart of the
    /// coordinator) on every server with a link, and publishes it.
    async fn install_first(&mut self, config: ClusterConfig) -> Result<()> {
        self.configure(&config).await?;
        self.open_to_clients(config);
        Ok(())
    }

    /// Records `config` and installs it on every server with a link, without handing it to
    /// clients yet.
    pub(super) async fn configure(&mut self, config: &ClusterConfig) -> Result<()> {
        self.state.config = Some(config.clone());
        for id in (0..self.state.len()).filter(|&id| self.links[id as usize].is_some()) {
            self.state.members[id as usize].state = ServerState::Running;
        }
        self.persist();
        let links: Vec<ControlLink> = self.links.iter().flatten().cloned().collect();
        install(config, &[links]).await.map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// Publishes `config` and the status to clients.
    pub(super) fn open_to_clients(&mut self, config: ClusterConfig) {
        self.shared.view.send_modify(|view| view.config = Some(config));
        self.publish();
    }

    /// Takes back the servers of a coordinator that died: waits up to the heartbeat timeout
    /// for each to report again (with the incarnation the state names: no other is
    /// accepted), opens control links, and installs the state's configuration at a new
    /// epoch. Nothing is spawned or copied. One server that did not come back is lost (a
    /// single fault, recovered as usual); two are a double fault. A recovery that was under
    /// way is resumed from a safe point ([`Recovery::restart`]).
    pub async fn readopt(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) -> Result<()> {
        let recovering = self.state.recovery.as_ref().map(|r| r.failed);
        for member in &mut self.state.members {
            member.live = false;
        }
        let dir = self.processes.launcher.dump_dir.clone();
        if dir.join(MANIFEST).exists() {
            // The coordinator died right after a restore, before its set's manifests were
            // gone: the servers' tables are newer than the set.
            Restore::consume(&dir)?;
        }
        let newest = self.await_rejoin(events, internal, recovering).await?;
        self.open_links_back().await;
        let missing: Vec<u32> = (0..self.state.len())
            .filter(|&id| Some(id) != recovering && !self.state.members[id as usize].live)
            .collect();
        self.judge_take_back(&missing, recovering, newest)?;
        let config = self.state.config.clone().expect("only a configured cluster is taken back");
        // A replacement under way when the coordinator died is rolled back: kill it too.
        if let Some(a) = recovering.filter(|&a| self.state.members[a as usize].pid != 0) {
            self.processes.take_back(&self.state.members[a as usize]);
        }
        let epoch = config.epoch + 1;
        self.install_first(ClusterConfig { epoch, ..config }).await?;
        info!(epoch, servers = self.live_ids().len(), "{}", lines::TOOK_BACK);
        if let Some(&id) = missing.first() {
            self.lost(id, Loss::NotBack);
        }
        self.restart_recovery();
        Ok(())
    }

    /// Whether the servers that came back (all but `missing`, and `recovering`'s replacement)
    /// may be taken back: the state must be as new as they are, and at most one server may
    /// be missing (two are a double fault, or, elected after a leader that may only be
    /// paused or cut off, an error that leaves them to the next leader).
    fn judge_take_back(&self, missing: &[u32], recovering: Option<u32>, newest: u64) -> Result<()> {
        let epoch = self.state.epoch();
        if newest > epoch {
            return Err(Error::Unavailable(format!(
                "the state in {} is older than the cluster (epoch {epoch} < {newest}): it \
                 cannot be taken back safely",
                self.store.describe(),
            )));
        }
        if missing.len() + usize::from(recovering.is_some()) <= 1 {
            return Ok(());
        }
        let bin = &self.processes.launcher.server_bin;
        let members = &self.state.members;
        let surely = missing.iter().all(|&id| process::gone(&members[id as usize], bin));
        if self.store.is_elected() && !surely {
            return Err(Error::Unavailable(format!(
                "servers {missing:?} did not come back within {:?}",
                self.rejoin_wait()
            )));
        }
        let expected = self.state.len() - u32::from(recovering.is_some());
        Err(Error::DoubleFault(format!(
            "servers {missing:?} did not come back after the coordinator restarted ({}; \
             {expected} expected); move {} away to start a new cluster",
            lines::TWO_FAULTS,
            self.store.describe()
        )))
    }

    /// Waits until every server but `recovering` reported again, or the heartbeat timeout;
    /// returns the newest configuration epoch they reported.
    async fn await_rejoin(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
        recovering: Option<u32>,
    ) -> Result<u64> {
        let deadline = Instant::now() + self.rejoin_wait();
        let mut newest = 0;
        // A local server whose process is gone will not come back: not waited for.
        let server_bin = self.processes.launcher.server_bin.clone();
        let waiting = |state: &CoordState| {
            let may_come = |m: &&Member| !m.live && Some(m.id) != recovering;
            state.members.iter().filter(may_come).any(|m| !process::gone(m, &server_bin))
        };
        while waiting(&self.state) {
            let event = tokio::select! {
                event = events.recv() => event.ok_or(Error::Closed)?,
                _ = tokio::time::sleep_until(deadline) => break,
                // Nothing was spawned by this coordinator: no exits to hear of.
                Some(_) = internal.recv() => continue,
            };
            if let Event::Started { id, ports, pid, epoch, link, .. } = event {
                if Some(id) == recovering {
                    // The replacement under way: it is rolled back (and fenced) once the
                    // others are back, so it is not taken back with them (it was sent the
                    // configuration of the cluster it was never part of, and refused it).
                    continue;
                }
                self.state.members[id as usize].started(ports, pid, link);
                newest = newest.max(epoch);
                info!(id, ?ports, pid, epoch, "server re-attached");
            }
        }
        Ok(newest)
    }

    /// Opens control links to the servers that came back; one that cannot be reached any
    /// more (it died since it reported) counts as not back.
    async fn open_links_back(&mut self) {
        for id in self.live_ids() {
            let member = &self.state.members[id as usize];
            match ControlLink::connect(id, &member.control_addr(), &self.shared).await {
                Ok(link) => {
                    self.processes.take_back(member);
                    self.links[id as usize] = Some(link);
                }
                Err(e) => {
                    warn!(id, error = %e, "a server that came back cannot be reached");
                    self.state.members[id as usize].live = false;
                }
            }
        }
    }

    /// Whether this coordinator was elected through etcd.
    pub fn is_elected(&self) -> bool {
        self.store.is_elected()
    }

    /// How long a coordinator taking a cluster back waits for its servers. A restarted one
    /// follows a coordinator that died: its servers saw their links close and try again
    /// every 50 ms, so the heartbeat timeout is plenty. An elected one may follow a leader
    /// that is only paused or cut off, on whose silent links the servers wait out their
    /// lease and a grace before they turn to the standbys, then may spend an attempt on the
    /// silent leader again (a standby that does not know yet that it is gone names it) (see
    /// the server's `GRACE_WITH_STANDBYS` and `ATTEMPT_LIMIT`).
    fn rejoin_wait(&self) -> Duration {
        if !self.store.is_elected() {
            return self.timeout;
        }
        let lease = self.shared.liveness.lease;
        self.timeout + lease.wait() + GRACE_WITH_STANDBYS + 2 * ATTEMPT_LIMIT
    }

    fn live_ids(&self) -> Vec<u32> {
        self.state.live().collect()
    }

    /// Resumes a recovery that was under way when the previous coordinator died.
    fn restart_recovery(&mut self) {
        let Some(recovery) = &mut self.state.recovery else {
            return;
        };
        let actions = recovery.restart(Instant::now());
        self.copied = CopyStats::default();
        self.step_began = Instant::now();
        self.perform(actions);
        self.publish();
    }

    /// Waits until every server but `absent` reported `Started`, within [`STARTUP_LIMIT`].
    pub(super) async fn await_reports(
        &mut self,
        absent: &[u32],
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) -> Result<()> {
        let deadline = Instant::now() + STARTUP_LIMIT;
        while self.state.members.iter().any(|m| !m.live && !absent.contains(&m.id)) {
            let event = tokio::select! {
                event = events.recv() => event.ok_or(Error::Closed)?,
                _ = tokio::time::sleep_until(deadline) => {
                    let missing: Vec<u32> = self.state.members.iter().filter(|m| !m.live).map(|m| m.id).collect();
                    return Err(Error::Unavailable(format!("servers {missing:?} did not start within {STARTUP_LIMIT:?}; see their logs")));
                }
                Some(Internal::Exited { id, status, .. }) = internal.recv() => {
                    let log = self.processes.launcher.log_of(&self.state.members[id as usize]);
                    return Err(Error::Unavailable(format!("server {id} exited during start-up ({status}); see {log}")));
                }
            };
            match event {
                Event::Started { id, ports, pid, link, .. } => {
                    self.state.members[id as usize].started(ports, pid, link);
                    info!(id, ?ports, pid, "server started");
                }
                Event::ReportLost { id, why, .. } => {
                    return Err(Error::Unavailable(format!(
                        "server {id} lost during start-up: {why}"
                    )));
                }
                Event::Updated { .. } => {}
            }
        }
        Ok(())
    }
}
