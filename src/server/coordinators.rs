//! Where a server looks for its coordinator: the addresses it was started with, replaced by
//! the list each lease answer carries (every coordinator of the cluster, leader first, with
//! standby coordinators). After losing its coordinator a server tries them in turn; a
//! standby's answer names the leader, tried next.

use std::sync::Mutex;

/// The coordinators' servers ports (`host:port`), and which to try next.
pub struct Coordinators(Mutex<Tries>);

struct Tries {
    addrs: Vec<String>,
    next: usize,
}

impl Coordinators {
    /// `addrs` must not be empty (the server's flags require one).
    pub fn new(addrs: Vec<String>) -> Self {
        assert!(!addrs.is_empty(), "a server needs a coordinator address");
        Coordinators(Mutex::new(Tries { addrs, next: 0 }))
    }

    fn tries(&self) -> std::sync::MutexGuard<'_, Tries> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether there are standbys to turn to.
    pub fn several(&self) -> bool {
        self.tries().addrs.len() > 1
    }

    /// The address to try now.
    pub fn current(&self) -> String {
        let tries = self.tries();
        tries.addrs[tries.next].clone()
    }

    /// `addr` did not answer as a leader: the next one is tried after it.
    pub fn failed(&self, addr: &str) {
        let mut tries = self.tries();
        if tries.addrs[tries.next] == addr {
            tries.next = (tries.next + 1) % tries.addrs.len();
        }
    }

    /// A standby named `leader`: it is tried next.
    pub fn redirect(&self, leader: &str) {
        let mut tries = self.tries();
        let at = match tries.addrs.iter().position(|a| a == leader) {
            Some(at) => at,
            None => {
                tries.addrs.push(leader.to_string());
                tries.addrs.len() - 1
            }
        };
        tries.next = at;
    }

    /// The leader listed every coordinator, itself first (an empty list changes nothing).
    pub fn learn(&self, addrs: &[String]) {
        let mut tries = self.tries();
        if !addrs.is_empty() && tries.addrs != addrs {
            tries.addrs = addrs.to_vec();
            tries.next = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(addrs: &[&str]) -> Vec<String> {
        addrs.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn tries_each_in_turn_follows_a_redirect_and_learns_the_leaders_list() {
        let coordinators = Coordinators::new(list(&["a:1", "b:2"]));
        assert_eq!(coordinators.current(), "a:1");
        coordinators.failed("a:1");
        assert_eq!(coordinators.current(), "b:2");
        coordinators.failed("a:1");
        assert_eq!(coordinators.current(), "b:2", "a late failure of another moves nothing");
        coordinators.failed("b:2");
        assert_eq!(coordinators.current(), "a:1", "round again");
        coordinators.redirect("c:3");
        assert_eq!(coordinators.current(), "c:3", "a leader not listed yet is added");
        coordinators.learn(&list(&["b:2", "a:1", "c:3"]));
        assert_eq!(coordinators.current(), "b:2", "the leader first");
        coordinators.learn(&[]);
        assert_eq!(coordinators.current(), "b:2");
    }
}
