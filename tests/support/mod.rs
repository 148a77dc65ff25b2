//! Shared test support: a real cluster, recorded client load, and the history checker.
#![allow(dead_code)]

pub mod cluster;
pub mod history;
pub mod load;
