//! The client library: fetches the configuration from the coordinator, routes each key to
//! the server that serves it, keeps one connection per server, and retries across
//! configuration changes until a deadline.

pub(crate) mod conns;
pub mod line;
pub mod repl;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::client::conns::ServerConns;
use crate::connection::Connection;
use crate::coordinators::CoordinatorList;
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
/// One call to a coordinator when others are listed (standbys, `coord --etcd`): a coordinator
/// answers in a millisecond or two, so one silent for this long is paused or cut off.
const STANDBY_ATTEMPT: Duration = Duration::from_millis(500);
/// Pause between attempts while the coordinator cannot be reached: it is restarting (or
/// down), and asking fifty times a second would not bring it back sooner.
const COORD_RETRY: Duration = Duration::from_millis(100);

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
    /// The owner could not store the write (its log refused it); nothing changed.
    #[error("not stored: {0}")]
    NotStored(String),
}

impl OpError {
    fn from_refusal(refusal: Refusal) -> Option<OpError> {
        match refusal {
            Refusal::KeyTooLarge { len, max } => Some(OpError::KeyTooLarge { len, max }),
            Refusal::ValueTooLarge { len, max } => Some(OpError::ValueTooLarge { len, max }),
            Refusal::EmptyKey => Some(OpError::EmptyKey),
            Refusal::NotStored(why) => Some(OpError::NotStored(why)),
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
    /// The coordinators' clients ports (several with standby coordinators), and which one
    /// is asked now.
    coordinators: CoordinatorList,
    timeout: Duration,
    config: Option<Arc<ClusterConfig>>,
    /// The cached configuration may be out of date (an attempt with it failed): ask the
    /// coordinator before the next attempt, and keep it if the coordinator is away.
    stale: bool,
    /// Why the last refresh fell back to the cached configuration (the coordinator is
    /// away), for the error an operation ends with.
    coord_trouble: Option<String>,
    coord_conn: Option<Connection>,
    servers: ServerConns,
}

impl Client {
    /// `coordinator` is `host:port` of the coordinator's clients port; with standby
    /// coordinators, each one's, comma-separated (a standby names the leader, asked next).
    pub fn new(coordinator: impl Into<String>, timeout: Duration) -> Self {
        let addrs = coordinator.into().split(',').map(|c| c.trim().to_string()).collect();
        Client {
            coordinators: CoordinatorList::new(addrs),
            timeout,
            config: None,
            stale: false,
            coord_trouble: None,
            coord_conn: None,
            servers: ServerConns::default(),
        }
    }

    /// A client that starts with `config` instead of asking the coordinator for it: the
    /// coordinator's own restore writes through it before it hands the configuration to
    /// anyone. When an attempt fails it asks `coordinator` as usual, which answers "still
    /// starting" while it restores, and goes on with `config`.
    pub fn with_config(
        coordinator: impl Into<String>,
        timeout: Duration,
        config: Arc<ClusterConfig>,
    ) -> Self {
        Client { config: Some(config), ..Client::new(coordinator, timeout) }
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
    /// timeouts, with a fresh configuration each time (or the one it has, every
    /// [`COORD_RETRY`], while the coordinator is away: see [`config`](Self::config)). A write whose request went out and
    /// whose answer was lost is not sent again: it may have been applied (its copy may even
    /// serve it after a failover), and applying it a second time, after another client's
    /// write to the same key, would bring an older value back (a GET would see the key go
    /// back in time). It ends as [`OpError::Unknown`] instead, which is what it is.
    pub async fn execute(&mut self, op: Op) -> Result<ClientResponse, OpError> {
        if let Err(refusal) = op.check_limits() {
            return Err(OpError::from_refusal(refusal).expect("size refusals are permanent"));
        }
        let deadline = Instant::now() + self.timeout;
        self.coord_trouble = None;
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
                    self.stale = true;
                    return Err(OpError::Unknown(e.to_string()));
                }
                Err(Attempt::Lost(e)) => e.to_string(),
            };
            self.stale = true;
            // The coordinator being away is the news; the server's refusal is the detail.
            let (last, backoff) = match &self.coord_trouble {
                Some(away) => (format!("{away}; {last}"), COORD_RETRY),
                None => (last, RETRY_BACKOFF),
            };
            debug!(error = %last, "retrying");
            if Instant::now() + backoff >= deadline {
                return Err(OpError::Unavailable(last));
            }
            tokio::time::sleep(backoff).await;
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

    /// Closes every connection, to the servers and to the coordinator: after an operation
    /// was abandoned midway (ctrl+c), an answer to it may still come on one of them, and
    /// would be taken for the answer to the next request.
    pub fn close_connections(&mut self) {
        self.servers = ServerConns::default();
        self.close_coordinator();
    }

    /// Closes the connection to the coordinator. The load generator's workers do after each
    /// refresh: thousands of them each keeping one open would fill the coordinator's clients
    /// port (1024 connections), and those it turned away would go on with an old
    /// configuration until their requests gave up.
    pub(crate) fn close_coordinator(&mut self) {
        self.coord_conn = None;
    }

    /// This client's connections to the servers, for the load generator's workers.
    pub(crate) fn servers(&mut self) -> &mut ServerConns {
        &mut self.servers
    }

    /// The cached configuration, or a fresh one from the coordinator if it was marked stale
    /// (or there is none). While the coordinator cannot be reached (restarting or down), a
    /// client that has a configuration keeps using it, after one try: routing with an old
    /// one is safe (servers check every request's epoch, and serve only under a lease), and
    /// the servers may well serve it (a restarted coordinator takes them back, same epoch).
    /// Without one, it tries every [`COORD_RETRY`] until `deadline`.
    pub async fn config(&mut self, deadline: Instant) -> Result<Arc<ClusterConfig>, Error> {
        let old = match &self.config {
            Some(config) if !self.stale => return Ok(config.clone()),
            old => old.clone(),
        };
        loop {
            let asked = match &old {
                Some(old) => match self.ask_once(&CoordRequest::GetConfig, deadline).await {
                    Err(CoordFailure::Other(e)) => return Err(e),
                    Err(away) => {
                        self.coord_trouble = Some(away.into_error(self.coordinator()).to_string());
                        return Ok(old.clone());
                    }
                    Ok(response) => response,
                },
                None => self.ask_coordinator(&CoordRequest::GetConfig, deadline).await?,
            };
            match asked {
                CoordResponse::Config(Some(config)) => {
                    config.validate()?;
                    let config = Arc::new(config);
                    self.config = Some(config.clone());
                    self.stale = false;
                    self.coord_trouble = None;
                    return Ok(config);
                }
                // A restarted coordinator still taking its servers back.
                CoordResponse::Config(None) if let Some(old) = &old => {
                    let starting =
                        format!("coordinator at {} is still starting", self.coordinator());
                    self.coord_trouble = Some(starting);
                    return Ok(old.clone());
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

    /// Marks the cached configuration stale and fetches a fresh one (the cached one while
    /// the coordinator cannot be reached: see [`config`](Self::config)).
    pub async fn refresh_config(&mut self, deadline: Instant) -> Result<Arc<ClusterConfig>, Error> {
        self.stale = true;
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

    /// A call to the coordinator, tried again every [`COORD_RETRY`] until `deadline` while
    /// the coordinator cannot be reached or does not answer: a restarting one is back within
    /// a few hundred milliseconds, and failing at once would turn its restart into errors.
    async fn ask_coordinator(
        &mut self,
        request: &CoordRequest,
        deadline: Instant,
    ) -> Result<CoordResponse, Error> {
        loop {
            let began = Instant::now();
            let away = match self.ask_once(request, deadline).await {
                Ok(response) => return Ok(response),
                Err(CoordFailure::Other(e)) => return Err(e),
                Err(away) => away,
            };
            let next = began + COORD_RETRY;
            if next.max(Instant::now()) >= deadline {
                return Err(away.into_error(self.coordinator()));
            }
            debug!(coordinator = %self.coordinator(), "coordinator unreachable; trying again");
            tokio::time::sleep_until(next).await;
        }
    }

    /// The coordinator asked now.
    fn coordinator(&self) -> &str {
        self.coordinators.current()
    }

    /// One call to the coordinator, connecting first if needed; bounded by `deadline` (and
    /// by one attempt's time), so that neither a slow connect nor a silent peer outlasts the
    /// operation. A standby's answer sends it to the leader at once; a coordinator that
    /// does not answer leaves the next call to the next one listed.
    async fn ask_once(
        &mut self,
        request: &CoordRequest,
        deadline: Instant,
    ) -> Result<CoordResponse, CoordFailure> {
        let mut redirected = false;
        loop {
            let asked = self.ask_current(request, deadline).await;
            match asked {
                Ok(CoordResponse::NotLeader { leader: Some(leader) }) if !redirected => {
                    self.coord_conn = None;
                    self.coordinators.redirect(&leader);
                    redirected = true;
                }
                Ok(CoordResponse::NotLeader { leader }) => {
                    let standby = self.coordinator().to_string();
                    self.next_coordinator();
                    let leads =
                        leader.map_or("no coordinator leads yet".into(), |l| format!("{l} leads"));
                    return Err(CoordFailure::Unreachable(Error::Unavailable(format!(
                        "{standby} stands by; {leads}"
                    ))));
                }
                Ok(response) => return Ok(response),
                Err(CoordFailure::Other(e)) => return Err(CoordFailure::Other(e)),
                Err(away) => {
                    self.next_coordinator();
                    return Err(away);
                }
            }
        }
    }

    /// The coordinator asked now did not answer as a leader: the next call asks the next.
    fn next_coordinator(&mut self) {
        self.coord_conn = None;
        let asked = self.coordinator().to_string();
        self.coordinators.failed(&asked);
    }

    /// One call to the coordinator asked now (see [`ask_once`](Self::ask_once)).
    async fn ask_current(
        &mut self,
        request: &CoordRequest,
        deadline: Instant,
    ) -> Result<CoordResponse, CoordFailure> {
        // With standbys to ask instead, a coordinator silent for a short attempt (paused or
        // cut off) is left sooner: the next one listed answers, or names the leader.
        let attempt = if self.coordinators.several() { STANDBY_ATTEMPT } else { ATTEMPT_TIMEOUT };
        let until = deadline.min(Instant::now() + attempt);
        let coordinator = self.coordinators.current();
        let conn = self.coord_conn.take();
        let asked = tokio::time::timeout_at(until, async move {
            let mut conn = match conn {
                Some(conn) => conn,
                None => Connection::connect(coordinator, &Hello::new(Role::Client, &[]))
                    .await
                    .map_err(CoordFailure::Unreachable)?,
            };
            let response = conn
                .call(request, attempt, "waiting for the coordinator")
                .await
                .map_err(CoordFailure::of_call)?;
            Ok::<_, CoordFailure>((conn, response))
        });
        let (conn, response) = asked.await.map_err(|_| CoordFailure::Silent)??;
        self.coord_conn = Some(conn);
        Ok(response)
    }
}

/// Why one call to the coordinator failed.
#[derive(Debug)]
enum CoordFailure {
    /// No connection, or it broke (refused, reset, closed): down or restarting.
    Unreachable(Error),
    /// Connected, but no answer in time (paused or overloaded).
    Silent,
    /// A wrong answer or a refused hello: trying again would not help.
    Other(Error),
}

impl CoordFailure {
    /// Classifies the failure of a call on an open connection.
    fn of_call(e: Error) -> Self {
        match e {
            Error::Io(_) | Error::Closed => CoordFailure::Unreachable(e),
            Error::Timeout(_) => CoordFailure::Silent,
            e => CoordFailure::Other(e),
        }
    }

    /// The error an operation ends with, naming the coordinator at `addr`.
    fn into_error(self, addr: &str) -> Error {
        match self {
            CoordFailure::Unreachable(e) => Error::Unavailable(format!(
                "coordinator at {addr} is unreachable (restarting or down): {e}"
            )),
            CoordFailure::Silent => {
                Error::Unavailable(format!("coordinator at {addr}: no answer in time"))
            }
            CoordFailure::Other(e) => e,
        }
    }
}
