//! The ordered replication stream from a primary copy to its other copy.
//!
//! Every write to a slot goes through that slot's [`Replicator`] task, which is the only
//! writer of the local table for that slot. It gives each write the next sequence number,
//! sends writes in batches (as many as are queued, one frame), and applies a write to the
//! local table and answers the client only when the other copy acknowledged it. So a write
//! is visible to GETs only once both copies hold it, and the two copies apply the same
//! writes in the same order.
//!
//! If the link breaks, the task reconnects and resends every unacknowledged write in order.
//! Re-applying an in-order suffix of writes leaves a table as it was, so no de-duplication
//! is needed. A write is never reported as failed while it may have reached the other copy:
//! it stays pending until acknowledged, or until the coordinator says the other copy is gone
//! (target `None`): then the task applies pending writes locally (degraded mode).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::connection::{ConnReader, ConnWriter, Connection};
use crate::error::{Error, Result};
use crate::protocol::{Hello, Op, ReplAck, ReplMessage, Role, TableKind};
use crate::server::table::{Applied, Table};

/// Largest batch payload we aim for (a single larger write still goes alone).
const BATCH_BYTES: usize = 1 << 20;
/// Most writes sent and not yet acknowledged.
const WINDOW_OPS: usize = 16 * 1024;
/// An unacknowledged batch older than this means the link is stuck: reconnect.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);

/// Where a slot's writes are copied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` of the other server's servers port.
    pub addr: String,
    /// Which of its tables receives the writes.
    pub into: TableKind,
    pub epoch: u64,
}

struct Pending {
    op: Op,
    done: oneshot::Sender<Applied>,
}

/// Handle to submit writes to a slot's replication task.
#[derive(Clone)]
pub struct Replicator {
    tx: mpsc::Sender<Pending>,
    target: Arc<watch::Sender<Option<Target>>>,
    outstanding: Arc<AtomicUsize>,
}

impl Replicator {
    /// Starts the task; writes wait until a target is set (or are applied locally once the
    /// target is set to `None` by [`set_target`](Self::set_target)).
    pub fn start(me: u32, token: Vec<u8>, table: Arc<Table>, cancel: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let (target_tx, target_rx) = watch::channel(None);
        let outstanding = Arc::new(AtomicUsize::new(0));
        let task = Task {
            me,
            token,
            table,
            rx,
            target: target_rx,
            local: false,
            unacked: VecDeque::new(),
            next_seq: 1,
            outstanding: outstanding.clone(),
        };
        tokio::spawn(task.run(cancel));
        Replicator {
            tx,
            target: Arc::new(target_tx),
            outstanding,
        }
    }

    /// Queues a write; the receiver fires once it is applied on both copies (or locally in
    /// degraded mode). Dropped without firing if the server shuts down first.
    pub async fn submit(&self, op: Op) -> Option<oneshot::Receiver<Applied>> {
        let (done, rx) = oneshot::channel();
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        if self.tx.send(Pending { op, done }).await.is_err() {
            self.outstanding.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(rx)
    }

    /// Copies to `target` from now on; `None` means "no other copy: apply locally".
    pub fn set_target(&self, target: Option<Target>, degraded: bool) {
        let value = if degraded { None } else { target };
        self.target.send_replace(value);
    }

    /// Writes submitted and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }
}

struct Task {
    me: u32,
    token: Vec<u8>,
    table: Arc<Table>,
    rx: mpsc::Receiver<Pending>,
    target: watch::Receiver<Option<Target>>,
    /// True once the coordinator said there is no other copy.
    local: bool,
    unacked: VecDeque<(u64, Pending)>,
    next_seq: u64,
    outstanding: Arc<AtomicUsize>,
}

impl Task {
    async fn run(mut self, cancel: CancellationToken) {
        loop {
            let target = self.target.borrow_and_update().clone();
            let outcome = match target {
                Some(target) => {
                    self.local = false;
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = self.stream_to(&target) => r,
                    }
                }
                None if self.local_mode_allowed() => {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = self.apply_locally() => r,
                    }
                }
                None => tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = self.target.changed() => r.map_err(|_| Error::Closed),
                },
            };
            match outcome {
                Ok(()) => {}
                Err(Error::Closed) if self.rx.is_closed() => return,
                Err(e) => {
                    warn!(error = %e, "replication link lost; reconnecting");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(RECONNECT_BACKOFF) => {}
                        _ = self.target.changed() => {}
                    }
                }
            }
        }
    }

    /// Before any configuration arrives the target is `None` too; only a `None` set after
    /// the first configuration means degraded mode. `watch` cannot tell these apart, so
    /// `set_target` is called with the real target first and `local` flips on a later `None`.
    fn local_mode_allowed(&mut self) -> bool {
        if self.target.has_changed().unwrap_or(false) || self.next_seq > 1 || self.local {
            self.local = true;
        }
        self.local
    }

    fn complete(&mut self, pending: Pending, applied: Applied) {
        let _ = pending.done.send(applied);
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
    }

    /// Degraded mode: apply everything pending, then every new write, locally.
    async fn apply_locally(&mut self) -> Result<()> {
        while let Some((_, pending)) = self.unacked.pop_front() {
            let applied = self.table.apply(pending.op.clone());
            self.complete(pending, applied);
        }
        loop {
            tokio::select! {
                changed = self.target.changed() => return changed.map_err(|_| Error::Closed),
                pending = self.rx.recv() => {
                    let Some(pending) = pending else { return Err(Error::Closed) };
                    self.next_seq += 1;
                    let applied = self.table.apply(pending.op.clone());
                    self.complete(pending, applied);
                }
            }
        }
    }

    /// Streams to `target` until the link fails or the target changes.
    async fn stream_to(&mut self, target: &Target) -> Result<()> {
        let hello = Hello::new(Role::Server(self.me), &self.token);
        let mut conn = Connection::connect(&target.addr, &hello).await?;
        conn.send(&ReplMessage::Open {
            into: target.into,
            epoch: target.epoch,
        })
        .await?;
        info!(to = %target.addr, into = ?target.into, resend = self.unacked.len(), "replication stream open");
        let (mut reader, mut writer) = conn.split();
        // Resend what the previous link left unacknowledged, in order.
        let resend: Vec<(u64, Op)> = self
            .unacked
            .iter()
            .map(|(seq, p)| (*seq, p.op.clone()))
            .collect();
        for chunk in resend.chunks(1024) {
            let ops = chunk.iter().map(|(_, op)| op.clone()).collect();
            writer
                .send(&ReplMessage::Batch {
                    first_seq: chunk[0].0,
                    ops,
                })
                .await?;
        }
        let mut last_progress = Instant::now();
        loop {
            let window_open = self.unacked.len() < WINDOW_OPS;
            let stuck_at = last_progress + ACK_TIMEOUT;
            tokio::select! {
                biased;
                changed = self.target.changed() => return changed.map_err(|_| Error::Closed),
                ack = reader.recv::<ReplAck>() => {
                    self.on_ack(ack?)?;
                    last_progress = Instant::now();
                }
                first = self.rx.recv(), if window_open => {
                    let Some(first) = first else { return Err(Error::Closed) };
                    if self.unacked.is_empty() {
                        last_progress = Instant::now();
                    }
                    self.send_batch(first, &mut writer).await?;
                }
                _ = tokio::time::sleep_until(stuck_at), if !self.unacked.is_empty() => {
                    return Err(Error::Timeout("waiting for a replication acknowledgement"));
                }
            }
        }
    }

    fn on_ack(&mut self, ack: Option<ReplAck>) -> Result<()> {
        match ack {
            None => Err(Error::Closed),
            Some(ReplAck::Refused(why)) => Err(Error::Protocol(format!("stream refused: {why}"))),
            Some(ReplAck::Applied { seq }) => {
                let mut done = Vec::new();
                while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
                    done.push(self.unacked.pop_front().expect("front exists").1);
                }
                for pending in done {
                    let applied = self.table.apply(pending.op.clone());
                    self.complete(pending, applied);
                }
                Ok(())
            }
        }
    }

    /// Sends `first` and whatever else is already queued, as one frame.
    async fn send_batch(&mut self, first: Pending, writer: &mut ConnWriter) -> Result<()> {
        let first_seq = self.next_seq;
        let mut bytes = op_size(&first.op);
        let mut ops = vec![first.op.clone()];
        self.push_unacked(first);
        while bytes < BATCH_BYTES && self.unacked.len() < WINDOW_OPS {
            let Ok(next) = self.rx.try_recv() else { break };
            bytes += op_size(&next.op);
            ops.push(next.op.clone());
            self.push_unacked(next);
        }
        debug!(first_seq, count = ops.len(), "batch");
        writer.send(&ReplMessage::Batch { first_seq, ops }).await
    }

    fn push_unacked(&mut self, pending: Pending) {
        self.unacked.push_back((self.next_seq, pending));
        self.next_seq += 1;
    }
}

fn op_size(op: &Op) -> usize {
    match op {
        Op::Put { key, value } => key.len() + value.len(),
        Op::Get { key } | Op::Del { key } => key.len(),
    }
}

/// The receiving side: applies a stream of batches to `table` and acknowledges them.
/// `still_valid` is asked before each batch: once it says no (the sender lost the slot),
/// the stream is refused so that a fenced primary can never write here again.
pub async fn receive_stream(
    reader: &mut ConnReader,
    writer: &mut ConnWriter,
    table: &Table,
    still_valid: impl Fn() -> Result<(), String>,
) -> Result<()> {
    let mut expected: Option<u64> = None;
    while let Some(message) = reader.recv::<ReplMessage>().await? {
        let ReplMessage::Batch { first_seq, ops } = message else {
            return Err(Error::Protocol(
                "second Open on a replication stream".into(),
            ));
        };
        if let Err(why) = still_valid() {
            writer.send(&ReplAck::Refused(why.clone())).await?;
            return Err(Error::Protocol(why));
        }
        if expected.is_some_and(|e| e != first_seq) || ops.is_empty() {
            return Err(Error::Protocol(format!(
                "batch at seq {first_seq} out of order"
            )));
        }
        if ops
            .iter()
            .any(|op| matches!(op, Op::Get { .. }) || op.check_limits().is_err())
        {
            return Err(Error::Protocol(
                "invalid write in a replication batch".into(),
            ));
        }
        let last = first_seq + ops.len() as u64 - 1;
        expected = Some(last + 1);
        table.apply_all(ops);
        writer.feed(&ReplAck::Applied { seq: last }).await?;
        if !reader.has_buffered() {
            writer.flush().await?;
        }
    }
    Ok(())
}
