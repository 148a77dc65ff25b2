//! What the coordinator knows about each server, and the views it publishes from that.

use crate::config::ServerSpec;
use crate::protocol::{BoundPorts, RecoveryStatus, ServerState, ServerStatus, StatusReport};
use crate::routing::{ClusterConfig, Replica, ServerAddr};

/// One server slot of the cluster.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: u32,
    pub spec: ServerSpec,
    pub state: ServerState,
    /// Known once the current incarnation reported `Started`.
    pub ports: Option<BoundPorts>,
    pub pid: u32,
    /// Bumped for every server started in this slot; reports from older ones are refused.
    pub incarnation: u64,
    /// The current incarnation reported `Started` and has not been lost since.
    pub live: bool,
}

impl Member {
    /// The current incarnation reported the ports it bound.
    pub fn started(&mut self, ports: BoundPorts, pid: u32) {
        self.ports = Some(ports);
        self.pid = pid;
        self.live = true;
    }

    pub fn addr(&self) -> ServerAddr {
        let ports = self.ports.unwrap_or(BoundPorts { client: 0, servers: 0, control: 0 });
        ServerAddr {
            id: self.id,
            host: self.spec.host.name().to_string(),
            client_port: ports.client,
            servers_port: ports.servers,
            incarnation: self.incarnation,
            state: Replica::Up,
        }
    }

    pub fn control_addr(&self) -> String {
        let port = self.ports.map_or(0, |p| p.control);
        format!("{}:{port}", self.spec.host.name())
    }
}

/// The whole cluster as the coordinator sees it.
#[derive(Debug, Clone)]
pub struct Topology {
    pub members: Vec<Member>,
    /// The published configuration; `None` until every server started.
    pub config: Option<ClusterConfig>,
    pub recovery: Option<RecoveryStatus>,
}

impl Topology {
    pub fn new(specs: &[ServerSpec]) -> Self {
        let members = specs
            .iter()
            .enumerate()
            .map(|(id, spec)| Member {
                id: id as u32,
                spec: spec.clone(),
                state: ServerState::Starting,
                ports: None,
                pid: 0,
                incarnation: 0,
                live: false,
            })
            .collect();
        Topology { members, config: None, recovery: None }
    }

    pub fn len(&self) -> u32 {
        self.members.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn epoch(&self) -> u64 {
        self.config.as_ref().map_or(0, |c| c.epoch)
    }

    /// The first configuration: every server serves its own keys.
    pub fn initial_config(&self) -> ClusterConfig {
        ClusterConfig::new(1, self.members.iter().map(Member::addr).collect())
    }

    pub fn status(&self) -> StatusReport {
        StatusReport {
            epoch: self.epoch(),
            servers: self
                .members
                .iter()
                .map(|m| ServerStatus {
                    id: m.id,
                    host: m.spec.host.name().to_string(),
                    client_port: m.ports.map_or(0, |p| p.client),
                    servers_port: m.ports.map_or(0, |p| p.servers),
                    coord_port: m.ports.map_or(0, |p| p.control),
                    pid: m.pid,
                    state: m.state,
                })
                .collect(),
            recovery: self.recovery,
        }
    }
}

/// The cluster table printed once all servers are up (and by `client status`).
pub fn format_table(report: &StatusReport) -> String {
    let mut out = format!(
        "{:<4}{:<18}{:>8}{:>9}{:>8}{:>9}  {}\n",
        "id", "host", "client", "servers", "coord", "pid", "state"
    );
    for s in &report.servers {
        let state = match report.recovery {
            Some(r) if r.server == s.id => format!("{} (step {})", s.state.as_str(), r.step),
            _ => s.state.as_str().to_string(),
        };
        out.push_str(&format!(
            "{:<4}{:<18}{:>8}{:>9}{:>8}{:>9}  {}\n",
            s.id, s.host, s.client_port, s.servers_port, s.coord_port, s.pid, state
        ));
    }
    out.push_str(&format!("epoch {}\n", report.epoch));
    out
}
