//! `client watch` on the coordinator's side: a subscription on the clients port, answered
//! with a snapshot every [`SNAPSHOT_EVERY`] and every event as it happens.
//!
//! A watcher is served by its own connection task. The event loop only `try_send`s into
//! its bounded queue (see `events`); a watcher that stops reading blocks nothing but this
//! task, which ends once a write has waited [`FRAME_DEADLINE`] (its socket's small send
//! buffer full) or its queue overflowed.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::connection::{Connection, FRAME_DEADLINE};
use crate::coord::observe::events::Hub;
use crate::coord::observe::events::MAX_WATCHERS;
use crate::coord::state::View;
use crate::error::{Error, Result};
use crate::protocol::{ClusterSnapshot, CoordRequest, CoordResponse, WatchMessage};

/// How often a watcher gets a snapshot (its screen refreshes about as often).
pub const SNAPSHOT_EVERY: Duration = Duration::from_millis(100);
/// The kernel's send buffer of a watcher's socket (doubled by Linux): a few seconds of
/// snapshots. A watcher that stops reading fills it, and its next write then waits out
/// [`FRAME_DEADLINE`]; without the cap the buffer grows to megabytes and takes many
/// minutes to fill.
const WATCHER_SEND_BUFFER: usize = 8 * 1024;

/// The cluster now: what the clients port publishes, the servers' last counters, and the
/// recovery in progress.
pub fn snapshot(hub: &Hub, view: &watch::Sender<View>) -> ClusterSnapshot {
    ClusterSnapshot {
        status: view.borrow().status.clone(),
        stats: hub.stats(),
        recovery: hub.recovery().map(|t| t.progress(Instant::now())),
    }
}

/// Streams to one watcher until it disconnects, stops reading, or sends anything more.
pub async fn serve_watch(hub: &Hub, view: &watch::Sender<View>, conn: Connection) -> Result<()> {
    let Some((recent, mut events)) = hub.subscribe() else {
        return Err(Error::Protocol(format!("more than {MAX_WATCHERS} watchers; refused")));
    };
    let (mut reader, mut writer) = conn.split();
    writer.cap_send_buffer(WATCHER_SEND_BUFFER)?;
    writer.queue(&CoordResponse::Watch(WatchMessage::Snapshot(snapshot(hub, view))))?;
    for event in recent {
        writer.queue(&CoordResponse::Watch(WatchMessage::Event(event)))?;
    }
    let mut ticker = tokio::time::interval(SNAPSHOT_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A watcher only listens: its end (or anything it sends) ends the stream. One read for
    // the whole stream, not one per turn of the loop: a frame trickled in would otherwise
    // get a new deadline every turn and could be held half-read for as long as it likes.
    let ended = reader.recv::<CoordRequest>();
    tokio::pin!(ended);
    loop {
        tokio::time::timeout(FRAME_DEADLINE, writer.flush())
            .await
            .map_err(|_| Error::Protocol("watcher not reading; dropped".into()))??;
        let message = tokio::select! {
            event = events.recv() => match event {
                Some(event) => WatchMessage::Event(event),
                None => return Err(Error::Protocol("watcher too slow; dropped".into())),
            },
            _ = ticker.tick() => WatchMessage::Snapshot(snapshot(hub, view)),
            _ = &mut ended => return Ok(()),
        };
        writer.queue(&CoordResponse::Watch(message))?;
        // Events that came meanwhile go in the same write.
        while let Ok(event) = events.try_recv() {
            writer.queue(&CoordResponse::Watch(WatchMessage::Event(event)))?;
        }
    }
}
