//! Calls to etcd tried again: a standby waits for etcd as long as it takes, a leader only
//! for its authority's grace.

use std::time::Duration;

use tracing::warn;

use super::authority::Authority;
use super::step_down::step_down;
use crate::error::Result;

/// Pause before a call to etcd that failed is tried again.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// How a failed call to etcd is tried again (see [`retry`]).
#[derive(Clone, Copy)]
pub enum Retry<'a> {
    /// A standby waits for etcd as it waits for the leader: until it answers.
    Forever,
    /// A leader tries for its authority's grace at most, and only while the authority
    /// holds (see `Authority::ensure`); then it steps down (a call that keeps failing, the
    /// request's fault or etcd's, must not hold the cluster without a coordinator that acts).
    Leading(&'a Authority),
}

/// `call` until it succeeds, every [`RETRY_EVERY`]: etcd down, out of quorum, electing, or a
/// call sent to a member that is gone (etcd's client does that, and the call fails at once).
pub async fn retry<T, F, Fut>(what: &str, how: Retry<'_>, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let began = tokio::time::Instant::now();
    loop {
        match (call().await, how) {
            (Ok(value), _) => return value,
            (Err(e), Retry::Leading(authority)) if began.elapsed() >= authority.grace() => {
                step_down(&format!("{what} in etcd failed ({e})"))
            }
            (Err(e), Retry::Leading(authority)) => {
                warn!(error = %e, "{what} in etcd failed; trying again");
                authority.ensure().await;
            }
            (Err(e), Retry::Forever) => warn!(error = %e, "{what} in etcd failed; trying again"),
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}
