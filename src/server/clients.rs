//! The clients port: operations in, answers out, in order, pipelined.
//!
//! One task per connection. It reads requests as they come (up to [`PIPELINE_DEPTH`] ahead
//! of their answers), queues writes on the replication stream at once (so pipelined writes
//! share batches), and answers in request order. A GET is evaluated when its turn comes,
//! after every earlier write on the same connection was applied, so a pipelining client
//! reads its own writes. Answers are flushed when no further request is already buffered:
//! one write system call for a whole pipeline.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::connection::{ConnWriter, Connection};
use crate::error::{Error, Result};
use crate::protocol::{ClientRequest, ClientResponse, ClientResponseRef, Op, OpKind};
use crate::server::{Applied, Outcome, Server};

/// Most requests read ahead of their answers on one connection.
const PIPELINE_DEPTH: usize = 1024;

enum Answer {
    Now(ClientResponse),
    Get {
        key: Vec<u8>,
        epoch: u64,
    },
    /// A PUT or DEL in flight.
    Write(OpKind, oneshot::Receiver<Outcome>),
}

enum Event {
    Request(Result<Option<ClientRequest>>),
    Applied(Result<Outcome, oneshot::error::RecvError>),
}

fn applied(applied: Applied) -> ClientResponse {
    match applied {
        Applied::Stored => ClientResponse::Stored,
        Applied::Deleted { existed } => ClientResponse::Deleted { existed },
    }
}

pub async fn serve(server: Arc<Server>, conn: Connection) -> Result<()> {
    let (mut reader, mut writer) = conn.split();
    let mut queue: VecDeque<Answer> = VecDeque::new();
    let mut open = true;
    let mut failed = None;
    let mut unflushed = false;
    loop {
        unflushed |= answer_ready(&server, &mut queue, &mut writer).await?;
        if !open && queue.is_empty() {
            break;
        }
        if unflushed && !reader.has_complete_frame() {
            writer.flush().await?;
            unflushed = false;
        }
        let room = open && queue.len() < PIPELINE_DEPTH;
        let event = {
            let head_write = async {
                match queue.front_mut() {
                    Some(Answer::Write(_, done)) => done.await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                request = reader.recv::<ClientRequest>(), if room => Event::Request(request),
                done = head_write => Event::Applied(done),
            }
        };
        match event {
            Event::Request(Ok(Some(request))) => queue.push_back(accept(&server, request).await),
            Event::Request(Ok(None)) => open = false,
            Event::Request(Err(e)) => {
                // Malformed or cut input: answer what was already accepted, then close.
                open = false;
                failed = Some(e);
            }
            Event::Applied(done) => {
                // Shutting down with the write in flight: its outcome is unknown, so close
                // without an answer rather than claim either way.
                let done = done.map_err(|_| Error::Closed)?;
                if let Some(Answer::Write(kind, _)) = queue.pop_front() {
                    server.ops.count(kind, done.is_ok());
                }
                match done {
                    Ok(done) => writer.feed(&applied(done)).await?,
                    Err(refusal) => writer.feed(&ClientResponse::Refused(refusal)).await?,
                }
                unflushed = true;
            }
        }
    }
    writer.flush().await?;
    failed.map_or(Ok(()), Err)
}

/// Writes (without flushing) every answer at the head of the queue that is ready; returns
/// whether it wrote any.
async fn answer_ready(
    server: &Server,
    queue: &mut VecDeque<Answer>,
    writer: &mut ConnWriter,
) -> Result<bool> {
    let mut wrote = false;
    while let Some(front) = queue.front_mut() {
        match front {
            Answer::Now(response) => writer.queue(response)?,
            Answer::Get { key, epoch } => server.read(key, *epoch, |value| {
                server.ops.count(OpKind::Get, value.is_ok());
                match value {
                    Ok(value) => writer.queue(&ClientResponseRef::Value(value)),
                    Err(refusal) => writer.queue(&ClientResponse::Refused(refusal)),
                }
            })?,
            Answer::Write(kind, done) => match done.try_recv() {
                Ok(Ok(done)) => {
                    server.ops.count(*kind, true);
                    writer.queue(&applied(done))?
                }
                Ok(Err(refusal)) => {
                    server.ops.count(*kind, false);
                    writer.queue(&ClientResponse::Refused(refusal))?
                }
                Err(oneshot::error::TryRecvError::Empty) => break,
                Err(oneshot::error::TryRecvError::Closed) => return Err(Error::Closed),
            },
        }
        queue.pop_front();
        writer.flush_if_full().await?;
        wrote = true;
    }
    Ok(wrote)
}

async fn accept(server: &Server, ClientRequest { epoch, op }: ClientRequest) -> Answer {
    let kind = OpKind::of(&op);
    if let Err(refusal) = op.check_limits() {
        server.ops.count(kind, false);
        return Answer::Now(ClientResponse::Refused(refusal));
    }
    if let Op::Get { key } = op {
        return Answer::Get { key, epoch };
    }
    match server.write(op, epoch).await {
        Ok(done) => Answer::Write(kind, done),
        Err(refusal) => {
            server.ops.count(kind, false);
            Answer::Now(ClientResponse::Refused(refusal))
        }
    }
}
