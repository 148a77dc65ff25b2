//! Who may act as the cluster's coordinator, and for how long: the state file and its lock
//! or etcd (`store`, `etcd`, `retry`), the leader's `authority`, and `step_down` when it may
//! have lapsed.

pub mod authority;
pub mod etcd;
pub mod retry;
pub mod step_down;
pub mod store;
