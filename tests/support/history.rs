//! Linearizability checking of recorded client histories against a per-key
//! register model.
//!
//! # Why
//!
//! Integration tests drive many concurrent clients against the cluster while
//! injecting faults (crashes, partitions, slow or lost messages), record what
//! every client invoked and what came back ([`Recorder`]), and then ask
//! [`check_all`] whether the recorded history is *linearizable*: whether
//! every operation can be given a single instant between its invocation and
//! its return such that running the operations one at a time in that order
//! against a plain register yields exactly the results the clients saw.
//! A linearizable history has, in particular,
//!
//! * no stale reads: a GET never returns a value that was overwritten by a
//!   write which completed before the GET was invoked, and
//! * no lost acknowledged writes: once a PUT/DEL was acknowledged, every
//!   later GET observes it or a later write.
//!
//! [`lost_acknowledged_writes`] is an additional, much simpler sanity check
//! of final values read after the run.
//!
//! # Model
//!
//! Every key is an independent register whose initial value is `None`
//! (absent). `Put(v)` sets it to `Some(v)`, `Del` sets it to `None` (and is
//! acknowledged whether or not the key existed), `Get` returns the current
//! value and changes nothing.
//!
//! Outcomes are interpreted as follows:
//!
//! * [`Outcome::Failed`]: the operation definitely had no effect; it is
//!   dropped before checking.
//! * [`Outcome::Unknown`]: the operation may take effect at any instant after
//!   its invocation, arbitrarily late, or never. Its return time is treated
//!   as +infinity and it does not have to be linearized at all. An unknown
//!   GET carries no information and is dropped.
//! * [`Outcome::Ok`] / [`Outcome::Value`]: the operation took effect exactly
//!   once between invocation and return. Two operations are ordered in real
//!   time only if one returned strictly before the other was invoked; equal
//!   instants count as concurrent. A `ret` earlier than `invoke` is treated
//!   as equal to `invoke`.
//!
//! # Algorithm
//!
//! Linearizability is compositional (Herlihy & Wing): a history is
//! linearizable iff the sub-history of each key is, so [`check_all`] splits
//! by key and [`check_key`] checks one register. For one key we use the
//! Wing & Gong search with Lowe's just-in-time linearization, as in
//! Porcupine/Knossos: the completed operations' invocation and return events
//! form a time-ordered doubly linked list. At each step, the candidates are
//! the operations that are *minimal*, i.e. invoked no later than the earliest
//! return among the remaining operations (the calls before the first return
//! entry in the list, plus pending unknown writes invoked by then). A
//! depth-first search tries each candidate whose effect is consistent with
//! the model, removes ("lifts") it from the list and recurses, undoing on
//! backtrack. The search succeeds as soon as every completed operation is
//! linearized; unknown operations that were never placed simply never took
//! effect. Configurations (bitset of linearized operations, register state)
//! that were already explored are memoized in a hash map and never explored
//! twice, which keeps the search fast for histories with thousands of
//! operations per key and modest concurrency (the bitset is stored compactly
//! from its first incomplete word, since the linearized set is almost a
//! prefix of the history).
//!
//! Register-specific pruning rules, each of which preserves completeness:
//!
//! * a minimal GET that returns the current state is linearized at once with
//!   no alternatives (moving a matching read to the front of any valid
//!   continuation keeps it valid);
//! * a register value that no remaining GET returns is "dead": all dead
//!   states are equivalent for the rest of the search, so they share one
//!   memoization entry, and when the state is dead a minimal write of a dead
//!   value is linearized at once with no alternatives;
//! * an unknown write is only tried right before a minimal GET that returns
//!   its value (in a shortest linearization every placed unknown write is
//!   immediately followed by such a GET), and unknown writes no GET could
//!   observe are dropped up front;
//! * pending unknown writes of the same value are interchangeable (none of
//!   them has to precede anything), so only one of them is tried per step;
//! * linearizing *more* unknown writes never helps, so a configuration is
//!   skipped when one with the same completed operations and state but a
//!   subset of its unknown writes was already explored. Without this, every
//!   timed-out DEL would double the search space for the rest of the history.
//!
//! Before searching, a GET returning a value that no acknowledged or unknown
//! PUT invoked before the GET returned could have written is reported
//! directly. As a safety net against pathological inputs (e.g. dozens of
//! concurrent clients) the search gives up, with an error saying the result
//! is inconclusive, after exploring a few million configurations instead of
//! running for an unbounded time.

// This file is also compiled into integration-test crates that may use only
// part of the API.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

/// What the client did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Store the given value under the key.
    Put(Vec<u8>),
    /// Read the key.
    Get,
    /// Delete the key.
    Del,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// PUT acknowledged / DEL acknowledged (deleted or not-found both count as Ok for DEL)
    Ok,
    /// GET returned Some(value) or None (key not found)
    Value(Option<Vec<u8>>),
    /// Definitely did not take effect (refused before anything was applied)
    Failed,
    /// May or may not have taken effect (timed out after sending): the op may take effect at any time after its invoke, or never
    Unknown,
}

/// One completed client operation: who did what on which key, when it was
/// invoked, when the client got the outcome, and what the outcome was.
#[derive(Debug, Clone)]
pub struct Event {
    /// Identifier of the client (each client issues one operation at a time).
    pub client: usize,
    /// The key the operation addressed.
    pub key: Vec<u8>,
    /// The operation.
    pub op: Op,
    /// Instant just before the request was sent.
    pub invoke: Instant,
    /// Instant just after the outcome was known (for timeouts: when the
    /// client gave up).
    pub ret: Instant,
    /// What came back.
    pub outcome: Outcome,
}

/// Thread-safe history recorder: many client tasks push events concurrently
/// through a shared reference.
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    /// Creates an empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one event. Never panics, even if another thread panicked
    /// while holding the lock.
    pub fn record(&self, event: Event) {
        self.events.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(event);
    }

    /// Returns a copy of all events recorded so far, in recording order.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Runs `f` on the events recorded so far, in recording order, without copying them.
    pub fn scan<R>(&self, f: impl FnOnce(&[Event]) -> R) -> R {
        f(&self.events.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }
}

/// Checks one key's history against the register model (initial value
/// `None`). The `key` field of the events is ignored.
///
/// Returns `Ok(())` if the history is linearizable, otherwise an error with
/// a short explanation (the operation that could not be placed and how far
/// the longest partial linearization got). Malformed events (a GET
/// acknowledged with `Ok`, a PUT/DEL returning a `Value`) are reported as
/// errors, as is a search that exceeds its budget (inconclusive).
pub fn check_key(events: &[Event]) -> Result<(), String> {
    check_refs(events.iter().collect())
}

/// Groups `events` by key and checks each key with [`check_key`].
///
/// Returns the number of keys checked, or an error naming the first failing
/// key (in byte order) with an explanation and the total number of failing
/// keys.
pub fn check_all(events: &[Event]) -> Result<usize, String> {
    let mut by_key: BTreeMap<&[u8], Vec<&Event>> = BTreeMap::new();
    for event in events {
        by_key.entry(event.key.as_slice()).or_default().push(event);
    }
    let keys = by_key.len();
    let mut first_error = None;
    let mut failed = 0usize;
    for (key, key_events) in by_key {
        if let Err(msg) = check_refs(key_events) {
            failed += 1;
            if first_error.is_none() {
                first_error = Some(format!("key {}: {msg}", show_bytes(key)));
            }
        }
    }
    match first_error {
        None => Ok(keys),
        Some(msg) if failed == 1 => Err(msg),
        Some(msg) => Err(format!("{msg} ({failed} of {keys} keys failed)")),
    }
}

/// Simple sanity check of final values, independent of the full
/// linearizability check: returns (sorted) the keys in `final_values` whose
/// final read value cannot be explained by the writes in `events`.
///
/// For each key, the candidate final values are the value of every PUT (as
/// `Some(v)`) and DEL (as `None`) whose outcome is `Ok` or `Unknown`, plus the
/// initial `None`, minus the candidates that were *entirely followed* by
/// another acknowledged (`Ok`) write of the same key, i.e. that write was
/// invoked strictly after the candidate returned. An `Unknown` write never
/// counts as returned, so it is never followed; the initial value is followed
/// by any `Ok` write. The key is reported if its final value is not one of
/// the remaining candidates. In particular, the value of an acknowledged
/// write disappearing after a later quiet period, or a `Failed` write's
/// value showing up, is reported. Keys without an entry in `final_values`
/// are not checked.
pub fn lost_acknowledged_writes(
    events: &[Event],
    final_values: &HashMap<Vec<u8>, Option<Vec<u8>>>,
) -> Vec<Vec<u8>> {
    /// A write and the value it leaves (`None` for DEL).
    type Write<'e> = (&'e Event, Option<&'e [u8]>);
    let mut writes_by_key: HashMap<&[u8], Vec<Write>> = HashMap::new();
    for e in events {
        if !matches!(e.outcome, Outcome::Ok | Outcome::Unknown) {
            continue;
        }
        let value = match &e.op {
            Op::Put(v) => Some(v.as_slice()),
            Op::Del => None,
            Op::Get => continue,
        };
        writes_by_key.entry(&e.key).or_default().push((e, value));
    }
    let mut lost = Vec::new();
    for (key, final_value) in final_values {
        let writes = writes_by_key.get(key.as_slice()).map_or(&[][..], Vec::as_slice);
        // Latest invocation among acknowledged writes: a write is entirely
        // followed by another acknowledged write iff it returned before this.
        let latest_ok_invoke =
            writes.iter().filter(|(e, _)| e.outcome == Outcome::Ok).map(|(e, _)| e.invoke).max();
        let followed = |e: &Event| {
            e.outcome == Outcome::Ok
                && latest_ok_invoke.is_some_and(|latest| e.ret.max(e.invoke) < latest)
        };
        let wanted = final_value.as_deref();
        let explained = (latest_ok_invoke.is_none() && wanted.is_none())
            || writes.iter().any(|&(e, value)| value == wanted && !followed(e));
        if !explained {
            lost.push(key.clone());
        }
    }
    lost.sort();
    lost
}

/// Upper bound on explored configurations before the search gives up.
const MAX_CONFIGS: usize = 2_000_000;
/// Upper bound on memoized entries compared against before giving up.
const MAX_COMPARISONS: usize = 200_000_000;
/// End-of-list marker in the entry list.
const NIL: usize = usize::MAX;
/// Memoization stand-in for any state that no remaining read returns.
const DEAD: u64 = u64::MAX;

/// Effect of one operation on the register; the number is an interned value
/// id (0 is `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read(usize),
    Write(usize),
}

/// A normalized operation; `ret == None` means unknown (return at +infinity).
#[derive(Debug, Clone, Copy)]
struct POp {
    kind: Kind,
    invoke: Instant,
    ret: Option<Instant>,
    event: usize,
}

fn check_refs<'a>(events: Vec<&'a Event>) -> Result<(), String> {
    let base = events.iter().map(|e| e.invoke).min();
    let describe_event = |i: usize| match (events.get(i), base) {
        (Some(e), Some(base)) => describe(e, base),
        _ => String::from("<unknown operation>"),
    };

    // Normalize: intern values, drop failed ops and unknown reads.
    let mut ids: HashMap<&'a [u8], usize> = HashMap::new();
    let mut values: Vec<Option<&'a [u8]>> = vec![None];
    let mut intern = |v: Option<&'a [u8]>| -> usize {
        match v {
            None => 0,
            Some(bytes) => *ids.entry(bytes).or_insert_with(|| {
                values.push(Some(bytes));
                values.len() - 1
            }),
        }
    };
    let mut ops = Vec::new();
    for (i, &e) in events.iter().enumerate() {
        let (kind, unknown) = match (&e.op, &e.outcome) {
            (_, Outcome::Failed) | (Op::Get, Outcome::Unknown) => continue,
            (Op::Get, Outcome::Value(v)) => (Kind::Read(intern(v.as_deref())), false),
            (Op::Put(v), Outcome::Ok) => (Kind::Write(intern(Some(v))), false),
            (Op::Put(v), Outcome::Unknown) => (Kind::Write(intern(Some(v))), true),
            (Op::Del, Outcome::Ok) => (Kind::Write(0), false),
            (Op::Del, Outcome::Unknown) => (Kind::Write(0), true),
            (Op::Get, Outcome::Ok) => {
                return Err(format!(
                    "malformed event {}: a GET must return a value, fail or be unknown",
                    describe_event(i)
                ));
            }
            (Op::Put(_) | Op::Del, Outcome::Value(_)) => {
                return Err(format!(
                    "malformed event {}: a PUT/DEL cannot return a value",
                    describe_event(i)
                ));
            }
        };
        ops.push(POp {
            kind,
            invoke: e.invoke,
            ret: (!unknown).then(|| e.ret.max(e.invoke)),
            event: i,
        });
    }
    let n_values = values.len();

    // Cheap pre-check with a clear message: a GET cannot return a value that
    // no acknowledged or unknown PUT invoked before the GET returned wrote.
    let mut first_write: Vec<Option<Instant>> = vec![None; n_values];
    for op in &ops {
        if let Kind::Write(v) = op.kind
            && let Some(slot) = first_write.get_mut(v)
        {
            *slot = Some(slot.map_or(op.invoke, |w| w.min(op.invoke)));
        }
    }
    for op in &ops {
        if let (Kind::Read(v), Some(ret)) = (op.kind, op.ret)
            && v != 0
            && first_write.get(v).copied().flatten().is_none_or(|first| first > ret)
        {
            return Err(format!(
                "not linearizable: {} returned a value that no acknowledged or \
                 unknown PUT invoked before it returned could have written",
                describe_event(op.event)
            ));
        }
    }

    // Drop unknown writes that no read could observe (no read of the value
    // returned at or after the write's invocation): removing such a write
    // from any valid linearization leaves it valid.
    let mut latest_read: Vec<Option<Instant>> = vec![None; n_values];
    for op in &ops {
        if let (Kind::Read(v), Some(ret)) = (op.kind, op.ret)
            && let Some(slot) = latest_read.get_mut(v)
        {
            *slot = Some(slot.map_or(ret, |r| r.max(ret)));
        }
    }
    ops.retain(|op| match (op.ret, op.kind) {
        (None, Kind::Write(v)) => {
            latest_read.get(v).copied().flatten().is_some_and(|latest| latest >= op.invoke)
        }
        _ => true,
    });

    let mut search = Search::new(&ops, n_values);
    match search.run() {
        Ok(()) => Ok(()),
        Err(Failure::Budget(explored)) => Err(format!(
            "inconclusive: gave up after exploring {explored} configurations \
             ({} operations)",
            ops.len()
        )),
        Err(Failure::NotLinearizable(best)) => {
            let blocked = best
                .blocking
                .and_then(|o| ops.get(o))
                .map_or_else(|| String::from("<none>"), |op| describe_event(op.event));
            let state = values
                .get(best.state)
                .copied()
                .flatten()
                .map_or_else(|| String::from("absent"), show_bytes);
            Err(format!(
                "not linearizable: no valid order can place {blocked}; the longest \
                 partial linearization covers {} of {} completed operations and leaves \
                 the value {state}",
                best.done, search.finite
            ))
        }
    }
}

fn show_bytes(v: &[u8]) -> String {
    const MAX: usize = 48;
    match v.get(..MAX) {
        Some(prefix) if v.len() > MAX => {
            format!("\"{}\"... ({} bytes)", prefix.escape_ascii(), v.len())
        }
        _ => format!("\"{}\"", v.escape_ascii()),
    }
}

fn describe(e: &Event, base: Instant) -> String {
    let op = match &e.op {
        Op::Put(v) => format!("PUT {}", show_bytes(v)),
        Op::Get => String::from("GET"),
        Op::Del => String::from("DEL"),
    };
    let outcome = match &e.outcome {
        Outcome::Ok => String::from("ok"),
        Outcome::Value(Some(v)) => show_bytes(v),
        Outcome::Value(None) => String::from("not found"),
        Outcome::Failed => String::from("failed"),
        Outcome::Unknown => String::from("unknown"),
    };
    format!(
        "(client {} {op} -> {outcome}, invoked +{:?}, returned +{:?})",
        e.client,
        e.invoke.saturating_duration_since(base),
        e.ret.saturating_duration_since(base)
    )
}

/// Progress of the deepest configuration reached, for error messages.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// Completed operations linearized.
    done: usize,
    /// Operation whose return bounded the candidates there.
    blocking: Option<usize>,
    /// Register value id there.
    state: usize,
}

enum Failure {
    NotLinearizable(Progress),
    Budget(usize),
}

/// One entry of the time-ordered call/return list.
struct Entry {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// One DFS level: the candidates at a configuration, the next one to try,
/// and the operation (with the previous state) that led here.
struct Frame {
    candidates: Vec<usize>,
    next: usize,
    applied: Option<(usize, usize)>,
}

/// Memoized configurations: key is (first non-full word of the completed
/// operations' bitset, canonical state, the bitset's words from there to the
/// last non-zero word); value is the list of unknown-operation bitsets
/// explored with that key. Having linearized *more* unknown operations never
/// helps (they are optional), so a configuration is skipped when an explored
/// one has the same key and a subset of its unknown operations.
type Cache = HashMap<Box<[u64]>, Vec<Box<[u64]>>>;

struct Search<'a> {
    ops: &'a [POp],
    /// Per operation: its bit index among completed or among unknown ops.
    slot: Vec<usize>,
    /// Index 0 is the head sentinel.
    entries: Vec<Entry>,
    call_entry: Vec<usize>,
    ret_entry: Vec<usize>,
    /// Unknown operations sorted by invocation.
    unknown: Vec<usize>,
    /// Linearized completed operations, by slot (ranked by invocation).
    finite_bits: Vec<u64>,
    /// Linearized unknown operations, by slot.
    unknown_bits: Vec<u64>,
    /// Per value id: how many not-yet-linearized reads return it.
    pending_reads: Vec<usize>,
    state: usize,
    finite: usize,
    remaining: usize,
    cache: Cache,
    cached: usize,
    compared: usize,
    scratch: Vec<u64>,
    best: Progress,
}

fn bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn flip(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w ^= 1 << (i % 64);
    }
}

impl<'a> Search<'a> {
    fn new(ops: &'a [POp], n_values: usize) -> Self {
        let mut timeline: Vec<(Instant, bool, usize)> = Vec::new();
        let mut unknown = Vec::new();
        let mut pending_reads = vec![0usize; n_values];
        for (i, op) in ops.iter().enumerate() {
            if let Kind::Read(v) = op.kind
                && let Some(count) = pending_reads.get_mut(v)
            {
                *count += 1;
            }
            match op.ret {
                Some(ret) => {
                    timeline.push((op.invoke, false, i));
                    timeline.push((ret, true, i));
                }
                None => unknown.push(i),
            }
        }
        // Calls sort before returns at equal instants (equal = concurrent).
        timeline.sort_unstable_by_key(|&(time, is_return, _)| (time, is_return));
        unknown.sort_by_key(|&i| ops[i].invoke);

        let mut slot = vec![0; ops.len()];
        for (rank, &op) in unknown.iter().enumerate() {
            slot[op] = rank;
        }
        let mut call_entry = vec![NIL; ops.len()];
        let mut ret_entry = vec![NIL; ops.len()];
        let mut entries = Vec::with_capacity(timeline.len() + 1);
        entries.push(Entry {
            op: NIL,
            is_call: false,
            prev: NIL,
            next: if timeline.is_empty() { NIL } else { 1 },
        });
        let mut finite = 0;
        for (k, &(_, is_return, op)) in timeline.iter().enumerate() {
            let idx = k + 1;
            entries.push(Entry {
                op,
                is_call: !is_return,
                prev: idx - 1,
                next: if idx < timeline.len() { idx + 1 } else { NIL },
            });
            if is_return {
                ret_entry[op] = idx;
            } else {
                call_entry[op] = idx;
                slot[op] = finite;
                finite += 1;
            }
        }
        Search {
            ops,
            slot,
            entries,
            call_entry,
            ret_entry,
            finite_bits: vec![0; finite.div_ceil(64)],
            unknown_bits: vec![0; unknown.len().div_ceil(64)],
            unknown,
            pending_reads,
            state: 0,
            finite,
            remaining: finite,
            cache: HashMap::new(),
            cached: 0,
            compared: 0,
            scratch: Vec::new(),
            best: Progress { done: 0, blocking: None, state: 0 },
        }
    }

    fn is_linearized(&self, op: usize) -> bool {
        if self.ops[op].ret.is_some() {
            bit(&self.finite_bits, self.slot[op])
        } else {
            bit(&self.unknown_bits, self.slot[op])
        }
    }

    fn dead(&self, value: usize) -> bool {
        self.pending_reads.get(value).is_none_or(|&n| n == 0)
    }

    fn unlink(&mut self, x: usize) {
        let (prev, next) = (self.entries[x].prev, self.entries[x].next);
        self.entries[prev].next = next;
        if next != NIL {
            self.entries[next].prev = prev;
        }
    }

    fn relink(&mut self, x: usize) {
        let (prev, next) = (self.entries[x].prev, self.entries[x].next);
        self.entries[prev].next = x;
        if next != NIL {
            self.entries[next].prev = x;
        }
    }

    /// Candidates at the current configuration, and the operation whose
    /// return bounds them.
    fn candidates(&self) -> (Vec<usize>, Option<usize>) {
        let mut calls = Vec::new();
        let mut blocking = None;
        let mut e = self.entries[0].next;
        while e != NIL {
            let entry = &self.entries[e];
            if !entry.is_call {
                blocking = Some(entry.op);
                break;
            }
            calls.push(entry.op);
            e = entry.next;
        }
        let state_dead = self.dead(self.state);
        let mut candidates = Vec::with_capacity(calls.len());
        // Values that a minimal GET returns (other than the current state).
        let mut wanted = Vec::new();
        for &op in &calls {
            match self.ops[op].kind {
                Kind::Read(v) if v == self.state => return (vec![op], blocking),
                Kind::Write(v) if state_dead && self.dead(v) => return (vec![op], blocking),
                Kind::Write(_) => candidates.push(op),
                Kind::Read(v) => {
                    if !wanted.contains(&v) {
                        wanted.push(v);
                    }
                }
            }
        }
        // An unknown write is only useful right before a GET of its value,
        // and in a shortest linearization that GET comes immediately after
        // it, so it must be minimal now. Pending unknown writes can go
        // anywhere from now on, so those writing the same value are
        // interchangeable: offer the earliest-invoked one per wanted value.
        let limit = blocking.and_then(|op| self.ops[op].ret);
        if let Some(limit) = limit {
            for &op in &self.unknown {
                if wanted.is_empty() || self.ops[op].invoke > limit {
                    break;
                }
                if let Kind::Write(v) = self.ops[op].kind
                    && !self.is_linearized(op)
                    && let Some(pos) = wanted.iter().position(|&w| w == v)
                {
                    wanted.swap_remove(pos);
                    candidates.push(op);
                }
            }
        }
        (candidates, blocking)
    }

    fn push_frame(&mut self, stack: &mut Vec<Frame>, applied: Option<(usize, usize)>) {
        let (candidates, blocking) = self.candidates();
        let done = self.finite - self.remaining;
        if applied.is_none() || done > self.best.done {
            self.best = Progress { done, blocking, state: self.state };
        }
        stack.push(Frame { candidates, next: 0, applied });
    }

    /// Marks `op` linearized (bit, read counts, entry list) with new state.
    fn apply(&mut self, op: usize, new_state: usize) {
        if let Kind::Read(v) = self.ops[op].kind {
            self.pending_reads[v] -= 1;
        }
        if self.ops[op].ret.is_some() {
            flip(&mut self.finite_bits, self.slot[op]);
            self.unlink(self.call_entry[op]);
            self.unlink(self.ret_entry[op]);
            self.remaining -= 1;
        } else {
            flip(&mut self.unknown_bits, self.slot[op]);
        }
        self.state = new_state;
    }

    /// Exact inverse of [`Search::apply`]; must be called in LIFO order.
    fn undo(&mut self, op: usize, prev_state: usize) {
        if let Kind::Read(v) = self.ops[op].kind {
            self.pending_reads[v] += 1;
        }
        if self.ops[op].ret.is_some() {
            flip(&mut self.finite_bits, self.slot[op]);
            self.relink(self.ret_entry[op]);
            self.relink(self.call_entry[op]);
            self.remaining += 1;
        } else {
            flip(&mut self.unknown_bits, self.slot[op]);
        }
        self.state = prev_state;
    }

    /// Records the current configuration; returns false if it (or one it
    /// subsumes) was already explored.
    fn remember(&mut self) -> bool {
        let bits = &self.finite_bits;
        let start = bits.iter().position(|&w| w != u64::MAX).unwrap_or(bits.len());
        let end = bits.iter().rposition(|&w| w != 0).map_or(start, |last| (last + 1).max(start));
        let state = if self.dead(self.state) { DEAD } else { self.state as u64 };
        self.scratch.clear();
        self.scratch.push(start as u64);
        self.scratch.push(state);
        self.scratch.extend_from_slice(bits.get(start..end).unwrap_or(&[]));
        let unknown = &self.unknown_bits;
        let is_subset = |seen: &[u64]| seen.iter().zip(unknown).all(|(s, u)| s & !u == 0);
        if let Some(seen) = self.cache.get_mut(self.scratch.as_slice()) {
            self.compared += seen.len();
            if seen.iter().any(|s| is_subset(s)) {
                return false;
            }
            seen.push(unknown.clone().into_boxed_slice());
        } else {
            let key = self.scratch.clone().into_boxed_slice();
            self.cache.insert(key, vec![unknown.clone().into_boxed_slice()]);
        }
        self.cached += 1;
        true
    }

    fn run(&mut self) -> Result<(), Failure> {
        if self.remaining == 0 {
            return Ok(());
        }
        let mut stack = Vec::new();
        self.push_frame(&mut stack, None);
        loop {
            let Some(top) = stack.last_mut() else {
                return Err(Failure::NotLinearizable(self.best));
            };
            let Some(&op) = top.candidates.get(top.next) else {
                if let Some(Frame { applied: Some((op, prev)), .. }) = stack.pop() {
                    self.undo(op, prev);
                }
                continue;
            };
            top.next += 1;
            let new_state = match self.ops[op].kind {
                Kind::Read(v) if v == self.state => v,
                Kind::Read(_) => continue,
                Kind::Write(v) => v,
            };
            let prev = self.state;
            self.apply(op, new_state);
            if !self.remember() {
                self.undo(op, prev);
                continue;
            }
            if self.remaining == 0 {
                return Ok(());
            }
            if self.cached >= MAX_CONFIGS || self.compared >= MAX_COMPARISONS {
                return Err(Failure::Budget(self.cached));
            }
            self.push_frame(&mut stack, Some((op, prev)));
        }
    }
}
