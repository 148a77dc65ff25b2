//! What a replication stream has sent and what the other copy acknowledged, apart from the
//! socket: so that resending after a reconnect, refusing a stray acknowledgement and seeing
//! a snapshot through are plain code, tested without a peer.

use std::collections::VecDeque;
use std::collections::vec_deque::Drain;

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::protocol::Op;
use crate::server::replication::Outcome;

/// Largest batch payload we aim for (a single larger write still goes alone).
const BATCH_BYTES: usize = 1 << 20;
/// Most entries in one batch.
const BATCH_OPS: usize = 4096;
/// Most entries sent and not yet acknowledged.
const WINDOW_OPS: usize = 64 * 1024;

/// One entry of the stream: a client write, or a snapshot entry (already in the table).
pub(super) struct Entry {
    pub op: Op,
    /// Answers the client; `None` for a snapshot entry.
    pub done: Option<oneshot::Sender<Outcome>>,
    /// Where this write ends in the local log (0: not logged here, a snapshot entry).
    pub ticket: u64,
    /// The write's share of the queue's byte budget, given back when the entry is dropped.
    pub _budget: Option<OwnedSemaphorePermit>,
}

/// An acknowledgement of a sequence number that is not in flight on this connection: the
/// other copy is confused or hostile, so the stream is dropped (and reopened).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("acknowledgement {0} out of range")]
pub(super) struct AckOutOfRange(pub u64);

/// The entries not yet acknowledged by the current target, in order. Sequence numbers count
/// from 1 on every connection, and a new connection sends every entry again from the first
/// ([`rewind`](Self::rewind)): re-applying an in-order suffix leaves a table as it was.
pub(super) struct Window {
    entries: VecDeque<Entry>,
    /// Snapshot entries among `entries`. They are always its first ones: a snapshot is put
    /// in front, and entries leave from the front.
    snapshot_left: usize,
    /// A snapshot was queued and its acknowledgement not reported yet (also when empty).
    report_pending: bool,
    /// Sequence number of `entries[0]` on this connection.
    base: u64,
    /// `entries[..sent]` went out on this connection.
    sent: usize,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            entries: VecDeque::new(),
            snapshot_left: 0,
            report_pending: false,
            base: 1,
            sent: 0,
        }
    }
}

impl Window {
    /// Queues a client write behind everything else.
    pub fn push(&mut self, entry: Entry) {
        self.entries.push_back(entry);
    }

    /// Puts a snapshot in front of every queued entry, to be sent first (again from the
    /// start: what went out before the snapshot must follow it).
    pub fn prepend_snapshot(&mut self, ops: impl DoubleEndedIterator<Item = Op>) {
        for op in ops.rev() {
            self.entries.push_front(Entry { op, done: None, ticket: 0, _budget: None });
            self.snapshot_left += 1;
        }
        self.report_pending = true;
        self.rewind();
    }

    /// A new connection: everything not acknowledged goes out again, numbered from 1.
    pub fn rewind(&mut self) {
        self.base = 1;
        self.sent = 0;
    }

    /// Entries queued, sent or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Client writes queued (sent or not), snapshot entries aside.
    pub fn client_writes(&self) -> usize {
        self.entries.len() - self.snapshot_left
    }

    /// Entries sent on this connection and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.sent
    }

    /// Entries that may go out now: those not sent yet, or none while the window is full.
    pub fn unsent(&self) -> usize {
        if self.sent >= WINDOW_OPS { 0 } else { self.entries.len() - self.sent }
    }

    /// Bytes of the entries not sent yet.
    pub fn unsent_bytes(&self) -> usize {
        self.entries.range(self.sent..).map(|entry| op_size(&entry.op)).sum()
    }

    /// Whether the entries not sent yet fill a whole batch, by count or by bytes.
    pub fn full_batch_unsent(&self) -> bool {
        let mut bytes = 0;
        self.entries.range(self.sent..).take(BATCH_OPS).enumerate().any(|(i, entry)| {
            bytes += op_size(&entry.op);
            bytes >= BATCH_BYTES || i + 1 == BATCH_OPS
        })
    }

    /// Takes the next batch of unsent entries (at least one if any, at most [`BATCH_OPS`]
    /// or about [`BATCH_BYTES`]) and counts them as sent: its first sequence number and its
    /// writes. A batch that then fails to go out ends the connection, and so is resent.
    pub fn next_batch(&mut self) -> (u64, Vec<&Op>) {
        let first_seq = self.base + self.sent as u64;
        let mut bytes = 0;
        let mut ops: Vec<&Op> = Vec::new();
        for entry in self.entries.range(self.sent..) {
            if !ops.is_empty()
                && (bytes + op_size(&entry.op) > BATCH_BYTES || ops.len() >= BATCH_OPS)
            {
                break;
            }
            bytes += op_size(&entry.op);
            ops.push(&entry.op);
        }
        self.sent += ops.len();
        (first_seq, ops)
    }

    /// The other copy applied everything up to `seq`: those entries leave the window, for
    /// the caller to answer. Only a sequence number in flight is accepted; the window is
    /// unchanged otherwise.
    pub fn on_ack(&mut self, seq: u64) -> Result<Drain<'_, Entry>, AckOutOfRange> {
        if seq < self.base || seq >= self.base + self.sent as u64 {
            return Err(AckOutOfRange(seq));
        }
        let count = (seq - self.base + 1) as usize;
        self.base += count as u64;
        self.sent -= count;
        self.snapshot_left -= count.min(self.snapshot_left);
        Ok(self.entries.drain(..count))
    }

    /// True once, when the last snapshot queued is fully acknowledged.
    pub fn caught_up(&mut self) -> bool {
        let caught_up = self.report_pending && self.snapshot_left == 0;
        if caught_up {
            self.report_pending = false;
        }
        caught_up
    }

    /// Degraded mode: every entry leaves the window, to be applied locally, and a snapshot
    /// still queued is abandoned (its copy is gone).
    pub fn take_all(&mut self) -> Drain<'_, Entry> {
        self.report_pending = false;
        self.snapshot_left = 0;
        self.rewind();
        self.entries.drain(..)
    }
}

/// Payload bytes of a write, for batch and queue limits.
pub(super) fn op_size(op: &Op) -> usize {
    match op {
        Op::Put { key, value } => key.len() + value.len(),
        Op::Get { key } | Op::Del { key } => key.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> Op {
        Op::Put { key: key.as_bytes().to_vec(), value: b"v".to_vec() }
    }

    /// A window holding client writes with these keys, and the receivers of their answers.
    fn window_of(keys: &[&str]) -> (Window, Vec<oneshot::Receiver<Outcome>>) {
        let mut window = Window::default();
        let answers = keys
            .iter()
            .map(|key| {
                let (done, answer) = oneshot::channel();
                window.push(Entry { op: put(key), done: Some(done), ticket: 0, _budget: None });
                answer
            })
            .collect();
        (window, answers)
    }

    /// A write nobody waits for.
    fn entry(op: Op) -> Entry {
        Entry { op, done: None, ticket: 0, _budget: None }
    }

    fn keys(ops: &[&Op]) -> Vec<String> {
        ops.iter().map(|op| String::from_utf8(op.key().to_vec()).unwrap()).collect()
    }

    #[test]
    fn acknowledged_entries_leave_in_order_and_the_rest_is_resent_after_a_rewind() {
        let (mut window, _answers) = window_of(&["a", "b", "c"]);
        let (first_seq, ops) = window.next_batch();
        assert_eq!((first_seq, keys(&ops)), (1, vec!["a".into(), "b".into(), "c".into()]));
        assert_eq!(window.unsent(), 0);
        let acked: Vec<_> = window.on_ack(1).unwrap().map(|entry| entry.op).collect();
        assert_eq!(acked, vec![put("a")]);
        assert_eq!(window.in_flight(), 2);

        window.rewind(); // the link broke: "b" and "c" go again, numbered from 1
        assert_eq!((window.in_flight(), window.unsent()), (0, 2));
        let (first_seq, ops) = window.next_batch();
        assert_eq!((first_seq, keys(&ops)), (1, vec!["b".into(), "c".into()]));
        assert_eq!(window.on_ack(2).unwrap().count(), 2);
        assert_eq!((window.client_writes(), window.in_flight()), (0, 0));
    }

    #[test]
    fn acknowledgements_out_of_range_are_refused_and_change_nothing() {
        let (mut window, _answers) = window_of(&["a", "b", "c"]);
        assert_eq!(window.on_ack(1).err(), Some(AckOutOfRange(1)), "nothing sent yet");
        window.next_batch();
        assert_eq!(window.on_ack(4).err(), Some(AckOutOfRange(4)), "beyond what was sent");
        assert_eq!(window.on_ack(2).unwrap().count(), 2);
        assert_eq!(window.on_ack(2).err(), Some(AckOutOfRange(2)), "below the window");
        assert_eq!(window.on_ack(0).err(), Some(AckOutOfRange(0)));
        assert_eq!((window.client_writes(), window.in_flight()), (1, 1));
        assert_eq!(window.on_ack(3).unwrap().count(), 1);
    }

    #[test]
    fn a_snapshot_goes_first_and_is_caught_up_once_acknowledged() {
        let (mut window, _answers) = window_of(&["w1", "w2"]);
        window.next_batch(); // sent before the snapshot: goes again after it
        window.prepend_snapshot([put("s1"), put("s2")].into_iter());
        assert_eq!(window.client_writes(), 2);
        assert!(!window.caught_up());
        let (first_seq, ops) = window.next_batch();
        assert_eq!(
            (first_seq, keys(&ops)),
            (1, vec!["s1".into(), "s2".into(), "w1".into(), "w2".into()])
        );
        assert_eq!(window.on_ack(1).unwrap().count(), 1);
        assert!(!window.caught_up(), "one snapshot entry left");
        assert_eq!(window.on_ack(3).unwrap().count(), 2, "the rest of the snapshot and w1");
        assert!(window.caught_up());
        assert!(!window.caught_up(), "reported once");
        assert_eq!(window.client_writes(), 1);
    }

    #[test]
    fn an_empty_snapshot_is_caught_up_at_once_and_degraded_mode_abandons_one() {
        let mut window = Window::default();
        window.prepend_snapshot(std::iter::empty());
        assert!(window.caught_up());
        let (mut window, _answers) = window_of(&["w"]);
        window.prepend_snapshot([put("s")].into_iter());
        assert_eq!(window.take_all().count(), 2);
        assert!(!window.caught_up());
        assert_eq!((window.client_writes(), window.unsent()), (0, 0));
    }

    #[test]
    fn batches_are_cut_by_count_and_bytes_and_the_window_is_bounded() {
        let mut window = Window::default();
        for i in 0..BATCH_OPS + 1 {
            window.push(entry(put(&i.to_string())));
        }
        assert!(window.full_batch_unsent());
        assert_eq!(window.next_batch().1.len(), BATCH_OPS);
        assert!(!window.full_batch_unsent());
        assert_eq!(window.unsent(), 1);

        let big = || Op::Put { key: b"k".to_vec(), value: vec![0; BATCH_BYTES] };
        let mut window = Window::default();
        window.push(entry(big()));
        window.push(entry(big()));
        assert!(window.full_batch_unsent());
        assert_eq!(window.next_batch().1.len(), 1, "a large write goes alone");

        let mut window = Window::default();
        for i in 0..WINDOW_OPS + 1 {
            window.push(entry(put(&i.to_string())));
        }
        while window.in_flight() < WINDOW_OPS {
            window.next_batch();
        }
        assert_eq!(window.unsent(), 0, "window full");
    }
}
