//! The server's side of the control path: commands from the coordinator on the control
//! port, replication streams on the servers port, and the report link (start-up report,
//! heartbeats, leases, recovery progress) to the coordinator.

use std::process;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::connection::{Connection, FRAME_DEADLINE};
use crate::error::{Error, Result};
use crate::protocol::{
    BoundPorts, ControlRequest, ControlResponse, Hello, ReplAck, ReplMessage, ReportRequest,
    ReportResponse, Role,
};
use crate::server::replication::receive_stream;
use crate::server::{Server, ServerOptions};

/// How long after its lease lapsed a server that hears nothing from the coordinator keeps
/// waiting before it writes its dumps and exits (cut off: it never rejoins on its own).
const ORPHAN_GRACE: Duration = Duration::from_secs(3);
/// Longest a Drain waits for in-flight writes (the coordinator waits a little longer).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

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
            ControlRequest::Drain => {
                server.drain(DRAIN_LIMIT).await;
                ControlResponse::Done
            }
            ControlRequest::Shutdown => {
                server.draining.store(true, Ordering::SeqCst);
                match server.dump() {
                    Ok((primary_keys, secondary_keys)) => {
                        conn.send(&ControlResponse::ShutDown { primary_keys, secondary_keys })
                            .await?;
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
    receive_stream(&mut reader, &mut writer, |ops| server.apply_replicated(from, into, stream, ops))
        .await
}

/// Reports the bound ports, then heartbeats (each answer renews the lease) and recovery
/// progress. Returns when the link to the coordinator is lost or it replaced this server.
pub async fn report_to_coordinator(
    server: Arc<Server>,
    opts: &ServerOptions,
    ports: BoundPorts,
) -> Result<()> {
    let hello =
        Hello::new(Role::Server { id: server.id, incarnation: server.incarnation }, &server.token);
    let mut conn = Connection::connect(&opts.coordinator, &hello).await?;
    let epoch = server.config().as_ref().map_or(0, |c| c.epoch);
    let started =
        ReportRequest::Started { ports, pid: process::id(), incarnation: opts.incarnation, epoch };
    expect_welcome(
        conn.call(&started, Duration::from_secs(10), "waiting for the coordinator").await?,
    )?;
    info!(coordinator = %opts.coordinator, "registered with the coordinator");
    let mut caught_up = server
        .caught_up
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or(Error::Protocol("report link started twice".into()))?;
    let mut next_beat = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_beat) => {
                let sent = Instant::now();
                next_beat = sent + opts.heartbeat;
                conn.send(&ReportRequest::Heartbeat).await?;
                match answer(&mut conn, &server).await? {
                    ReportResponse::Lease { lease_ms } => {
                        server.lease.renew(sent, Duration::from_millis(lease_ms));
                    }
                    other => expect_welcome(other)?,
                }
            }
            Some(progress) = caught_up.recv() => {
                let updated = ReportRequest::Updated {
                    into: progress.into,
                    epoch: progress.epoch,
                    copied: progress.copied,
                };
                conn.send(&updated).await?;
                expect_welcome(answer(&mut conn, &server).await?)?;
                info!(into = ?progress.into, epoch = progress.epoch, "reported copy caught up");
            }
        }
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
/// [`ORPHAN_GRACE`], the coordinator counts as gone.
async fn answer(conn: &mut Connection, server: &Server) -> Result<ReportResponse> {
    let limit = server.lease.remaining() + ORPHAN_GRACE;
    conn.reader.recv_within(limit, "waiting for the coordinator (cut off?)").await
}
