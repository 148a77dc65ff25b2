//! Where clients and servers look for the coordinator: the addresses they were given (with
//! standby coordinators, each one's; a server's are then replaced by the list each lease
//! answer carries, leader first). One that fails leaves the next try to the next address;
//! a standby's answer names the leader, tried next. The server shares one behind a lock
//! (`server::control`); a client owns its own.

use std::sync::Mutex;

/// Coordinator addresses (`host:port`), and which to try next.
#[derive(Debug, Clone)]
pub struct CoordinatorList {
    addrs: Vec<String>,
    next: usize,
}

impl CoordinatorList {
    /// `addrs` must not be empty (the programs' flags require one).
    pub fn new(addrs: Vec<String>) -> Self {
        assert!(!addrs.is_empty(), "a coordinator address is needed");
        CoordinatorList { addrs, next: 0 }
    }

    /// Whether there are standbys to turn to.
    pub fn several(&self) -> bool {
        self.addrs.len() > 1
    }

    /// The address to try now.
    pub fn current(&self) -> &str {
        &self.addrs[self.next]
    }

    /// `addr` did not answer as a leader: the next one is tried after it (a late failure of
    /// an address no longer current moves nothing).
    pub fn failed(&mut self, addr: &str) {
        if self.addrs[self.next] == addr {
            self.next = (self.next + 1) % self.addrs.len();
        }
    }

    /// A standby named `leader`: it is tried next (added if it was not listed).
    pub fn redirect(&mut self, leader: &str) {
        self.next = match self.addrs.iter().position(|a| a == leader) {
            Some(at) => at,
            None => {
                self.addrs.push(leader.to_string());
                self.addrs.len() - 1
            }
        };
    }

    /// The leader listed every coordinator, itself first (an empty list changes nothing).
    /// Whether the list changed.
    pub fn learn(&mut self, addrs: &[String]) -> bool {
        let changed = !addrs.is_empty() && self.addrs != addrs;
        if changed {
            self.addrs = addrs.to_vec();
            self.next = 0;
        }
        changed
    }
}

/// A [`CoordinatorList`] shared by a server's report link and its re-attach attempts.
pub struct Coordinators(Mutex<CoordinatorList>);

impl Coordinators {
    pub fn new(addrs: Vec<String>) -> Self {
        Coordinators(Mutex::new(CoordinatorList::new(addrs)))
    }

    fn tries(&self) -> std::sync::MutexGuard<'_, CoordinatorList> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn several(&self) -> bool {
        self.tries().several()
    }

    pub fn current(&self) -> String {
        self.tries().current().to_string()
    }

    pub fn failed(&self, addr: &str) {
        self.tries().failed(addr)
    }

    pub fn redirect(&self, leader: &str) {
        self.tries().redirect(leader)
    }

    pub fn learn(&self, addrs: &[String]) -> bool {
        self.tries().learn(addrs)
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
        let mut coordinators = CoordinatorList::new(list(&["a:1", "b:2"]));
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
