//! Local server processes. Each is watched by a task that reports its exit at once: a
//! process known to be dead cannot serve, so its keys can move without waiting for its
//! lease to run out.

use std::time::Duration;

use tokio::process::Child;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server process this coordinator started.
pub struct Process {
    pub pid: Option<u32>,
    kill: Option<oneshot::Sender<()>>,
    watcher: JoinHandle<()>,
}

impl Process {
    /// Watches `child`; `on_exit` gets its exit status once it ended.
    pub fn watch(mut child: Child, on_exit: impl FnOnce(String) + Send + 'static) -> Self {
        let pid = child.id();
        let (kill, killed) = oneshot::channel::<()>();
        let watcher = tokio::spawn(async move {
            let status = tokio::select! {
                status = child.wait() => status,
                // Only an explicit kill: a dropped `Process` leaves its server running.
                Ok(()) = killed => {
                    let _ = child.start_kill();
                    child.wait().await
                }
            };
            on_exit(status.map_or_else(|e| e.to_string(), |s| s.to_string()));
        });
        Process { pid, kill: Some(kill), watcher }
    }

    /// Sends SIGKILL (the watcher reaps the process).
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }

    /// Waits up to `limit` for the process to exit, then kills it; true if it exited alone.
    pub async fn reap(mut self, limit: Duration) -> bool {
        if tokio::time::timeout(limit, &mut self.watcher).await.is_ok() {
            return true;
        }
        self.kill();
        let _ = self.watcher.await;
        false
    }
}
