//! The connections a client keeps open to the servers, one per server id.
//!
//! One type for both users, so that they reconnect by the same rule: the client's
//! one-operation-at-a-time path and the load generator's pipelined workers (each worker
//! owns a [`Client`](super::Client) and sends its batches over that client's connections).

use crate::connection::Connection;
use crate::error::Error;
use crate::protocol::{Hello, Role};
use crate::routing::ServerAddr;

/// Open connections by server id (ids are indices: a valid configuration numbers its
/// servers 0..n), each with the address it was opened to: a new start of a server may have
/// a new address, and a connection to the old one is then of no use.
#[derive(Default)]
pub(crate) struct ServerConns(Vec<Option<Open>>);

struct Open {
    host: String,
    port: u16,
    conn: Connection,
}

impl ServerConns {
    /// The connection to `server`, opened if none is open to its current address. The
    /// address is compared field by field: formatting it for every bench batch cost more
    /// than the rest of the batch's bookkeeping.
    pub(crate) async fn open(&mut self, server: &ServerAddr) -> Result<&mut Connection, Error> {
        let id = server.id as usize;
        if self.0.len() <= id {
            self.0.resize_with(id + 1, || None);
        }
        let slot = &mut self.0[id];
        if !slot.as_ref().is_some_and(|o| o.host == server.host && o.port == server.client_port) {
            *slot = None;
            let conn =
                Connection::connect(&server.client_addr(), &Hello::new(Role::Client, &[])).await?;
            *slot = Some(Open { host: server.host.clone(), port: server.client_port, conn });
        }
        Ok(&mut slot.as_mut().expect("opened above").conn)
    }

    /// The open connection to server `id`, if any.
    pub(crate) fn get(&mut self, id: u32) -> Option<&mut Connection> {
        self.0.get_mut(id as usize)?.as_mut().map(|open| &mut open.conn)
    }

    /// Every server's connection, by id (shorter than the configuration when the last ones
    /// were never opened): for reading from several servers at once.
    pub(crate) fn each_mut(&mut self) -> impl Iterator<Item = Option<&mut Connection>> {
        self.0.iter_mut().map(|slot| slot.as_mut().map(|open| &mut open.conn))
    }

    /// Closes the connection to server `id`: after a failure, or when a late answer may
    /// still come on it.
    pub(crate) fn forget(&mut self, id: u32) {
        if let Some(slot) = self.0.get_mut(id as usize) {
            *slot = None;
        }
    }

    /// Closes the idle connection to server `id` if its peer closed it or sent something
    /// unasked, so that a request whose answer would be lost is never sent into it. Costs a
    /// system call: the client does it before each operation; the load generator does not
    /// (it would be one more per batch on the measured path, and the bench retries a request
    /// whose answer was lost, which the client may not do with a write).
    pub(crate) fn forget_if_unusable(&mut self, id: u32) {
        if self.get(id).is_some_and(|conn| conn.reader.unusable_when_idle()) {
            self.forget(id);
        }
    }
}
