//! What the tests with servers on other hosts share: the cluster over ssh on network
//! namespace hosts (tests/remote.rs, tests/cut.rs), the load's runtime, the dumps' check.

use std::collections::HashMap;

use ftkv::routing::{secondary_of, slot_of};

use super::cluster::{Cluster, read_dump};
use super::netns::{Hosts, addr};

pub const N: u32 = 3;
pub const CLIENTS_HOST: usize = 4;

/// The coordinator's flags for servers over ssh on `hosts` (`-t 1`).
pub fn remote_flags(hosts: &Hosts) -> Vec<String> {
    remote_flags_with(hosts, &["-t", "1"])
}

/// The coordinator's flags for servers over ssh on `hosts`, then `more`.
pub fn remote_flags_with(hosts: &Hosts, more: &[&str]) -> Vec<String> {
    let remote_dir = hosts.remote_dir().to_str().unwrap().to_string();
    let mut flags: Vec<String> =
        ["--ssh-args", &hosts.ssh_args(), "--remote-dir", &remote_dir].map(String::from).to_vec();
    flags.extend(more.iter().map(|s| s.to_string()));
    flags
}

/// A 3-server cluster over ssh on `hosts`, the coordinator on host 0, clients on host 4.
pub fn remote_cluster(hosts: &Hosts) -> Cluster {
    remote_cluster_with(hosts, &["-t", "1"])
}

/// [`remote_cluster`] with coordinator flags `more` (which must set `-t`).
pub fn remote_cluster_with(hosts: &Hosts, more: &[&str]) -> Cluster {
    let flags = remote_flags_with(hosts, more);
    let extra: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::launch(&hosts.config(N as usize), &hosts.on(0), &extra);
    cluster.coord_host = addr(0);
    cluster.client_prefix = hosts.on(CLIENTS_HOST);
    cluster
}

/// The runtime the load runs on, inside the clients' host.
pub fn load_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Every final value is on its owner's primary dump and its secondary's dump (on the hosts).
pub fn assert_remote_dumps(hosts: &Hosts, finals: &HashMap<Vec<u8>, Option<Vec<u8>>>) {
    let dump =
        |id: u32, kind: &str| read_dump(&hosts.remote_dir().join(format!("server_{id}.{kind}")));
    let primaries: Vec<_> = (0..N).map(|id| dump(id, "primary")).collect();
    let secondaries: Vec<_> = (0..N).map(|id| dump(id, "secondary")).collect();
    for (key, value) in finals {
        let owner = slot_of(key, N);
        assert_eq!(primaries[owner as usize].get(key), value.as_ref(), "primary of {owner}");
        let copy = secondary_of(owner, N) as usize;
        assert_eq!(secondaries[copy].get(key), value.as_ref(), "secondary on {copy}");
    }
}
