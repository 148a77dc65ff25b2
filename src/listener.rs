//! Listening ports: bind with a clear error, accept with a connection limit, one tracked
//! task per connection, and a raised file-descriptor limit.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::protocol::Role;

/// Connections the kernel queues for a port before this process accepts them. Tokio's
/// `TcpListener::bind` asks for 128: a burst of a few hundred connects (a benchmark's
/// clients, a flood) while the accept loop waits for a core overflows that queue, and the
/// kernel drops the SYNs beyond it, which the peers resend only after a second. So, as many
/// as a server serves clients (the kernel caps it at `net.core.somaxconn`, 4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `host:port` (address reuse on, as `TcpListener::bind` sets it, so that a restarted
/// process gets its old port back), listening with [`LISTEN_BACKLOG`]; the error names the
/// port and its role. Shared: a standby coordinator serves its ports one way, then, elected,
/// the same ports another way (see [`serve`]), with no moment in which they are closed.
pub async fn bind(host: &str, port: u16, what: &str) -> Result<Arc<TcpListener>> {
    let failed = |e: std::io::Error| {
        Error::Unavailable(format!("cannot listen on {host}:{port} ({what} port): {e}"))
    };
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await.map_err(failed)? {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() };
        let listening = socket.and_then(|socket| {
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            socket.listen(LISTEN_BACKLOG)
        });
        match listening {
            Ok(listener) => return Ok(Arc::new(listener)),
            Err(e) => last = Some(e),
        }
    }
    Err(failed(last.unwrap_or_else(|| std::io::Error::other("the name has no address"))))
}

/// Who may use a port: the roles it accepts in a hello, and the cluster token it requires
/// (empty: none).
pub struct Gate {
    pub accepts: Box<dyn Fn(Role) -> bool + Send + Sync>,
    pub token: Vec<u8>,
}

impl Gate {
    pub fn new(accepts: impl Fn(Role) -> bool + Send + Sync + 'static, token: &[u8]) -> Self {
        Gate { accepts: Box::new(accepts), token: token.to_vec() }
    }

    /// A clients port: open to every client, no token.
    pub fn clients() -> Self {
        Gate::new(|role| role == Role::Client, &[])
    }
}

/// Most connections waiting for their hello on a port that requires the token. Kept apart
/// from the limit on established connections, so that peers that never authenticate cannot
/// take the places of the ones that did; when it is full the oldest is dropped. (Ports open
/// to clients allow as many pending as established: there, a hello proves nothing.)
const MAX_PENDING_HELLOS: usize = 64;

/// Accepts connections on `listener` until cancelled. Each gets its own tracked task, which checks the
/// hello against `gate` and then runs `handle` with the peer's role, if fewer than
/// `max_connections` are established (otherwise it is closed). Errors are logged with the
/// peer's address.
pub fn serve<F, Fut>(
    listener: Arc<TcpListener>,
    what: &'static str,
    max_connections: usize,
    gate: Gate,
    tracker: &TaskTracker,
    cancel: CancellationToken,
    handle: F,
) where
    F: Fn(Connection, Role) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let inner = tracker.clone();
    // On ports that require the token, a full pool of unauthenticated peers makes room by
    // dropping its oldest member, so holding connections open cannot lock real peers out.
    let evict = !gate.token.is_empty();
    let max_pending = if evict { MAX_PENDING_HELLOS } else { max_connections };
    let pending = Arc::new(Pending::default());
    let established = Arc::new(Semaphore::new(max_connections));
    let gate = Arc::new(gate);
    let handle = Arc::new(handle);
    tracker.spawn(async move {
        for id in 0u64.. {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or similar: back off instead of spinning.
                    warn!(port = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Held while the task is spawned and registered, so that it cannot leave the
            // pool before it has entered it.
            let mut waiting = pending.lock();
            if waiting.len() >= max_pending {
                if !evict {
                    debug!(port = what, %peer, "connection refused: too many waiting for their hello");
                    continue;
                }
                if let Some((_, oldest)) = waiting.pop_front() {
                    debug!(port = what, "dropped the oldest connection waiting for its hello");
                    oldest.abort();
                }
            }
            let (gate, handle, established, cancel, pool) =
                (gate.clone(), handle.clone(), established.clone(), cancel.clone(), pending.clone());
            let task = inner.spawn(async move {
                let work = async {
                    let mut conn = Connection::new(stream)?;
                    let hello = conn.accept_hello(&gate.accepts, &gate.token).await;
                    pool.leave(id);
                    let role = hello?;
                    let Ok(_slot) = established.try_acquire_owned() else {
                        debug!(port = what, %peer, max_connections, "connection refused: port full");
                        return Ok(());
                    };
                    handle(conn, role).await
                };
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    result = work => if let Err(e) = result {
                        warn!(port = what, %peer, error = %e, "connection closed");
                    }
                }
            });
            waiting.push_back((id, task.abort_handle()));
        }
    });
}

/// Connections waiting for their hello, oldest first.
#[derive(Default)]
struct Pending(Mutex<VecDeque<(u64, AbortHandle)>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, AbortHandle)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection `id` finished its hello (either way): it can no longer be evicted.
    fn leave(&self, id: u64) {
        self.lock().retain(|(waiting, _)| *waiting != id);
    }
}

/// Raises this process's open-file limit to its hard limit, so that connection limits (not
/// the descriptor limit) decide how many peers are served. If it cannot, the limit stays as
/// it was: accepts then fail sooner, and back off.
pub fn raise_fd_limit() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}
