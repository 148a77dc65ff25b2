//! The server's side of the control path: commands from the coordinator on the control
//! port, replication streams on the servers port, and the report link (start-up report,
//! heartbeats, leases) to the coordinator.

use std::process;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::protocol::{
    BoundPorts, ControlRequest, ControlResponse, Hello, ReplAck, ReplMessage, ReportRequest,
    ReportResponse, Role,
};
use crate::server::replication::receive_stream;
use crate::server::{Server, ServerOptions};

/// Longest a Drain waits for in-flight writes.
const DRAIN_LIMIT: Duration = Duration::from_secs(3);

/// Commands from the coordinator.
pub async fn serve_control(server: Arc<Server>, mut conn: Connection) -> Result<()> {
    conn.accept_hello(|role| role == Role::Coordinator, &server.token)
        .await?;
    while let Some(request) = conn.recv::<ControlRequest>().await? {
        let response = match request {
            ControlRequest::SetConfig(config) => match server.set_config(config) {
                Ok(()) => ControlResponse::Done,
                Err(why) => ControlResponse::Failed(why),
            },
            ControlRequest::Drain => {
                server.draining.store(true, Ordering::SeqCst);
                let deadline = Instant::now() + DRAIN_LIMIT;
                while server.own.outstanding() + server.adopted.outstanding() > 0
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                ControlResponse::Done
            }
            ControlRequest::Shutdown => {
                server.draining.store(true, Ordering::SeqCst);
                let response = match server.dump() {
                    Ok((primary_keys, secondary_keys)) => ControlResponse::ShutDown {
                        primary_keys,
                        secondary_keys,
                    },
                    Err(e) => ControlResponse::Failed(format!("writing dumps: {e}")),
                };
                conn.send(&response).await?;
                info!("shut down by the coordinator");
                server.cancel.cancel();
                return Ok(());
            }
        };
        conn.send(&response).await?;
    }
    Ok(())
}

/// A replication stream from another server.
pub async fn serve_stream(server: Arc<Server>, mut conn: Connection) -> Result<()> {
    let role = conn
        .accept_hello(|role| matches!(role, Role::Server(_)), &server.token)
        .await?;
    let Role::Server(from) = role else {
        unreachable!("checked by accept_hello")
    };
    let open: ReplMessage = conn
        .reader
        .recv_within(crate::connection::FRAME_DEADLINE, "waiting for Open")
        .await?;
    let ReplMessage::Open { into, epoch } = open else {
        return Err(Error::Protocol("replication stream without Open".into()));
    };
    let table = match server.stream_table(from, into) {
        Ok(table) => table,
        Err(why) => {
            conn.send(&ReplAck::Refused(why.clone())).await?;
            return Err(Error::Protocol(why));
        }
    };
    info!(from, ?into, epoch, "replication stream accepted");
    let (mut reader, mut writer) = conn.split();
    let checker = server.clone();
    receive_stream(&mut reader, &mut writer, table, move || {
        checker.stream_table(from, into).map(|_| ())
    })
    .await
}

/// Reports the bound ports, then heartbeats; each answer renews the lease. Returns when
/// the link to the coordinator is lost.
pub async fn report_to_coordinator(
    server: Arc<Server>,
    opts: &ServerOptions,
    ports: BoundPorts,
) -> Result<()> {
    let hello = Hello::new(Role::Server(server.id), &server.token);
    let mut conn = Connection::connect(&opts.coordinator, &hello).await?;
    let started = ReportRequest::Started {
        ports,
        pid: process::id(),
        incarnation: opts.incarnation,
    };
    match conn
        .call(
            &started,
            Duration::from_secs(10),
            "waiting for the coordinator's welcome",
        )
        .await?
    {
        ReportResponse::Welcome => {}
        other => return Err(Error::Protocol(format!("coordinator answered {other:?}"))),
    }
    info!(coordinator = %opts.coordinator, "registered with the coordinator");
    loop {
        let sent = Instant::now();
        conn.send(&ReportRequest::Heartbeat).await?;
        match conn.recv::<ReportResponse>().await? {
            Some(ReportResponse::Lease { lease_ms }) => {
                server.lease.renew(sent, Duration::from_millis(lease_ms));
            }
            Some(ReportResponse::Refused(why)) => {
                return Err(Error::Protocol(format!(
                    "coordinator refused heartbeat: {why}"
                )));
            }
            Some(other) => warn!(?other, "unexpected answer to a heartbeat"),
            None => return Err(Error::Closed),
        }
        tokio::time::sleep_until(sent + opts.heartbeat).await;
    }
}
