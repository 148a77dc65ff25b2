//! Who owns a key: the MD5 rule, the ring of primaries and secondaries, and the
//! epoch-stamped configuration that the coordinator hands out.

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

/// The slot of a key among `n` servers: the 16-byte MD5 digest read as a big-endian u128,
/// modulo `n`. Slot `i` belongs to server `i` unless a recovery moved it.
pub fn slot_of(key: &[u8], n: u32) -> u32 {
    let digest: [u8; 16] = Md5::digest(key).into();
    (u128::from_be_bytes(digest) % u128::from(n)) as u32
}

/// The server that keeps the secondary copy of server `id`'s keys.
pub fn secondary_of(id: u32, n: u32) -> u32 {
    (id + 1) % n
}

/// The server whose keys server `id` keeps as secondary copies.
pub fn primary_of(id: u32, n: u32) -> u32 {
    (id + n - 1) % n
}

/// Whether a server holds a usable copy of its slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Replica {
    /// Serving, or holding secondary copies, normally.
    Up,
    /// Lost: its neighbours run without it (degraded mode).
    Down,
    /// A replacement being filled by its neighbours (recovery steps 2-4).
    Joining,
}

/// One server of the configuration: where it is, which start of it, and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerAddr {
    pub id: u32,
    /// Host name clients and peers connect to.
    pub host: String,
    pub client_port: u16,
    pub servers_port: u16,
    /// Which start of this id; replication from any other start is refused.
    pub incarnation: u64,
    pub state: Replica,
}

impl ServerAddr {
    pub fn client_addr(&self) -> String {
        format!("{}:{}", self.host, self.client_port)
    }

    pub fn servers_addr(&self) -> String {
        format!("{}:{}", self.host, self.servers_port)
    }
}

/// The cluster as the coordinator last published it. Every change bumps `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub epoch: u64,
    /// Indexed by server id.
    pub servers: Vec<ServerAddr>,
    /// `serving[slot]` is the id of the server that answers for that slot's keys: `slot`
    /// itself normally, its secondary while it is being recovered.
    pub serving: Vec<u32>,
    /// The servers are being filled from an earlier run's dumps (a planned restart): under
    /// this configuration no server writes dumps, since its tables hold part of the set at
    /// most and its files still hold all of it. Never published to clients. (Absent from a
    /// state file written before it: false.)
    #[serde(default)]
    pub restoring: bool,
    /// The start after a crash: every server streams its whole primary table to its
    /// secondary before the next configuration, since after a crash the two copies may
    /// differ in the writes that were never acknowledged (the owner's copy wins). Never
    /// published to clients.
    #[serde(default)]
    pub resync: bool,
}

impl ClusterConfig {
    /// A configuration in which every server serves its own slot.
    pub fn new(epoch: u64, servers: Vec<ServerAddr>) -> Self {
        let serving = (0..servers.len() as u32).collect();
        ClusterConfig { epoch, servers, serving, restoring: false, resync: false }
    }

    pub fn len(&self) -> u32 {
        self.servers.len() as u32
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn slot_of(&self, key: &[u8]) -> u32 {
        slot_of(key, self.len())
    }

    /// The server a client should send an operation on `key` to.
    pub fn server_for(&self, key: &[u8]) -> &ServerAddr {
        let serving = self.serving[self.slot_of(key) as usize];
        &self.servers[serving as usize]
    }

    /// Recovery step 0 (and a rollback to step 1): server `a` is down, its secondary serves
    /// its keys from its secondary table.
    pub fn take_over(&self, a: u32) -> Result<ClusterConfig, InvalidConfig> {
        self.change(a, Replica::Down, None)
    }

    /// Recovery step 2: `addr` (a new start of server `a`) joins; the secondary keeps
    /// serving a's keys while both neighbours fill it.
    pub fn join(&self, a: u32, addr: ServerAddr) -> Result<ClusterConfig, InvalidConfig> {
        if addr.id != a {
            return Err(InvalidConfig::WrongId(a as usize));
        }
        self.change(a, Replica::Joining, Some(addr))
    }

    /// Recovery step 5: a's keys go back from its secondary to the filled new start.
    pub fn hand_back(&self, a: u32) -> Result<ClusterConfig, InvalidConfig> {
        self.change(a, Replica::Up, None)
    }

    /// The next configuration (epoch + 1) with server `a` in `state`, serving its own slot
    /// when up and its secondary serving it otherwise; checked before it is returned.
    fn change(
        &self,
        a: u32,
        state: Replica,
        addr: Option<ServerAddr>,
    ) -> Result<ClusterConfig, InvalidConfig> {
        if a >= self.len() {
            return Err(InvalidConfig::ServingOutOfRange(a));
        }
        let mut next = self.clone();
        next.epoch += 1;
        let server = &mut next.servers[a as usize];
        if let Some(addr) = addr {
            *server = addr;
        }
        server.state = state;
        next.serving[a as usize] =
            if state == Replica::Up { a } else { secondary_of(a, self.len()) };
        next.validate()?;
        Ok(next)
    }

    /// Checks the shape, so that the indexing above cannot panic on a malformed message.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let n = self.servers.len();
        if n < 3 {
            return Err(InvalidConfig::TooFewServers(n));
        }
        if self.serving.len() != n {
            return Err(InvalidConfig::ServingLength { entries: self.serving.len(), servers: n });
        }
        if let Some(&bad) = self.serving.iter().find(|&&s| s as usize >= n) {
            return Err(InvalidConfig::ServingOutOfRange(bad));
        }
        if let Some((i, _)) = self.servers.iter().enumerate().find(|(i, s)| s.id as usize != *i) {
            return Err(InvalidConfig::WrongId(i));
        }
        for server in &self.servers {
            let serving = self.serving[server.id as usize];
            let allowed = match server.state {
                Replica::Up => serving == server.id,
                Replica::Down | Replica::Joining => serving == secondary_of(server.id, n as u32),
            };
            if !allowed {
                return Err(InvalidConfig::WrongServer {
                    slot: server.id,
                    serving,
                    state: server.state,
                });
            }
        }
        if self.servers.iter().filter(|s| s.state != Replica::Up).count() > 1 {
            return Err(InvalidConfig::TwoNotUp);
        }
        Ok(())
    }
}

#[cfg(test)]
impl ClusterConfig {
    /// `n` servers on host "h" (client ports 1000 + id, servers ports 2000 + id), epoch 1,
    /// every one serving its own slot.
    pub(crate) fn for_tests(n: u32) -> ClusterConfig {
        let servers = (0..n)
            .map(|id| ServerAddr {
                id,
                host: "h".into(),
                client_port: 1000 + id as u16,
                servers_port: 2000 + id as u16,
                incarnation: 0,
                state: Replica::Up,
            })
            .collect();
        ClusterConfig::new(1, servers)
    }
}

/// Why a configuration cannot be used: a coordinator never builds one (its changes are
/// checked), so a server or client that receives one refuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidConfig {
    #[error("{0} servers, at least 3 needed")]
    TooFewServers(usize),
    #[error("{entries} serving entries for {servers} servers")]
    ServingLength { entries: usize, servers: usize },
    #[error("serving entry {0} out of range")]
    ServingOutOfRange(u32),
    #[error("server at index {0} has the wrong id")]
    WrongId(usize),
    #[error("slot {slot} served by {serving} while {state:?}")]
    WrongServer { slot: u32, serving: u32, state: Replica },
    #[error("more than one server not up")]
    TwoNotUp,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration from a state file written before `restoring` existed reads as not
    /// restoring (an upgraded coordinator takes back what an older one left).
    #[test]
    fn a_configuration_without_restoring_reads_as_not_restoring() {
        let config = ClusterConfig::for_tests(3);
        let mut json = serde_json::to_value(&config).unwrap();
        json.as_object_mut().unwrap().remove("restoring");
        assert_eq!(serde_json::from_value::<ClusterConfig>(json).unwrap(), config);
    }

    /// Digests checked against `printf %s KEY | md5sum`.
    #[test]
    fn md5_owner_vectors() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        let empty = u128::from_str_radix("d41d8cd98f00b204e9800998ecf8427e", 16).unwrap();
        assert_eq!(slot_of(b"", 3), (empty % 3) as u32);
        // md5("hello") = 5d41402abc4b2a76b9719d911017c592
        let hello = u128::from_str_radix("5d41402abc4b2a76b9719d911017c592", 16).unwrap();
        assert_eq!(slot_of(b"hello", 3), (hello % 3) as u32);
        assert_eq!(slot_of(b"hello", 7), (hello % 7) as u32);
        // md5("key1") = c2add694bf942dc77b376592d9c862cd
        let key1 = u128::from_str_radix("c2add694bf942dc77b376592d9c862cd", 16).unwrap();
        assert_eq!(slot_of(b"key1", 5), (key1 % 5) as u32);
        assert_eq!(slot_of(b"hello", 3), 1);
        assert_eq!(slot_of(b"key1", 3), 0);
    }

    #[test]
    fn ring_neighbours() {
        assert_eq!(secondary_of(2, 3), 0);
        assert_eq!(primary_of(0, 3), 2);
        for n in 3..10 {
            for i in 0..n {
                assert_eq!(primary_of(secondary_of(i, n), n), i);
            }
        }
    }

    #[test]
    fn serving_redirects_a_slot() {
        let servers = (0..3)
            .map(|id| ServerAddr {
                id,
                host: "h".into(),
                client_port: 1000 + id as u16,
                servers_port: 0,
                incarnation: 0,
                state: Replica::Up,
            })
            .collect();
        let mut config = ClusterConfig::new(1, servers);
        assert_eq!(config.server_for(b"hello").id, 1);
        assert!(config.validate().is_ok());
        config.serving[1] = 2;
        assert!(config.validate().is_err(), "an Up server serves its own slot");
        config.servers[1].state = Replica::Down;
        assert_eq!(config.server_for(b"hello").id, 2);
        assert!(config.validate().is_ok());
        config.servers[0].state = Replica::Down;
        config.serving[0] = 1;
        assert!(config.validate().is_err(), "two servers down");
        config.serving[1] = 9;
        assert!(config.validate().is_err());
    }

    fn three() -> ClusterConfig {
        ClusterConfig::for_tests(3)
    }

    #[test]
    fn a_recovery_moves_a_slot_to_the_secondary_and_back() {
        let config = three();
        let down = config.take_over(2).unwrap();
        assert_eq!((down.epoch, down.serving.clone()), (2, vec![0, 1, 0]));
        assert_eq!(down.servers[2].state, Replica::Down);
        let fresh = ServerAddr { incarnation: 1, client_port: 3002, ..config.servers[2].clone() };
        let joining = down.join(2, fresh.clone()).unwrap();
        assert_eq!(joining.epoch, 3);
        assert_eq!(joining.serving, vec![0, 1, 0], "the secondary still serves");
        assert_eq!(joining.servers[2], ServerAddr { state: Replica::Joining, ..fresh });
        let back = joining.hand_back(2).unwrap();
        assert_eq!((back.epoch, back.serving.clone()), (4, vec![0, 1, 2]));
        assert_eq!(back.servers[2].incarnation, 1);
        assert_eq!(back.take_over(2).unwrap().serving, vec![0, 1, 0], "a rollback");
    }

    #[test]
    fn configuration_changes_are_checked() {
        let down = three().take_over(0).unwrap();
        assert_eq!(down.take_over(1), Err(InvalidConfig::TwoNotUp));
        assert_eq!(down.take_over(3), Err(InvalidConfig::ServingOutOfRange(3)));
        let other = down.servers[1].clone();
        assert_eq!(down.join(0, other), Err(InvalidConfig::WrongId(0)));
    }
}
