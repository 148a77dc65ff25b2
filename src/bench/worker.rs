//! One concurrent connection of the benchmark: a tokio task that claims up to `pipeline`
//! requests at a time, writes them, then reads the answers (a connection answers in request
//! order). The latency of a request runs from the moment its batch was written to the
//! moment its answer arrived, retries included.
//!
//! The keys of one batch are drawn at random among the keys of one slot, and a worker's
//! successive batches take the slots in turn: every batch is one write and one read on one
//! connection, as a pipeline is against a single Redis (redis-benchmark `--cluster` does the
//! same with hash tags), while over the run the keys spread evenly over every server.
//! Retried requests go to whichever server serves them by then.
//!
//! The request path allocates nothing and takes no lock: the batch buffers and the one
//! [`Op`] are reused, each worker counts into its own [`Report`], and the phase's shared
//! counters are relaxed atomics.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use crate::client::Client;
use crate::connection::Connection;
use crate::error::Error;
use crate::protocol::{ClientRequestRef, ClientResponse, Op};
use crate::routing::ClusterConfig;

use super::check::{Checked, check};
use super::keys::{KEY_LEN, key_of, value_words};
use super::options::BenchOp;
use super::phase::Phase;
use super::report::Report;

/// Longest wait for one answer before its request counts as lost (and is retried).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_BACKOFF: Duration = Duration::from_millis(20);

/// One request of a batch.
pub(super) struct Pending {
    pub(super) index: u64,
    pub(super) key: [u8; KEY_LEN],
    /// The key's slot (fixed for a run: which server serves it may change).
    slot: u32,
    /// When it was first tried: latencies and the retry deadline count from here.
    first_sent: Instant,
}

/// A request and its answer, with when the answer was read.
type Answered = (Pending, Result<ClientResponse, String>, Instant);

pub(super) struct Worker {
    rng: u64,
    /// Counts this worker's batches: batch `turn` draws its keys from slot `turn % n`.
    turn: u32,
    /// The configuration batches are routed with (kept here: the client's cached copy
    /// would cost a reference count per batch).
    config: Arc<ClusterConfig>,
    /// Refreshes the configuration, and holds the connection to every server.
    client: Client,
    /// Buffers kept from one batch to the next, so that a batch to one server allocates
    /// nothing: the requests, the same split by server id, their answers, and the requests
    /// to try again in the next batch.
    batch: Vec<Pending>,
    groups: Vec<Vec<Pending>>,
    answers: Vec<Answered>,
    retry: Vec<Pending>,
}

impl Worker {
    /// A worker connected to every server of `config`.
    pub(super) async fn connect(
        rng: u64,
        turn: u32,
        config: Arc<ClusterConfig>,
        client: Client,
    ) -> Result<Self, Error> {
        let mut worker = Worker {
            rng,
            turn,
            config,
            client,
            batch: Vec::new(),
            groups: Vec::new(),
            answers: Vec::new(),
            retry: Vec::new(),
        };
        for server in &worker.config.servers {
            worker.client.servers().open(server).await?;
        }
        Ok(worker)
    }

    /// Runs batches until the phase has no request left to claim or retry.
    pub(super) async fn run(&mut self, phase: &Phase) -> Report {
        let mut report = Report::new(phase.kind);
        // One operation reused for every request: no allocation per request.
        let mut op = match phase.op {
            BenchOp::Put => Op::Put { key: Vec::new(), value: Vec::new() },
            BenchOp::Get => Op::Get { key: Vec::new() },
        };
        loop {
            let mut batch = std::mem::take(&mut self.batch);
            batch.append(&mut self.retry);
            self.claim(phase, &mut batch);
            if batch.is_empty() {
                return report;
            }
            let mut groups = self.by_server(&mut batch);
            self.batch = batch;
            let mut refresh = self.send_all(&mut groups, phase, &mut op, &mut report).await;
            let mut answers = std::mem::take(&mut self.answers);
            self.read_all(&mut groups, &mut answers).await;
            self.groups = groups;
            refresh |= self.tally(&mut answers, phase, &mut report);
            self.answers = answers;
            if refresh {
                tokio::time::sleep(RETRY_BACKOFF).await;
                let deadline = Instant::now() + phase.timeout;
                if let Ok(config) = self.client.refresh_config(deadline).await {
                    self.config = config;
                }
                self.client.close_coordinator();
            }
        }
    }

    /// Tops `batch` up to the pipeline depth with newly claimed requests, all of this
    /// batch's slot (or, filling, the next keys in order).
    fn claim(&mut self, phase: &Phase, batch: &mut Vec<Pending>) {
        if batch.len() >= phase.pipeline {
            return;
        }
        let now = Instant::now();
        let (first, count) = phase.claim(phase.pipeline - batch.len());
        let slot = self.turn % self.config.len();
        self.turn = self.turn.wrapping_add(1);
        for seq in first..first + count as u64 {
            let (index, slot) = if phase.sequential {
                let index = seq % phase.keys.keyspace;
                (index, self.config.slot_of(&key_of(index)))
            } else {
                phase.keys.pick(slot, &mut self.rng)
            };
            batch.push(Pending { index, key: key_of(index), slot, first_sent: now });
        }
    }

    /// Moves `batch`'s requests into one group per server id: the server that serves each
    /// request's slot now.
    fn by_server(&mut self, batch: &mut Vec<Pending>) -> Vec<Vec<Pending>> {
        let mut groups = std::mem::take(&mut self.groups);
        groups.resize_with(self.config.servers.len(), Vec::new);
        for pending in batch.drain(..) {
            let id = self.config.serving[pending.slot as usize] as usize;
            groups[id].push(pending);
        }
        groups
    }

    /// Writes every group to its server; a group that could not be written is queued
    /// again (and emptied). True if the configuration should be fetched again.
    async fn send_all(
        &mut self,
        groups: &mut [Vec<Pending>],
        phase: &Phase,
        op: &mut Op,
        report: &mut Report,
    ) -> bool {
        let mut refresh = false;
        for (id, group) in groups.iter_mut().enumerate() {
            if group.is_empty() {
                continue;
            }
            if let Err(e) = self.send(id, group, phase, op).await {
                self.client.servers().forget(id as u32);
                refresh = true;
                for pending in group.drain(..) {
                    self.again(pending, phase, &e.to_string(), report);
                }
            }
        }
        refresh
    }

    /// Writes `group`'s requests to server `id` and flushes them.
    async fn send(
        &mut self,
        id: usize,
        group: &[Pending],
        phase: &Phase,
        op: &mut Op,
    ) -> Result<(), Error> {
        let conn = self.client.servers().open(&self.config.servers[id]).await?;
        let epoch = self.config.epoch;
        for pending in group.iter() {
            match op {
                Op::Put { key, value } => {
                    key.clear();
                    key.extend_from_slice(&pending.key);
                    value.clear();
                    value.extend(value_words(pending.index).flatten().take(phase.value_size));
                }
                Op::Get { key } | Op::Del { key } => {
                    key.clear();
                    key.extend_from_slice(&pending.key);
                }
            }
            conn.writer.feed(&ClientRequestRef { epoch, op }).await?;
        }
        conn.writer.flush().await
    }

    /// Reads the answers of every group written (emptying them): from one server directly
    /// (the usual case: a batch's keys share a slot), from several concurrently.
    async fn read_all(&mut self, groups: &mut [Vec<Pending>], answers: &mut Vec<Answered>) {
        let servers = self.client.servers();
        let mut busy = groups.iter().enumerate().filter(|(_, group)| !group.is_empty());
        if let (Some((id, _)), None) = (busy.next(), busy.next()) {
            if read_answers(servers.get(id as u32), &mut groups[id], answers).await {
                servers.forget(id as u32);
            }
            return;
        }
        let reads = servers
            .each_mut()
            .zip(groups.iter_mut())
            .enumerate()
            .filter(|(_, (_, group))| !group.is_empty())
            .map(|(id, (conn, group))| async move {
                let mut answers = Vec::with_capacity(group.len());
                let failed = read_answers(conn, group, &mut answers).await;
                (id as u32, failed, answers)
            });
        for (id, failed, part) in join_all(reads).await {
            if failed {
                servers.forget(id);
            }
            answers.extend(part);
        }
    }

    /// Counts every answer (emptying `answers`) and queues those to try again. True if
    /// any of them calls for a fresh configuration.
    fn tally(&mut self, answers: &mut Vec<Answered>, phase: &Phase, report: &mut Report) -> bool {
        let mut refresh = false;
        for (pending, answer, at) in answers.drain(..) {
            match check(phase, &pending, answer) {
                Checked::Ok { absent } => {
                    report.success(at.duration_since(pending.first_sent), absent);
                    if phase.op == BenchOp::Put {
                        phase.stored.set(pending.index);
                    }
                    phase.count_done();
                }
                Checked::Retry(why) => {
                    refresh = true;
                    self.again(pending, phase, &why, report);
                }
                Checked::Error(why) => {
                    report.error(why);
                    phase.count_done();
                }
            }
        }
        refresh
    }

    /// Queues `pending` for another attempt, or counts an error once its deadline passed.
    fn again(&mut self, pending: Pending, phase: &Phase, why: &str, report: &mut Report) {
        let expired = pending.first_sent.elapsed() >= phase.timeout;
        if expired {
            let key = String::from_utf8_lossy(&pending.key).into_owned();
            report.error(format!(
                "{} {key}: gave up after {:?}: {why}",
                phase.op.name(),
                phase.timeout
            ));
            report.gave_up += 1;
            phase.stop();
            phase.count_done();
        } else {
            report.retries += 1;
            self.retry.push(pending);
        }
    }
}

/// Reads one answer per request of `group`, in order, within [`ANSWER_TIMEOUT`] for the
/// group (emptying it). After a failure the rest of the group gets the same error, and the
/// result is true: the caller drops the connection. The clock is read only when an answer
/// had to be waited for: answers that came in one read arrived together.
async fn read_answers(
    mut conn: Option<&mut Connection>,
    group: &mut Vec<Pending>,
    out: &mut Vec<Answered>,
) -> bool {
    let mut failed: Option<String> = None;
    let mut at = Instant::now();
    let deadline = at + ANSWER_TIMEOUT;
    for pending in group.drain(..) {
        let answer = match (&failed, conn.as_deref_mut()) {
            (Some(why), _) => Err(why.clone()),
            (None, None) => Err("not connected".to_string()),
            (None, Some(conn)) => {
                let waited = !conn.reader.has_complete_frame();
                let answer = match tokio::time::timeout_at(deadline, conn.reader.recv()).await {
                    Ok(Ok(Some(answer))) => Ok(answer),
                    Ok(Ok(None)) => Err(Error::Closed.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(Error::Timeout("waiting for an answer").to_string()),
                };
                if waited {
                    at = Instant::now();
                }
                if let Err(why) = &answer {
                    failed = Some(why.clone());
                }
                answer
            }
        };
        out.push((pending, answer, at));
    }
    failed.is_some()
}
