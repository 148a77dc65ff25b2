//! Listening ports: bind with a clear error, accept with a connection limit, one tracked
//! task per connection, and a raised file-descriptor limit.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::connection::Connection;
use crate::error::{Error, Result};

/// Binds `host:port`; the error names the port and its role.
pub async fn bind(host: &str, port: u16, what: &str) -> Result<TcpListener> {
    TcpListener::bind((host, port)).await.map_err(|e| {
        Error::Unavailable(format!("cannot listen on {host}:{port} ({what} port): {e}"))
    })
}

/// Accepts connections until cancelled, at most `max_connections` at a time (more are
/// closed at once), each handled in its own tracked task. Handler errors are logged with
/// the peer's address.
pub fn serve<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    max_connections: usize,
    tracker: &TaskTracker,
    cancel: CancellationToken,
    handle: F,
) where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let inner = tracker.clone();
    let slots = Arc::new(Semaphore::new(max_connections));
    tracker.spawn(async move {
        loop {
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
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!(port = what, %peer, max_connections, "connection refused: port full");
                continue;
            };
            let Ok(conn) = Connection::new(stream) else { continue };
            let work = handle(conn);
            let cancel = cancel.clone();
            inner.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    result = work => if let Err(e) = result {
                        warn!(port = what, %peer, error = %e, "connection closed");
                    }
                }
                drop(slot);
            });
        }
    });
}

/// Raises this process's open-file limit to its hard limit, so that connection limits (not
/// the descriptor limit) decide how many peers are served.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
