//! Starting the cluster: spawning every server and installing the first configuration (after
//! restoring the dumps of an orderly stop), or taking back the servers of a coordinator that
//! died (see `store`).

use super::*;

impl Cluster {
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
        self.await_reports(events, internal).await?;
        for member in &self.state.members {
            let link =
                ControlLink::connect(member.id, &member.control_addr(), &self.shared.token).await?;
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
        let (keys, bytes, began) = (set.entries.len(), set.bytes, Instant::now());
        info!(keys, bytes, time = %set.time, "{}", lines::RESTORING);
        println!("{} {keys} keys ({bytes} bytes) from the dumps of {}", lines::RESTORING, set.time);
        let coordinator = format!("127.0.0.1:{}", self.state.clients_port);
        restore::write_in(set.entries, filling.clone(), coordinator).await?;
        let serving = ClusterConfig { epoch: filling.epoch + 1, restoring: false, ..filling };
        self.configure(&serving).await?;
        Restore::consume(&set.dir)?;
        let took_ms = began.elapsed().as_millis() as u64;
        info!(keys, bytes, took_ms, time = %set.time, "{}", lines::RESTORED);
        println!("{} {keys} keys ({bytes} bytes) from the dumps of {}", lines::RESTORED, set.time);
        Ok(serving)
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
    async fn configure(&mut self, config: &ClusterConfig) -> Result<()> {
        self.state.config = Some(config.clone());
        for id in (0..self.state.len()).filter(|&id| self.links[id as usize].is_some()) {
            self.state.members[id as usize].state = ServerState::Running;
        }
        self.persist();
        let links: Vec<ControlLink> = self.links.iter().flatten().cloned().collect();
        install(config, &[links]).await.map_err(Error::Unavailable)
    }

    /// Publishes `config` and the status to clients.
    fn open_to_clients(&mut self, config: ClusterConfig) {
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
        let expected = self.state.len() - u32::from(recovering.is_some());
        let newest = self.await_rejoin(events, internal, recovering).await?;
        self.open_links_back().await;
        let missing: Vec<u32> = (0..self.state.len())
            .filter(|&id| Some(id) != recovering && !self.state.members[id as usize].live)
            .collect();
        let config = self.state.config.clone().expect("only a configured cluster is taken back");
        if newest > config.epoch {
            return Err(Error::Unavailable(format!(
                "the state in {} is older than the cluster (epoch {} < {newest}): it cannot be \
                 taken back safely",
                self.store.path().display(),
                config.epoch
            )));
        }
        if missing.len() + usize::from(recovering.is_some()) > 1 {
            return Err(Error::Unavailable(format!(
                "servers {missing:?} did not come back after the coordinator restarted ({}; \
                 {expected} expected); move {} away to start a new cluster",
                lines::TWO_FAULTS,
                self.store.path().display()
            )));
        }
        // A replacement under way when the coordinator died is rolled back: kill it too.
        if let Some(a) = recovering.filter(|&a| self.state.members[a as usize].pid != 0) {
            self.processes.take_back(&self.state.members[a as usize]);
        }
        let epoch = config.epoch + 1;
        self.install_first(ClusterConfig { epoch, ..config }).await?;
        info!(epoch, servers = self.live_ids().len(), "{}", lines::TOOK_BACK);
        if let Some(&id) = missing.first() {
            self.lost(id, "it did not come back after the coordinator restarted".into(), false);
        }
        self.restart_recovery();
        Ok(())
    }

    /// Waits until every server but `recovering` reported again, or the heartbeat timeout;
    /// returns the newest configuration epoch they reported.
    async fn await_rejoin(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
        recovering: Option<u32>,
    ) -> Result<u64> {
        let deadline = Instant::now() + self.timeout;
        let mut newest = 0;
        let waiting =
            |state: &CoordState| state.members.iter().any(|m| !m.live && Some(m.id) != recovering);
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
            match ControlLink::connect(id, &member.control_addr(), &self.shared.token).await {
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

    /// Waits until every server reported `Started`, within [`STARTUP_LIMIT`].
    async fn await_reports(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        internal: &mut mpsc::UnboundedReceiver<Internal>,
    ) -> Result<()> {
        let deadline = Instant::now() + STARTUP_LIMIT;
        while self.state.members.iter().any(|m| !m.live) {
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
