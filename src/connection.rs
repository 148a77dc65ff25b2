//! One framed TCP connection: length-prefixed bincode frames, a size limit, deadlines.
//!
//! Every read that has started must finish within a deadline (a peer that sends one byte
//! and holds cannot pin a task forever), and no frame may exceed [`MAX_FRAME_LEN`], checked
//! from the length prefix before anything is allocated.

use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::protocol::{Hello, MAX_FRAME_LEN, PROTOCOL_VERSION, Role};

/// How long a peer may take to finish a frame it has started, and to send its hello.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(5);
/// How long a connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_FRAME_LEN>,
>;

/// Bincode settings: the limit bounds every allocation a hostile length field could ask for.
fn bincode_config() -> Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// A read asks the kernel for at least this much room.
const READ_CHUNK: usize = 16 * 1024;
/// An empty buffer larger than this (after a big frame) is given back.
const KEEP_BUFFER: usize = 1 << 20;
/// Queued output beyond this is written out before more is queued.
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Lets bincode encode straight into a connection's write buffer (no payload copy).
struct BufWriter<'a>(&'a mut BytesMut);

impl bincode::enc::write::Writer for BufWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::result::Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Appends one frame (big-endian u32 length, then the bincode payload) to `buf`; on error
/// `buf` is left as it was.
fn encode_frame<T: Serialize>(buf: &mut BytesMut, msg: &T) -> Result<()> {
    let start = buf.len();
    buf.put_u32(0);
    let encoded = bincode::serde::encode_into_writer(msg, BufWriter(buf), bincode_config());
    let len = buf.len() - start - 4;
    if let Err(e) = encoded {
        buf.truncate(start);
        return Err(Error::Malformed(e.to_string()));
    }
    if len > MAX_FRAME_LEN {
        buf.truncate(start);
        return Err(Error::FrameTooLarge { max: MAX_FRAME_LEN });
    }
    buf[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Serializes one message into a frame payload (what a frame carries after its length).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(msg, bincode_config())
        .map_err(|e| Error::Malformed(e.to_string()))
}

/// Parses one frame payload; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    let (msg, used) = bincode::serde::decode_from_slice(payload, bincode_config())
        .map_err(|e| Error::Malformed(e.to_string()))?;
    if used != payload.len() {
        return Err(Error::Malformed(format!("{} trailing bytes", payload.len() - used)));
    }
    Ok(msg)
}

/// The receiving half of a [`Connection`].
///
/// Frames are split off a plain buffer rather than by a `FramedRead`: a frame already
/// buffered is decoded in place, with no copy and no timer, and waiting between frames arms
/// no timer either (a deadline per message showed in the profiles as clock reads and timer
/// wheel updates on every request). The length stays in the buffer until the whole frame is
/// there, so "a frame has started" is simply "the buffer is not empty", and nothing is
/// reserved for a frame's announced size beyond what has arrived (a hostile length costs no
/// memory).
pub struct ConnReader {
    stream: OwnedReadHalf,
    buf: BytesMut,
}

impl ConnReader {
    /// Waits for the next message. `Ok(None)` is a clean end of stream between frames.
    /// Waiting for a frame to *start* is unbounded (idle connections are fine); once its
    /// first byte has arrived it must complete within [`FRAME_DEADLINE`] of this call (time
    /// the caller spent not reading does not count against the peer). Cancel-safe: a dropped
    /// call loses nothing that was read.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        let mut deadline = None;
        loop {
            if let Some(len) = self.complete_frame_len()? {
                let msg = decode(&self.buf[4..4 + len]);
                // `capacity()` counts from the read position: look before consuming.
                if self.buf.len() == 4 + len && self.buf.capacity() > KEEP_BUFFER {
                    self.buf = BytesMut::new();
                } else {
                    self.buf.advance(4 + len);
                }
                return msg.map(Some);
            }
            if self.buf.is_empty() {
                if self.fill().await? == 0 {
                    return Ok(None);
                }
                continue;
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + FRAME_DEADLINE);
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Ok(Ok(0)) => return Err(Error::Malformed("connection closed mid-frame".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Error::Timeout("waiting for the rest of a frame")),
            }
        }
    }

    /// Like [`recv`](Self::recv), but the whole wait is bounded and end of stream is an error.
    pub async fn recv_within<T: DeserializeOwned>(
        &mut self,
        limit: Duration,
        what: &'static str,
    ) -> Result<T> {
        match tokio::time::timeout(limit, self.recv()).await {
            Ok(Ok(Some(msg))) => Ok(msg),
            Ok(Ok(None)) => Err(Error::Closed),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout(what)),
        }
    }

    /// Whether this idle connection is no longer usable for a request: the peer closed or
    /// reset it, or sent something nobody asked for. Asks the kernel directly (a peek that
    /// does not wait) rather than the runtime, which may not have seen the peer's close yet.
    /// A client checks before reusing a connection, so that a request whose answer would
    /// be lost is never sent into a connection that was already gone.
    pub fn unusable_when_idle(&self) -> bool {
        use std::os::fd::AsRawFd;
        if !self.buf.is_empty() {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: a one-byte read into a live local, on a descriptor this half keeps open.
        let read = unsafe {
            libc::recv(
                self.stream.as_ref().as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        read >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
    }

    /// True when a whole frame is already buffered, so the next `recv` returns without
    /// waiting: used to batch answers before flushing.
    pub fn has_complete_frame(&self) -> bool {
        matches!(self.complete_frame_len(), Ok(Some(_)))
    }

    /// The payload length of the frame at the front of the buffer, if it is all there; an
    /// oversized length is refused as soon as its 4 bytes are in.
    fn complete_frame_len(&self) -> Result<Option<usize>> {
        let Some(head) = self.buf.first_chunk::<4>() else { return Ok(None) };
        let len = u32::from_be_bytes(*head) as usize;
        if len > MAX_FRAME_LEN {
            return Err(Error::FrameTooLarge { max: MAX_FRAME_LEN });
        }
        Ok((self.buf.len() - 4 >= len).then_some(len))
    }

    /// Reads what has arrived; 0 at end of stream. Room grows with what has arrived (at
    /// most doubling), never with what a length prefix announces.
    async fn fill(&mut self) -> Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK.max(self.buf.len()));
        }
        Ok(self.stream.read_buf(&mut self.buf).await?)
    }
}

/// The sending half of a [`Connection`]: messages are encoded straight into one buffer and
/// written out by [`flush`](Self::flush), one system call for many frames.
pub struct ConnWriter {
    stream: OwnedWriteHalf,
    buf: BytesMut,
}

impl ConnWriter {
    /// Queues a message without writing anything; a message that cannot be encoded (or is
    /// too large) leaves the queue as it was.
    pub fn queue<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        encode_frame(&mut self.buf, msg)
    }

    /// Queues a message, writing out what is queued once it is large: call
    /// [`flush`](Self::flush) after a batch.
    pub async fn feed<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        self.queue(msg)?;
        self.flush_if_full().await
    }

    /// Writes out what is queued if it is large (after [`queue`](Self::queue) in a loop).
    pub async fn flush_if_full(&mut self) -> Result<()> {
        if self.buf.len() >= WRITE_HIGH_WATER {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes out everything queued. Cancel-safe: what was not written stays queued.
    pub async fn flush(&mut self) -> Result<()> {
        // `capacity()` counts from the write position: look before writing.
        let big = self.buf.capacity() > KEEP_BUFFER;
        while !self.buf.is_empty() {
            if self.stream.write_buf(&mut self.buf).await? == 0 {
                return Err(Error::Io(std::io::ErrorKind::WriteZero.into()));
            }
        }
        if big {
            self.buf = BytesMut::new();
        }
        Ok(())
    }

    /// Sends one message at once.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        self.queue(msg)?;
        self.flush().await
    }

    /// Caps the kernel's send buffer of this socket at about `bytes` (SO_SNDBUF, which
    /// also turns its growth off): for a peer that may stop reading, what waits for it stays
    /// small, and a write to it blocks soon enough for a deadline to notice.
    pub fn cap_send_buffer(&self, bytes: usize) -> Result<()> {
        use std::os::fd::AsRawFd;
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: an int option read from a live local, on a descriptor this half keeps open.
        let set = unsafe {
            libc::setsockopt(
                self.stream.as_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        match set {
            0 => Ok(()),
            _ => Err(Error::Io(std::io::Error::last_os_error())),
        }
    }
}

/// A framed connection; [`split`](Self::split) it to read and write from separate tasks.
pub struct Connection {
    pub reader: ConnReader,
    pub writer: ConnWriter,
}

impl Connection {
    pub fn new(stream: TcpStream) -> Result<Self> {
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Connection {
            reader: ConnReader { stream: read, buf: BytesMut::new() },
            writer: ConnWriter { stream: write, buf: BytesMut::new() },
        })
    }

    /// Connects with [`CONNECT_TIMEOUT`] and sends the hello.
    pub async fn connect(addr: &str, hello: &Hello) -> Result<Self> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout("connecting"))??;
        let mut conn = Connection::new(stream)?;
        conn.writer.send(hello).await?;
        Ok(conn)
    }

    /// Reads and checks the hello of a connection just accepted: version, and a role that
    /// `allowed` accepts. `token` is the cluster token this port requires (empty: none).
    pub async fn accept_hello(
        &mut self,
        allowed: impl Fn(Role) -> bool,
        token: &[u8],
    ) -> Result<Role> {
        let hello: Hello = self.reader.recv_within(FRAME_DEADLINE, "waiting for the hello").await?;
        if hello.version != PROTOCOL_VERSION {
            return Err(Error::Protocol(format!(
                "protocol version {} (expected {PROTOCOL_VERSION})",
                hello.version
            )));
        }
        if !allowed(hello.role) {
            return Err(Error::Protocol(format!(
                "role {:?} not accepted on this port",
                hello.role
            )));
        }
        // Constant time: a peer must not learn from the answer's timing how much it got right.
        if !bool::from(hello.token.ct_eq(token)) {
            return Err(Error::Protocol(crate::lines::WRONG_TOKEN.into()));
        }
        Ok(hello.role)
    }

    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        self.writer.send(msg).await
    }

    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        self.reader.recv().await
    }

    /// One request, one answer, bounded by `limit`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        request: &Req,
        limit: Duration,
        what: &'static str,
    ) -> Result<Resp> {
        tokio::time::timeout(limit, async {
            self.writer.send(request).await?;
            self.reader.recv_within(limit, what).await
        })
        .await
        .map_err(|_| Error::Timeout(what))?
    }

    pub fn split(self) -> (ConnReader, ConnWriter) {
        (self.reader, self.writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientRequest, Op};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A connected pair: our framed end and the raw peer socket.
    async fn pair() -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let raw = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (Connection::new(accepted).unwrap(), raw)
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn round_trip() {
        let (mut conn, raw) = pair().await;
        let mut peer = Connection::new(raw).unwrap();
        let request =
            ClientRequest { epoch: 7, op: Op::Put { key: b"k".to_vec(), value: vec![0, 255] } };
        peer.send(&request).await.unwrap();
        assert_eq!(conn.recv::<ClientRequest>().await.unwrap(), Some(request));
        drop(peer);
        assert_eq!(conn.recv::<ClientRequest>().await.unwrap(), None, "clean end of stream");
    }

    #[tokio::test]
    async fn many_frames_and_big_frames_arrive_whole_and_in_order() {
        let (mut conn, raw) = pair().await;
        let mut peer = Connection::new(raw).unwrap();
        let big = vec![7u8; 3 << 20]; // read in many pieces
        let requests: Vec<ClientRequest> = (0..100u64)
            .map(|i| {
                let value = if i == 50 { big.clone() } else { i.to_be_bytes().to_vec() };
                ClientRequest { epoch: i, op: Op::Put { key: b"k".to_vec(), value } }
            })
            .collect();
        let sent = requests.clone();
        let sender = tokio::spawn(async move {
            for request in &sent {
                peer.writer.feed(request).await.unwrap();
            }
            peer.writer.flush().await.unwrap();
        });
        for request in requests {
            assert_eq!(conn.recv::<ClientRequest>().await.unwrap(), Some(request));
        }
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn buffers_grown_by_a_big_frame_are_given_back() {
        let (mut conn, raw) = pair().await;
        let mut peer = Connection::new(raw).unwrap();
        let big =
            ClientRequest { epoch: 1, op: Op::Put { key: b"k".to_vec(), value: vec![7; 3 << 20] } };
        peer.send(&big).await.unwrap();
        assert_eq!(conn.recv::<ClientRequest>().await.unwrap(), Some(big));
        // `reserve` would take the whole old allocation back if it were still held.
        peer.writer.buf.reserve(1);
        assert!(peer.writer.buf.capacity() < KEEP_BUFFER, "write buffer kept");
        conn.reader.buf.reserve(1);
        assert!(conn.reader.buf.capacity() < KEEP_BUFFER, "read buffer kept");
    }

    #[tokio::test]
    async fn a_message_too_large_to_send_leaves_the_queue_as_it_was() {
        let (mut conn, _raw) = pair().await;
        conn.writer.queue(&ClientRequest { epoch: 1, op: Op::Get { key: b"k".to_vec() } }).unwrap();
        let queued = conn.writer.buf.clone();
        let huge = Op::Put { key: b"k".to_vec(), value: vec![0; MAX_FRAME_LEN] };
        let err = conn.writer.queue(&ClientRequest { epoch: 1, op: huge }).unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { .. }), "{err}");
        assert_eq!(conn.writer.buf, queued);
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_from_its_prefix() {
        let (mut conn, mut raw) = pair().await;
        raw.write_all(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes()).await.unwrap();
        let err = conn.recv::<ClientRequest>().await.unwrap_err();
        assert!(matches!(err, Error::FrameTooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (mut conn, mut raw) = pair().await;
        raw.write_all(&frame(&[1, 2, 3, 4, 5])[..6]).await.unwrap();
        drop(raw);
        let err = conn.recv::<ClientRequest>().await.unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_not_reading_does_not_count_against_the_peer() {
        let (mut conn, mut raw) = pair().await;
        let request = ClientRequest { epoch: 1, op: Op::Get { key: b"k".to_vec() } };
        let bytes = frame(&encode(&request).unwrap());
        raw.write_all(&bytes[..3]).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(10), conn.recv::<ClientRequest>());
        assert!(waited.await.is_err(), "half a frame: still waiting");
        tokio::time::sleep(FRAME_DEADLINE * 2).await; // the caller was busy elsewhere
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            raw.write_all(&bytes[3..]).await.unwrap();
            raw
        });
        assert_eq!(conn.recv::<ClientRequest>().await.unwrap(), Some(request));
        drop(rest.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_frame_times_out() {
        let (mut conn, mut raw) = pair().await;
        raw.write_all(&[0, 0, 0, 10, 1]).await.unwrap();
        let err = conn.recv::<ClientRequest>().await.unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bare_length_prefix_meets_the_frame_deadline() {
        let (mut conn, mut raw) = pair().await;
        raw.write_all(&(MAX_FRAME_LEN as u32).to_be_bytes()).await.unwrap();
        let err = conn.recv::<ClientRequest>().await.unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        assert!(conn.reader.buf.capacity() < 1 << 20, "nothing reserved for the announced size");
    }

    #[tokio::test]
    async fn a_length_prefix_then_close_is_malformed() {
        let (mut conn, mut raw) = pair().await;
        raw.write_all(&10u32.to_be_bytes()).await.unwrap();
        drop(raw);
        let err = conn.recv::<ClientRequest>().await.unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");
    }

    #[tokio::test]
    async fn complete_frames_are_told_from_partial_ones() {
        let (mut conn, mut raw) = pair().await;
        let request = ClientRequest { epoch: 1, op: Op::Get { key: b"k".to_vec() } };
        let mut bytes = frame(&encode(&request).unwrap());
        let second = bytes.clone();
        bytes.extend_from_slice(&second[..second.len() - 1]);
        raw.write_all(&bytes).await.unwrap();
        assert_eq!(conn.recv::<ClientRequest>().await.unwrap(), Some(request));
        assert!(!conn.reader.has_complete_frame(), "the second frame lacks a byte");
        raw.write_all(&second[second.len() - 1..]).await.unwrap();
        assert!(conn.recv::<ClientRequest>().await.unwrap().is_some());
    }

    #[tokio::test]
    async fn unknown_message_and_trailing_bytes_are_refused() {
        let (mut conn, mut raw) = pair().await;
        // Variant index 200 of `Op` does not exist.
        raw.write_all(&frame(&[7, 200, 1, b'k'])).await.unwrap();
        let err = conn.recv::<ClientRequest>().await.unwrap_err();
        assert!(matches!(err, Error::Malformed(_)), "{err}");
        let mut good = encode(&ClientRequest { epoch: 1, op: Op::Get { key: b"k".to_vec() } })
            .unwrap()
            .to_vec();
        good.push(0);
        raw.write_all(&frame(&good)).await.unwrap();
        let err = conn.recv::<ClientRequest>().await.unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
    }

    #[tokio::test]
    async fn hostile_length_fields_do_not_allocate() {
        // A key claiming 2^60 bytes inside a small frame.
        let mut payload = vec![1, 1]; // epoch 1, Op::Get
        payload.push(0xff); // varint u64 marker
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<ClientRequest>(&payload).is_err());
    }

    #[tokio::test]
    async fn hello_checks_version_role_and_token() {
        let (mut conn, raw) = pair().await;
        let mut peer = Connection::new(raw).unwrap();
        peer.send(&Hello { version: PROTOCOL_VERSION + 1, role: Role::Client, token: vec![] })
            .await
            .unwrap();
        let err = conn.accept_hello(|_| true, &[]).await.unwrap_err();
        assert!(err.to_string().contains("protocol version"), "{err}");

        let (mut conn, raw) = pair().await;
        let mut peer = Connection::new(raw).unwrap();
        peer.send(&Hello::new(Role::Client, &[])).await.unwrap();
        let err = conn.accept_hello(|r| r == Role::Coordinator, &[]).await.unwrap_err();
        assert!(err.to_string().contains("role"), "{err}");

        let (mut conn, raw) = pair().await;
        let mut peer = Connection::new(raw).unwrap();
        peer.send(&Hello::new(Role::Coordinator, b"wrong")).await.unwrap();
        let err = conn.accept_hello(|_| true, b"secret").await.unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");

        let (mut conn, raw) = pair().await;
        let mut peer = Connection::new(raw).unwrap();
        peer.send(&Hello::new(Role::Coordinator, b"secret")).await.unwrap();
        assert_eq!(conn.accept_hello(|_| true, b"secret").await.unwrap(), Role::Coordinator);
    }

    #[test]
    fn borrowed_requests_encode_like_owned_ones() {
        use crate::protocol::ClientRequestRef;
        let op = Op::Put { key: b"k".to_vec(), value: vec![0, 255] };
        let owned = ClientRequest { epoch: 9, op: op.clone() };
        assert_eq!(
            encode(&owned).unwrap(),
            encode(&ClientRequestRef { epoch: 9, op: &op }).unwrap()
        );
    }

    #[test]
    fn borrowed_answers_encode_like_owned_ones() {
        use crate::protocol::{ClientResponse, ClientResponseRef};
        for value in [None, Some(vec![]), Some(vec![1, 2, 3])] {
            assert_eq!(
                encode(&ClientResponse::Value(value.clone())).unwrap(),
                encode(&ClientResponseRef::Value(value.as_deref())).unwrap()
            );
        }
        assert_eq!(
            encode(&ClientResponse::Stored).unwrap(),
            encode(&ClientResponseRef::Stored).unwrap()
        );
    }

    #[test]
    fn borrowed_batches_encode_like_owned_ones() {
        use crate::protocol::{ReplMessage, ReplMessageRef, TableKind};
        let ops =
            vec![Op::Put { key: b"k".to_vec(), value: vec![1, 2] }, Op::Del { key: b"d".to_vec() }];
        let owned = ReplMessage::Batch { first_seq: 7, ops: ops.clone() };
        let borrowed = ReplMessageRef::Batch { first_seq: 7, ops: ops.iter().collect() };
        assert_eq!(encode(&owned).unwrap(), encode(&borrowed).unwrap());
        let open = ReplMessage::Open {
            into: TableKind::Primary,
            epoch: 3,
            target_incarnation: 2,
            stream: 9,
        };
        let open_ref = ReplMessageRef::Open {
            into: TableKind::Primary,
            epoch: 3,
            target_incarnation: 2,
            stream: 9,
        };
        assert_eq!(encode(&open).unwrap(), encode(&open_ref).unwrap());
    }
}
