//! Stepping down: a leader that surely no longer leads replaces its own process with a new
//! start of the same program (a standby), so that nothing of the old leader survives to act
//! late: a task waking after a pause, a timer already armed, an ssh child still starting or
//! killing a server. The servers it started run on in their own sessions.

use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use tracing::error;

use crate::lines;

/// Set once the leader began shutting the service down: a step-down then ends the process
/// instead of starting it again as a standby, which would forget that it was told to stop.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// The ports a coordinator that stepped down had bound, for its next start (`-c 0 -s 0`
/// would otherwise move them, away from where servers and clients know to look).
const PORTS_ENV: &str = "FTKV_COORD_PORTS";
static BOUND: OnceLock<(u16, u16)> = OnceLock::new();

/// The child processes (ssh, starting or killing a server) that must not outlive this
/// image: they would act for it after it stopped leading (`kill_on_drop` needs a drop,
/// which an exec never runs).
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The leader is shutting the service down (see [`STOPPING`]).
pub fn stopping() {
    STOPPING.store(true, Ordering::SeqCst);
}

/// The ports this coordinator bound, kept for a start after a step-down.
pub fn remember_ports(clients: u16, servers: u16) {
    let _ = BOUND.set((clients, servers));
}

/// The ports of the start before, if this one follows a step-down.
pub fn ports_before() -> Option<(u16, u16)> {
    let ports = std::env::var(PORTS_ENV).ok()?;
    let (clients, servers) = ports.split_once(',')?;
    Some((clients.parse().ok()?, servers.parse().ok()?))
}

/// Registers a child process in [`CHILDREN`] for as long as it is held.
pub struct KilledOnStepDown(Option<u32>);

impl KilledOnStepDown {
    pub fn new(pid: Option<u32>) -> Self {
        if let Some(pid) = pid {
            CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
        }
        KilledOnStepDown(pid)
    }
}

impl Drop for KilledOnStepDown {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).retain(|&p| p != pid);
        }
    }
}

/// SIGKILL to every registered child (see [`CHILDREN`]).
fn kill_children() {
    for &pid in CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Stops acting as this cluster's coordinator, at once and for good: this process becomes
/// a new start of the same program with the same arguments (same pid), a standby; or, if
/// it was shutting the service down, it exits (status 1).
pub fn step_down(why: &str) -> ! {
    kill_children();
    if STOPPING.load(Ordering::SeqCst) {
        let line = format!("{}: {why}; it was shutting down: exiting", lines::STEPPED_DOWN);
        println!("{line}");
        error!("{line}");
        std::process::exit(1);
    }
    let line = format!("{}: {why}; starting again as a standby", lines::STEPPED_DOWN);
    println!("{line}");
    error!("{line}");
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "coord".into());
    // /proc/self/exe: the program running now, even if `make all` renamed a new one over
    // its path.
    let mut again = std::process::Command::new("/proc/self/exe");
    again.arg0(argv0).args(args);
    if let Some((clients, servers)) = BOUND.get() {
        again.env(PORTS_ENV, format!("{clients},{servers}"));
    }
    let failed = again.exec();
    eprintln!("coord: cannot start again as a standby: {failed}");
    std::process::exit(3);
}
