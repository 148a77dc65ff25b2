//! Shared test support: a real cluster, recorded client load, the history checker, test
//! hosts in network namespaces, a real etcd, the kernel's socket queues, and ports held for
//! the processes a test starts.
#![allow(dead_code)]

pub mod cluster;
pub mod etcd;
pub mod history;
pub mod load;
pub mod netns;
pub mod ports;
pub mod remote;
pub mod set;
pub mod sockets;
pub mod standby;
pub mod tmux;
