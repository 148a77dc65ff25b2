//! Test hosts as network namespaces with a real sshd each (tests/netns/hosts.sh), torn
//! down on drop even when the test fails. Needs root: `Hosts::up` returns `None` (and the
//! test skips with a message) otherwise.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netns/hosts.sh");

/// Address of host `i` (host 0 runs the coordinator).
pub fn addr(i: usize) -> String {
    format!("10.213.77.{}", 10 + i)
}

pub struct Hosts {
    pub prefix: String,
    pub dir: tempfile::TempDir,
}

impl Hosts {
    /// Hosts 0..=n under a prefix unique to this test.
    pub fn up(prefix: &str, n: usize) -> Option<Hosts> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: network namespaces and sshd need root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let hosts = Hosts { prefix: prefix.to_string(), dir };
        let status = Command::new("bash")
            .args([SCRIPT, "up", prefix, hosts.dir.path().to_str().unwrap(), &n.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "setting up test hosts failed");
        std::fs::create_dir_all(hosts.remote_dir()).unwrap();
        Some(hosts)
    }

    /// Name of host `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }

    /// `ip netns exec <ns>`: a command prefix that runs a program on host `i`.
    pub fn on(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }

    /// Where remote servers keep logs and dumps.
    pub fn remote_dir(&self) -> PathBuf {
        self.dir.path().join("remote")
    }

    /// The coordinator's ssh options for these hosts.
    pub fn ssh_args(&self) -> String {
        format!(
            "-i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.dir.path().join("client_key").display()
        )
    }

    /// A cluster file of `n` servers on hosts 1..=n, started over ssh as root.
    pub fn config(&self, n: usize) -> String {
        let mut text = format!("{n}\n");
        for i in 1..=n {
            text.push_str(&format!("root@{} 0 0 0\n", addr(i)));
        }
        text
    }

    fn script(&self, verb: &str, i: usize) {
        let status = Command::new("bash")
            .args([SCRIPT, verb, &self.prefix, &i.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "{verb} {i}");
    }

    /// Host `i`'s link down at the bridge: cut off from everything.
    pub fn cut(&self, i: usize) {
        self.script("cut", i);
    }

    pub fn heal(&self, i: usize) {
        self.script("heal", i);
    }

    /// nftables in host `i`: drop everything to and from host `peer` only.
    pub fn cut_between(&self, i: usize, peer: usize) {
        self.cut_one_way(i, peer, true, true);
    }

    /// nftables in host `i`: drop what comes from host `peer` (`incoming`), what goes to it
    /// (`outgoing`), or both. Removed by [`heal_between`](Self::heal_between).
    pub fn cut_one_way(&self, i: usize, peer: usize, incoming: bool, outgoing: bool) {
        let peer = addr(peer);
        let mut rules = String::from("table inet ftkv_cut { ");
        if incoming {
            rules += &format!(
                "chain input {{ type filter hook input priority 0; ip saddr {peer} drop; }}; "
            );
        }
        if outgoing {
            rules += &format!(
                "chain output {{ type filter hook output priority 0; ip daddr {peer} drop; }}; "
            );
        }
        rules += "}";
        let status = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), "nft", &rules])
            .status()
            .unwrap();
        assert!(status.success(), "nft rules in host {i}");
    }

    pub fn heal_between(&self, i: usize) {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.ns(i), "nft", "delete", "table", "inet", "ftkv_cut"])
            .status()
            .unwrap();
        assert!(status.success(), "nft delete in host {i}");
    }

    /// Every process of host `i` but its sshd listener: what a crash of the host kills
    /// (its servers, ssh sessions under way). The listener stays, standing for the host's
    /// ssh service up again after a reboot; a host that stays down is a partition
    /// ([`cut`](Self::cut)).
    pub fn processes(&self, i: usize) -> Vec<u32> {
        let sshd: Vec<u32> = ["pid", "launcher"]
            .iter()
            .filter_map(|kind| {
                let file = self.dir.path().join(format!("sshd_{i}.{kind}"));
                std::fs::read_to_string(file).ok()?.trim().parse().ok()
            })
            .collect();
        let out = Command::new("ip").args(["netns", "pids", &self.ns(i)]).output().unwrap();
        assert!(out.status.success(), "ip netns pids {}", self.ns(i));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .filter(|pid| !sshd.contains(pid))
            .collect()
    }

    /// The namespace a process runs in.
    pub fn namespace_of(pid: u32) -> String {
        let out =
            Command::new("ip").args(["netns", "identify", &pid.to_string()]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([SCRIPT, "down", &self.prefix, self.dir.path().to_str().unwrap()])
            .status();
    }
}

/// Runs `f` on a thread inside namespace `ns` (its sockets live there; threads it starts,
/// such as a runtime's workers, inherit it).
pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}");
        f()
    })
    .join()
    .expect("thread in namespace")
}
