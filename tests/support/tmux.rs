//! A real terminal for tests: one program in a tmux session of its own (its own server,
//! its socket in a temporary directory; 200x50), driven with `send-keys` and
//! `paste-buffer`, read with `capture-pane`. Waits poll the screen until a text appears or a
//! deadline passes. The tmux server is killed on drop.
//!
//! tmux is installed by scripts/test-deps.sh, as root. Without it a test fails when run as
//! root (CI: a missing install step must not pass as a skip) and skips with a message
//! otherwise, as the tests that need root do.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// What the shell around the program prints before its exit status (and `]` after).
const EXITED: &str = "[exited with ";
/// The one session of each test's tmux server.
const SESSION: &str = "ftkv";
/// How long a wait for the screen lasts before the test fails.
const WAIT: Duration = Duration::from_secs(15);

pub struct Tmux {
    /// Holds the server's socket, so that none is left behind (tmux leaves its socket file
    /// when killed).
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Runs `command` (a shell command line) on a new terminal; the pane stays after it
    /// exits, so that its last screen can be read, and a shell around it prints its exit
    /// status there (tmux left some programs unreaped, a zombie with no status to show,
    /// for seconds). The shell traps SIGINT, which a ctrl+c sends it too, so that it waits
    /// for the program whatever the program does with its own. `None`: no tmux, not root.
    pub fn start(command: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            // SAFETY: geteuid(2) has no preconditions.
            assert!(unsafe { libc::geteuid() } != 0, "tmux is missing: scripts/test-deps.sh");
            eprintln!("skipped: tmux is not installed (scripts/test-deps.sh installs it as root)");
            return None;
        }
        let tmux = Tmux { dir: tempfile::tempdir().unwrap() };
        let shell = format!("trap : INT; {command}; echo \"{EXITED}$?]\"");
        let session = ["new-session", "-d", "-s", SESSION, "-x", "200", "-y", "50", &shell];
        let keep = ["set-option", "-g", "remain-on-exit", "on"];
        let started = tmux.run(&[&["-f", "/dev/null"][..], &session, &[";"], &keep].concat());
        assert!(started.status.success(), "tmux: {}", String::from_utf8_lossy(&started.stderr));
        Some(tmux)
    }

    fn run(&self, args: &[&str]) -> Output {
        // Not the tmux the tests may run in: its variable would pick the default target.
        let mut tmux = Command::new("tmux");
        tmux.env_remove("TMUX").arg("-S").arg(self.dir.path().join("socket")).args(args);
        tmux.output().expect("run tmux")
    }

    /// `send-keys`: each argument is a key name (`Enter`, `Up`, `C-c`) or literal text.
    pub fn keys(&self, keys: &[&str]) {
        let out = self.run(&[&["send-keys", "-t", SESSION][..], keys].concat());
        assert!(out.status.success(), "send-keys: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Pastes `text` as a terminal does: with bracketed-paste markers around it when the
    /// program asked for them (`paste-buffer -p`), newlines sent as carriage returns.
    pub fn paste(&self, text: &str) {
        assert!(self.run(&["set-buffer", "-b", "test", text]).status.success());
        let out = self.run(&["paste-buffer", "-p", "-d", "-b", "test", "-t", SESSION]);
        assert!(out.status.success(), "paste-buffer: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The screen and its scrollback, as text.
    pub fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", SESSION]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `cond` holds of the screen; returns it. Fails naming `what`.
    pub fn wait_until(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if cond(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "never saw {what} on the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `text` is on the screen `count` times; returns the screen.
    pub fn wait_for_count(&self, text: &str, count: usize) -> String {
        let what = format!("{count} x {text:?}");
        self.wait_until(&what, |screen| screen.matches(text).count() >= count)
    }

    /// Waits until `text` is on the screen; returns the screen.
    pub fn wait_for(&self, text: &str) -> String {
        self.wait_for_count(text, 1)
    }

    /// Waits until the program has exited; returns its exit status.
    pub fn wait_exit(&self) -> i32 {
        let screen = self.wait_for(EXITED);
        let (_, rest) = screen.rsplit_once(EXITED).unwrap();
        let status = rest.split_once(']').map(|(status, _)| status);
        status.and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("exit status:\n{screen}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}
