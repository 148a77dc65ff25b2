//! `coord --metrics ADDR:PORT`: `GET /metrics` over a minimal HTTP/1.1 server, one request
//! per connection. Anyone may connect, so nothing here trusts the peer: the request head
//! must arrive within [`HEAD_DEADLINE`] and fit in [`MAX_HEAD`] bytes, at most
//! [`MAX_CONNECTIONS`] are served at once (more are closed at once), and anything but a
//! well-formed `GET /metrics` gets an error status and the connection closed. The event
//! loop never waits on a scrape: a scrape reads the hub, which the loop only writes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};

/// Longest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// Time a client has to take the answer.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 16;

/// Renders the metrics page, from the hub and the view, at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Why a scrape was not answered with the metrics.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("not reading the answer")]
    NotReading,
    #[error("{0}")]
    Write(std::io::Error),
    #[error("{0}")]
    Refused(&'static str),
}

/// Binds `addr` (so that a bad address fails the start) and serves it until `cancel`.
pub async fn serve(addr: &str, render: Render, cancel: CancellationToken) -> Result<u16> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Unavailable(format!("cannot listen on {addr} (metrics port): {e}")))?;
    let port = listener.local_addr()?.port();
    info!(addr, port, "metrics served at /metrics");
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, peer)) = accepted else { continue };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                debug!(%peer, "metrics: too many connections; closed");
                continue;
            };
            let render = render.clone();
            tokio::spawn(async move {
                if let Err(why) = answer(stream, &*render).await {
                    warn!(%peer, %why, "metrics: request refused");
                }
                drop(slot);
            });
        }
    });
    Ok(port)
}

/// Reads one request head and answers it.
async fn answer(
    mut stream: TcpStream,
    render: &(dyn Fn() -> String + Send + Sync),
) -> std::result::Result<(), Unanswered> {
    let head = tokio::time::timeout(HEAD_DEADLINE, read_head(&mut stream))
        .await
        .unwrap_or(Err(HeadError::Timeout));
    let (status, body) = match head.as_deref().map(route) {
        Ok(Route::Metrics) => ("200 OK", render()),
        Ok(Route::NotFound) => ("404 Not Found", "only /metrics is served\n".into()),
        Ok(Route::BadMethod) => ("405 Method Not Allowed", "only GET\n".into()),
        Ok(Route::Bad) => ("400 Bad Request", "bad request\n".into()),
        Err(HeadError::TooLarge) => ("431 Request Header Fields Too Large", String::new()),
        Err(HeadError::Timeout) => ("408 Request Timeout", String::new()),
        Err(HeadError::Closed) => return Ok(()),
    };
    let kind = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tokio::time::timeout(WRITE_DEADLINE, stream.write_all(reply.as_bytes()))
        .await
        .map_err(|_| Unanswered::NotReading)?
        .map_err(Unanswered::Write)?;
    let _ = stream.shutdown().await;
    // Read what the client still sends (an oversized head) for a moment before closing:
    // closing with unread bytes would reset the connection and could discard the answer.
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(stream.read(&mut sink).await, Ok(1..)) {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    match status.starts_with("200") {
        true => Ok(()),
        false => Err(Unanswered::Refused(status)),
    }
}

#[derive(Debug, PartialEq)]
enum HeadError {
    TooLarge,
    Timeout,
    Closed,
}

/// The request head (up to the blank line), at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::result::Result<String, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

#[derive(Debug, PartialEq)]
enum Route {
    Metrics,
    NotFound,
    BadMethod,
    Bad,
}

/// What the request line asks for.
fn route(head: &str) -> Route {
    let line = head.lines().next().unwrap_or_default();
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    if method != "GET" {
        return Route::BadMethod;
    }
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_well_formed_get_of_metrics_is_served() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route("\u{1}\u{2} garbage\r\n\r\n"), Route::Bad);
        assert_eq!(route("GET /metrics SMTP\r\n\r\n"), Route::Bad);
    }
}
