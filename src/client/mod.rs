//! The client library: fetches the configuration from the coordinator, routes each key to
//! the server that serves it, keeps one connection per server, and retries across
//! configuration changes until a deadline.

pub(crate) mod conns;
pub mod line;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::client::conns::ServerConns;
use crate::connection::Connection;
use crate::error::Error;
use crate::protocol::{
    ClientRequestRef, ClientResponse, CoordRequest, CoordResponse, Hello, Op, Refusal, Role,
    StatusReport,
};
use crate::routing::ClusterConfig;

/// Default time an operation keeps retrying.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for one answer before the attempt counts as lost.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// Why an operation did not succeed. The Display strings are the reasons the `client`
/// program prints after `Operation #N failed with:`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("Key not found")]
    NotFound,
    #[error("Key too large ({len} bytes, at most {max})")]
    KeyTooLarge { len: usize, max: usize },
    #[error("Value too large ({len} bytes, at most {max})")]
    ValueTooLarge { len: usize, max: usize },
    #[error("Empty key")]
    EmptyKey,
    /// Nothing was applied and the service did not answer in time.
    #[error("Service unavailable ({0})")]
    Unavailable(String),
    /// A write was sent and no answer came: it may or may not have been applied.
    #[error("Outcome unknown ({0})")]
    Unknown(String),
    #[error("Server failure ({0})")]
    Server(String),
}

impl OpError {
    fn from_refusal(refusal: Refusal) -> Option<OpError> {
        match refusal {
            Refusal::KeyTooLarge { len, max } => Some(OpError::KeyTooLarge { len, max }),
            Refusal::ValueTooLarge { len, max } => Some(OpError::ValueTooLarge { len, max }),
            Refusal::EmptyKey => Some(OpError::EmptyKey),
            Refusal::WrongOwner { .. } | Refusal::Unavailable(_) => None,
        }
    }
}

/// A failed attempt, and whether the request may have reached a server.
enum Attempt {
    /// Nothing reached a server: safe to retry as if never tried.
    NotSent(Error),
    /// Sent, no answer: a write may have been applied.
    Lost(Error),
}

/// A connection to the service. Not shareable between tasks; make one per task.
pub struct Client {
    coordinator: String,
    timeout: Duration,
    config: Option<Arc<ClusterConfig>>,
    coord_conn: Option<Connection>,
    servers: ServerConns,
}

impl Client {
    /// `coordinator` is `host:port` of the coordinator's clients port.
    pub fn new(coordinator: impl Into<String>, timeout: Duration) -> Self {
        Client {
            coordinator: coordinator.into(),
            timeout,
            config: None,
            coord_conn: None,
            servers: ServerConns::default(),
        }
    }

    /// Stores `value` under `key` on both copies.
    pub async fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), OpError> {
        let op = Op::Put { key: key.to_vec(), value: value.to_vec() };
        self.execute(op).await.map(|_| ())
    }

    /// The value of `key`; `Ok(None)` if it does not exist.
    pub async fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, OpError> {
        match self.execute(Op::Get { key: key.to_vec() }).await? {
            ClientResponse::Value(value) => Ok(value),
            other => Err(OpError::Server(format!("unexpected answer {other:?}"))),
        }
    }

    /// Deletes `key`; `Ok(false)` if it did not exist.
    pub async fn del(&mut self, key: &[u8]) -> Result<bool, OpError> {
        match self.execute(Op::Del { key: key.to_vec() }).await? {
            ClientResponse::Deleted { existed } => Ok(existed),
            other => Err(OpError::Server(format!("unexpected answer {other:?}"))),
        }
    }

    /// Runs one operation, retrying until the deadline on refusals, refused connections and
    /// timeouts, with a fresh configuration each time. A write whose request went out and
    /// whose answer was lost is not sent again: it may have been applied (its copy may even
    /// serve it after a failover), and applying it a second time, after another client's
    /// write to the same key, would bring an older value back (a GET would see the key go
    /// back in time). It ends as [`OpError::Unknown`] instead, which is what it is.
    pub async fn execute(&mut self, op: Op) -> Result<ClientResponse, OpError> {
        if let Err(refusal) = op.check_limits() {
            return Err(OpError::from_refusal(refusal).expect("size refusals are permanent"));
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let last = match self.attempt(&op, deadline).await {
                Ok(ClientResponse::Refused(refusal)) => {
                    if let Some(permanent) = OpError::from_refusal(refusal.clone()) {
                        return Err(permanent);
                    }
                    refusal.to_string()
                }
                Ok(response) => return Ok(response),
                Err(Attempt::NotSent(e)) => e.to_string(),
                Err(Attempt::Lost(e)) if !matches!(op, Op::Get { .. }) => {
                    self.config = None;
                    return Err(OpError::Unknown(e.to_string()));
                }
                Err(Attempt::Lost(e)) => e.to_string(),
            };
            self.config = None;
            debug!(error = %last, "retrying");
            if Instant::now() + RETRY_BACKOFF >= deadline {
                return Err(OpError::Unavailable(last));
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
        }
    }

    async fn attempt(&mut self, op: &Op, deadline: Instant) -> Result<ClientResponse, Attempt> {
        let config = self.config(deadline).await.map_err(Attempt::NotSent)?;
        let server = config.server_for(op.key());
        self.servers.forget_if_unusable(server.id);
        let conn = self.servers.open(server).await.map_err(Attempt::NotSent)?;
        let request = ClientRequestRef { epoch: config.epoch, op };
        // A server that stopped reading (paused) must not hold a large request past the
        // operation's deadline; part of it may be out, so its outcome is unknown. (Only the
        // deadline: a large value on a slow link may take a while to send.)
        let sent = tokio::time::timeout_at(deadline, conn.send(&request)).await;
        let answer = match sent {
            Err(_) => Err(Attempt::Lost(Error::Timeout("sending the request"))),
            Ok(Err(e)) => Err(Attempt::NotSent(e)),
            Ok(Ok(())) => conn
                .reader
                .recv_within(
                    ATTEMPT_TIMEOUT.min(deadline.saturating_duration_since(Instant::now())),
                    "waiting for the server's answer",
                )
                .await
                .map_err(Attempt::Lost),
        };
        if answer.is_err() {
            // A connection that failed (or may still deliver a late answer) is not reused.
            self.servers.forget(server.id);
        }
        answer
    }

    /// This client's connections to the servers, for the load generator's workers.
    pub(crate) fn servers(&mut self) -> &mut ServerConns {
        &mut self.servers
    }

    /// The cached configuration, or a fresh one from the coordinator.
    pub async fn config(&mut self, deadline: Instant) -> Result<Arc<ClusterConfig>, Error> {
        if let Some(config) = &self.config {
            return Ok(config.clone());
        }
        loop {
            match self.ask_coordinator(&CoordRequest::GetConfig, deadline).await? {
                CoordResponse::Config(Some(config)) => {
                    config.validate()?;
                    let config = Arc::new(config);
                    self.config = Some(config.clone());
                    return Ok(config);
                }
                CoordResponse::Config(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                CoordResponse::Config(None) => {
                    return Err(Error::Unavailable("the cluster is still starting".into()));
                }
                other => return Err(Error::Protocol(format!("coordinator answered {other:?}"))),
            }
        }
    }

    /// Forgets the cached configuration and fetches a fresh one.
    pub async fn refresh_config(&mut self, deadline: Instant) -> Result<Arc<ClusterConfig>, Error> {
        self.config = None;
        self.config(deadline).await
    }

    /// The coordinator's view of the cluster.
    pub async fn status(&mut self) -> Result<StatusReport, Error> {
        let deadline = Instant::now() + self.timeout;
        match self.ask_coordinator(&CoordRequest::Status, deadline).await? {
            CoordResponse::Status(report) => Ok(report),
            other => Err(Error::Protocol(format!("coordinator answered {other:?}"))),
        }
    }

    /// One call to the coordinator, connecting first if needed; bounded by `deadline` (and
    /// by one attempt's time), so that neither a slow connect nor a silent peer outlasts the
    /// operation.
    async fn ask_coordinator(
        &mut self,
        request: &CoordRequest,
        deadline: Instant,
    ) -> Result<CoordResponse, Error> {
        let until = deadline.min(Instant::now() + ATTEMPT_TIMEOUT);
        let coordinator = &self.coordinator;
        let conn = self.coord_conn.take();
        let asked = tokio::time::timeout_at(until, async move {
            let mut conn = match conn {
                Some(conn) => conn,
                None => {
                    Connection::connect(coordinator, &Hello::new(Role::Client, &[])).await.map_err(
                        |e| Error::Unavailable(format!("coordinator at {coordinator}: {e}")),
                    )?
                }
            };
            let response =
                conn.call(request, ATTEMPT_TIMEOUT, "waiting for the coordinator").await?;
            Ok::<_, Error>((conn, response))
        });
        let no_answer = || {
            Error::Unavailable(format!("coordinator at {}: no answer in time", self.coordinator))
        };
        let (conn, response) = asked.await.map_err(|_| no_answer())??;
        self.coord_conn = Some(conn);
        Ok(response)
    }
}
