//! The coordinator's state: what it knows about each server, the configuration, and the
//! recovery in progress, as one plain value owned by its event loop. Everything else the
//! coordinator holds (processes, links, tasks) can be found again from this value.

use serde::{Deserialize, Serialize};

use crate::config::ServerSpec;
use crate::coord::recovery::Recovery;
use crate::protocol::{BoundPorts, RecoveryStatus, ServerState, ServerStatus, StatusReport};
use crate::routing::{ClusterConfig, Replica, ServerAddr};

/// One server slot of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub id: u32,
    pub spec: ServerSpec,
    pub state: ServerState,
    /// Known once the current incarnation reported `Started`.
    pub ports: Option<BoundPorts>,
    pub pid: u32,
    /// Bumped for every server started in this slot; reports from older ones are refused.
    /// Changed only through the coordinator's `fence`, which also fences the port handlers.
    pub incarnation: u64,
    /// The current incarnation reported `Started` and has not been lost since.
    pub live: bool,
    /// Its open report links (numbered anew by each coordinator): one, or more for a moment
    /// when it gave up on one and re-attached on another.
    #[serde(skip)]
    pub report_links: Vec<u64>,
}

impl Member {
    /// The current incarnation reported the ports it bound, on report link `link`.
    pub fn started(&mut self, ports: BoundPorts, pid: u32, link: u64) {
        self.ports = Some(ports);
        self.pid = pid;
        self.live = true;
        self.report_links = vec![link];
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

/// The whole cluster as the coordinator sees it: everything a restarted coordinator needs
/// to take it back (see `store`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CoordState {
    /// The cluster token, hex: servers and the coordinator authenticate each other with it.
    pub token_hex: String,
    /// The ports the coordinator bound: a restarted one binds the same, where the servers
    /// look for it.
    pub clients_port: u16,
    pub servers_port: u16,
    /// False once an orderly shutdown finished: nothing is left to take back.
    pub running: bool,
    pub members: Vec<Member>,
    /// The configuration decided last (published to clients once installed); `None` until
    /// every server started.
    pub config: Option<ClusterConfig>,
    pub recovery: Option<Recovery>,
    /// The epoch of the first configuration: past every epoch of the runs whose dumps this
    /// one restored, so that a server's manifest left from an earlier run is told from this
    /// run's by its epoch alone (see `gather`).
    #[serde(default = "first_epoch")]
    pub first_epoch: u64,
    /// The machine the cluster was started on (`/etc/machine-id`): where its `localhost`
    /// servers run. A coordinator elected on another machine cannot take those back.
    #[serde(default)]
    pub machine: Option<String>,
}

/// This machine's id (`/etc/machine-id`, or the kernel's boot id), if it has one.
pub fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/proc/sys/kernel/random/boot_id"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty())
}

fn first_epoch() -> u64 {
    1
}

impl CoordState {
    pub fn new(specs: &[ServerSpec], token_hex: String) -> Self {
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
                report_links: Vec::new(),
            })
            .collect();
        CoordState {
            token_hex,
            clients_port: 0,
            servers_port: 0,
            running: true,
            members,
            config: None,
            recovery: None,
            first_epoch: first_epoch(),
            machine: machine_id(),
        }
    }

    pub fn len(&self) -> u32 {
        self.members.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Ids of the servers whose current incarnation reported and was not lost since.
    pub fn live(&self) -> impl Iterator<Item = u32> + '_ {
        self.members.iter().filter(|m| m.live).map(|m| m.id)
    }

    pub fn epoch(&self) -> u64 {
        self.config.as_ref().map_or(0, |c| c.epoch)
    }

    /// The first configuration: every server serves its own keys.
    pub fn initial_config(&self) -> ClusterConfig {
        ClusterConfig::new(self.first_epoch, self.members.iter().map(Member::addr).collect())
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
            recovery: self
                .recovery
                .as_ref()
                .map(|r| RecoveryStatus { server: r.failed, step: r.step.number() }),
            cuts: Vec::new(),
            coordinators: None,
        }
    }
}

/// What the coordinator publishes to clients.
#[derive(Debug, Clone)]
pub struct View {
    pub config: Option<ClusterConfig>,
    pub status: StatusReport,
}
