//! The server's side of the control path: commands from the coordinator on the control
//! port, replication streams on the servers port, and the report link (start-up report,
//! heartbeats, leases, recovery progress) to the coordinator.

use std::convert::Infallible;
use std::process;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::connection::{Connection, FRAME_DEADLINE};
use crate::coordinators::Coordinators;
use crate::error::{Error, Result};
use crate::lines;
use crate::protocol::{
    BoundPorts, ControlRequest, ControlResponse, Hello, ReplAck, ReplMessage, ReportRequest,
    ReportResponse, Role,
};
use crate::server::dumps::DumpRound;
use crate::server::replication::{CaughtUp, receive_stream};
use crate::server::{Server, ServerOptions, orphan};

/// How long after its lease lapsed a server that hears nothing from the coordinator keeps
/// waiting for an answer before it counts the link as lost (and starts reconnecting).
const ORPHAN_GRACE: Duration = Duration::from_secs(3);
/// The same with standby coordinators to turn to: a leader that does not answer for this
/// long past the lease is paused or cut off, and a standby takes over about when its etcd
/// lease runs out, so waiting longer only delays re-attaching to the next leader. (A new
/// leader waits for the servers as long as this allows: see `Cluster::rejoin_wait`.)
pub const GRACE_WITH_STANDBYS: Duration = Duration::from_secs(1);
/// Longest one attempt at a coordinator may take when there are others to try: within
/// `orphan::ATTEMPT_LIMIT`, so that it fails here, naming the address, rather than being cut
/// off from outside.
const STANDBY_ATTEMPT: Duration = Duration::from_millis(900);
/// Longest a Drain waits for in-flight writes (the coordinator waits a little longer).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Default `--heartbeat-ms`, as text, as the flags of `server` and `coord` take it.
pub const DEFAULT_HEARTBEAT_MS: &str = "250";
/// Largest `--heartbeat-ms`: half of the coordinator's largest timeout (3600 s), since a
/// heartbeat interval is at most half the timeout.
pub const MAX_HEARTBEAT_MS: u64 = 1_800_000;

/// Parses `--heartbeat-ms MS`, a whole number from 1 to [`MAX_HEARTBEAT_MS`], for `server`
/// and `coord`. 0 was taken as 1 ms without a word (a heartbeat a millisecond); a value
/// past an `Instant`'s range would have panicked the server at its first heartbeat.
pub fn parse_heartbeat_ms(text: &str) -> std::result::Result<Duration, BadHeartbeat> {
    match text.trim().parse::<u64>() {
        Ok(ms @ 1..=MAX_HEARTBEAT_MS) => Ok(Duration::from_millis(ms)),
        _ => Err(BadHeartbeat(text.to_string())),
    }
}

/// A `--heartbeat-ms` that is not a whole number in range.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a whole number of milliseconds from 1 to {MAX_HEARTBEAT_MS}")]
pub struct BadHeartbeat(String);

/// Commands from the coordinator.
pub async fn serve_control(server: Arc<Server>, mut conn: Connection) -> Result<()> {
    while let Some(request) = conn.recv::<ControlRequest>().await? {
        let response = match request {
            ControlRequest::SetConfig(config) => match server.set_config(config).await {
                Ok(()) => ControlResponse::Done,
                Err(why) => {
                    warn!(%why, "configuration refused");
                    ControlResponse::Failed(why.to_string())
                }
            },
            ControlRequest::Load { n, primary, secondary } => {
                server.load_dumps(n, primary, secondary).await
            }
            ControlRequest::LoadLog => server.load_log().await,
            ControlRequest::Drain => {
                server.drain(DRAIN_LIMIT).await;
                ControlResponse::Done
            }
            ControlRequest::Shutdown => {
                server.draining.store(true, Ordering::SeqCst);
                // A round of its own: each Shutdown writes both dumps again.
                match server.dump(&mut DumpRound::default()) {
                    Ok(dumps) => {
                        conn.send(&ControlResponse::ShutDown { dumps }).await?;
                        info!("shut down by the coordinator");
                        server.cancel.cancel();
                        return Ok(());
                    }
                    // Exiting now would lose the data: stay up (serving no client) until a
                    // later Shutdown writes the dumps.
                    Err(e) => ControlResponse::Failed(format!("writing dumps: {e}")),
                }
            }
        };
        conn.send(&response).await?;
    }
    Ok(())
}

/// A replication stream from another server.
pub async fn serve_stream(server: Arc<Server>, mut conn: Connection, role: Role) -> Result<()> {
    let Role::Server { id, incarnation } = role else { unreachable!("checked by the gate") };
    let from = (id, incarnation);
    let open: ReplMessage = conn.reader.recv_within(FRAME_DEADLINE, "waiting for Open").await?;
    let ReplMessage::Open { into, epoch, target_incarnation, stream } = open else {
        return Err(Error::Protocol("replication stream without Open".into()));
    };
    let opened = server.open_stream(from, into, target_incarnation, stream);
    if let Err(why) = opened {
        let why = why.to_string();
        conn.send(&ReplAck::Refused(why.clone())).await?;
        return Err(Error::Protocol(why));
    }
    conn.send(&ReplAck::Opened).await?;
    info!(from = id, incarnation, ?into, epoch, stream, "replication stream accepted");
    let (mut reader, mut writer) = conn.split();
    let apply = |ops| server.apply_replicated(from, into, stream, ops);
    receive_stream(&mut reader, &mut writer, apply, &server.durable).await
}

/// Reports the bound ports, then heartbeats (each answer renews the lease) and recovery
/// progress, for as long as the server runs. Once the server has joined (holds a
/// configuration), a lost link does not end it: the server keeps its data and tries the
/// coordinator again for the orphan timeout (see [`orphan`]), so that a restarted
/// coordinator takes it back. Returns why it stopped: replaced, lost before it joined, or
/// no coordinator took it back in time.
pub async fn report_to_coordinator(
    server: Arc<Server>,
    opts: &ServerOptions,
    ports: BoundPorts,
) -> Result<()> {
    let caught_up = server
        .caught_up
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or(Error::Protocol("report link started twice".into()))?;
    let coordinators = Coordinators::new(opts.coordinators.clone());
    let mut link = ReportLink { caught_up, unanswered: None };
    let mut conn = register(&server, opts, ports, &coordinators).await?;
    info!(coordinator = %coordinators.current(), "registered with the coordinator");
    loop {
        let Err(lost) = link.report(&server, opts, &mut conn, &coordinators).await;
        if matches!(lost, Error::Replaced) || server.config().is_none() {
            return Err(lost);
        }
        warn!(reason = %lost, orphan_timeout = ?opts.orphan_timeout, "{}", lines::ORPHANED);
        coordinators.failed(&coordinators.current());
        let give_up = Instant::now() + opts.orphan_timeout;
        conn = orphan::reattach(give_up, || register(&server, opts, ports, &coordinators)).await?;
        info!(coordinator = %coordinators.current(), "{}", lines::REATTACHED);
    }
}

/// Connects to a coordinator and reports this server's ports, pid, incarnation and
/// newest epoch; returns the link once welcomed. One address an attempt: one that fails
/// or stands by (naming the leader) leaves the next attempt to the next one.
async fn register(
    server: &Server,
    opts: &ServerOptions,
    ports: BoundPorts,
    coordinators: &Coordinators,
) -> Result<Connection> {
    let addr = coordinators.current();
    let hello =
        Hello::new(Role::Server { id: server.id, incarnation: server.incarnation }, &server.token);
    let epoch = server.config().as_ref().map_or(0, |c| c.epoch);
    let started =
        ReportRequest::Started { ports, pid: process::id(), incarnation: opts.incarnation, epoch };
    let answered = async {
        let mut conn = Connection::connect(&addr, &hello).await?;
        let answer = conn.call(&started, Duration::from_secs(10), "waiting for the coordinator");
        Ok::<_, Error>((answer.await?, conn))
    };
    // With standbys, an address that does not answer within an attempt (a paused or cut-off
    // leader, whose kernel may still accept the connection) is left for the next one here:
    // cut off from outside by `orphan::reattach`, it would be tried again and again.
    let limit = if coordinators.several() { STANDBY_ATTEMPT } else { Duration::MAX };
    let answered = match tokio::time::timeout(limit, answered).await {
        Ok(answered) => answered,
        Err(_) => Err(Error::Unavailable(format!("no answer from {addr} within {limit:?}"))),
    };
    match answered {
        Ok((ReportResponse::NotLeader { leader: Some(leader) }, _)) => {
            coordinators.redirect(&leader);
            Err(Error::Unavailable(format!("{addr} stands by; {leader} leads")))
        }
        Ok((ReportResponse::NotLeader { leader: None }, _)) => {
            coordinators.failed(&addr);
            Err(Error::Unavailable(format!("{addr} stands by; no coordinator leads yet")))
        }
        Ok((answer, conn)) => expect_welcome(answer).map(|()| conn),
        Err(e) => {
            coordinators.failed(&addr);
            Err(e)
        }
    }
}

/// What outlives one connection to the coordinator.
struct ReportLink {
    caught_up: mpsc::UnboundedReceiver<CaughtUp>,
    /// Recovery progress sent but not acknowledged when the link broke: sent again on the
    /// next link, for the coordinator may never have seen it (and would wait for it).
    unanswered: Option<CaughtUp>,
}

impl ReportLink {
    /// Heartbeats and progress reports on `conn` until it fails; returns why.
    async fn report(
        &mut self,
        server: &Server,
        opts: &ServerOptions,
        conn: &mut Connection,
        coordinators: &Coordinators,
    ) -> Result<Infallible> {
        if let Some(progress) = self.unanswered {
            self.send_progress(server, conn, coordinators, progress).await?;
        }
        let mut next_beat = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_beat) => {
                    let sent = Instant::now();
                    next_beat = sent + opts.heartbeat;
                    conn.send(&ReportRequest::Heartbeat(server.stats())).await?;
                    match answer(conn, server, coordinators).await? {
                        ReportResponse::Lease { lease_ms, coordinators: listed } => {
                            server.lease.renew(sent, Duration::from_millis(lease_ms));
                            if coordinators.learn(&listed) {
                                info!(?listed, "{}", lines::COORDINATORS_LISTED);
                            }
                        }
                        other => expect_welcome(other)?,
                    }
                }
                Some(progress) = self.caught_up.recv() => {
                    self.send_progress(server, conn, coordinators, progress).await?;
                }
            }
        }
    }

    async fn send_progress(
        &mut self,
        server: &Server,
        conn: &mut Connection,
        coordinators: &Coordinators,
        progress: CaughtUp,
    ) -> Result<()> {
        self.unanswered = Some(progress);
        let updated = ReportRequest::Updated {
            into: progress.into,
            epoch: progress.epoch,
            copied: progress.copied,
        };
        conn.send(&updated).await?;
        expect_welcome(answer(conn, server, coordinators).await?)?;
        self.unanswered = None;
        info!(into = ?progress.into, epoch = progress.epoch, "reported copy caught up");
        Ok(())
    }
}

fn expect_welcome(response: ReportResponse) -> Result<()> {
    match response {
        ReportResponse::Welcome => Ok(()),
        ReportResponse::Replaced => Err(Error::Replaced),
        other => Err(Error::Protocol(format!("coordinator answered {other:?}"))),
    }
}

/// The coordinator's answer on the report link. Waiting is bounded: past the lease and
/// [`ORPHAN_GRACE`] (or [`GRACE_WITH_STANDBYS`]), the coordinator counts as gone.
async fn answer(
    conn: &mut Connection,
    server: &Server,
    coordinators: &Coordinators,
) -> Result<ReportResponse> {
    let grace = if coordinators.several() { GRACE_WITH_STANDBYS } else { ORPHAN_GRACE };
    let limit = server.lease.remaining() + grace;
    conn.reader.recv_within(limit, "waiting for the coordinator (cut off?)").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_ms_is_refused_at_0_and_past_the_largest() {
        assert_eq!(parse_heartbeat_ms(DEFAULT_HEARTBEAT_MS), Ok(Duration::from_millis(250)));
        assert_eq!(parse_heartbeat_ms("1"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_heartbeat_ms("1800000"), Ok(Duration::from_secs(1800)));
        for bad in ["0", "-1", "1800001", "0.5", "", "18446744073709551615"] {
            assert!(parse_heartbeat_ms(bad).is_err(), "{bad:?}");
        }
    }
}
