//! The clients port: operations in, answers out, in order, pipelined.
//!
//! A reader task parses requests and submits writes to the replication stream at once (so
//! pipelined writes share batches); a writer task answers in request order. GETs are
//! evaluated by the writer when their turn comes, after every earlier write on the same
//! connection was applied, so a pipelining client reads its own writes.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::protocol::{ClientRequest, ClientResponse, Op};
use crate::server::{Applied, Server};

/// Most requests read ahead of their answers on one connection.
const PIPELINE_DEPTH: usize = 1024;

enum Answer {
    Now(ClientResponse),
    Get { key: Vec<u8>, epoch: u64 },
    Write(oneshot::Receiver<Applied>),
}

pub async fn serve(server: Arc<Server>, conn: Connection) -> Result<()> {
    let (mut reader, mut writer) = conn.split();
    let (tx, mut rx) = mpsc::channel::<Answer>(PIPELINE_DEPTH);

    let answers = {
        let server = server.clone();
        async move {
            while let Some(answer) = rx.recv().await {
                let response = match answer {
                    Answer::Now(response) => response,
                    Answer::Get { key, epoch } => match server.read(&key, epoch) {
                        Ok(value) => ClientResponse::Value(value),
                        Err(refusal) => ClientResponse::Refused(refusal),
                    },
                    Answer::Write(done) => match done.await {
                        Ok(Applied::Stored) => ClientResponse::Stored,
                        Ok(Applied::Deleted { existed }) => ClientResponse::Deleted { existed },
                        // Shutting down with the write in flight: its outcome is unknown,
                        // so close without an answer rather than claim either way.
                        Err(_) => return Err(Error::Closed),
                    },
                };
                writer.feed(&response).await?;
                if rx.is_empty() {
                    writer.flush().await?;
                }
            }
            Ok::<(), Error>(())
        }
    };

    let requests = async move {
        while let Some(request) = reader.recv::<ClientRequest>().await? {
            let answer = accept(&server, request).await;
            if tx.send(answer).await.is_err() {
                break;
            }
        }
        Ok::<(), Error>(())
    };

    let (read, written) = tokio::join!(requests, answers);
    read.and(written)
}

async fn accept(server: &Server, ClientRequest { epoch, op }: ClientRequest) -> Answer {
    if let Err(refusal) = op.check_limits() {
        return Answer::Now(ClientResponse::Refused(refusal));
    }
    if let Op::Get { key } = op {
        return Answer::Get { key, epoch };
    }
    match server.write(op, epoch).await {
        Ok(done) => Answer::Write(done),
        Err(refusal) => Answer::Now(ClientResponse::Refused(refusal)),
    }
}
