//! Shared test support: a real cluster, recorded client load, the history checker, and
//! test hosts in network namespaces.
#![allow(dead_code)]

pub mod cluster;
pub mod history;
pub mod load;
pub mod netns;
