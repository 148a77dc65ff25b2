//! One framed TCP connection: length-prefixed bincode frames, a size limit, deadlines.
//!
//! Every read that has started must finish within a deadline (a peer that sends one byte
//! and holds cannot pin a task forever), and no frame may exceed [`MAX_FRAME_LEN`], checked
//! from the length prefix before anything is allocated.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{Decoder, FramedRead, FramedWrite, LengthDelimitedCodec};

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

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(MAX_FRAME_LEN).new_codec()
}

/// Splits frames (a big-endian u32 length, then that many bytes) off the read buffer. Unlike
/// `LengthDelimitedCodec`, it leaves the length in the buffer until the whole frame is there,
/// so "a frame has started" is simply "the buffer is not empty" (a peer that sends a bare
/// length and stops still meets the frame deadline), and it reserves nothing for a frame's
/// announced size (a hostile length costs no memory).
struct FrameDecoder;

impl Decoder for FrameDecoder {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> std::io::Result<Option<BytesMut>> {
        let Some(head) = src.first_chunk::<4>() else { return Ok(None) };
        let len = u32::from_be_bytes(*head) as usize;
        if len > MAX_FRAME_LEN {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "frame too large"));
        }
        if src.len() - 4 < len {
            return Ok(None);
        }
        src.advance(4);
        Ok(Some(src.split_to(len)))
    }
}

/// Serializes one message into a frame payload.
pub fn encode<T: Serialize>(msg: &T) -> Result<Bytes> {
    bincode::serde::encode_to_vec(msg, bincode_config())
        .map(Bytes::from)
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

fn map_codec_error(e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::InvalidData => Error::FrameTooLarge { max: MAX_FRAME_LEN },
        // The codec's end-of-stream check: the peer closed with part of a frame sent.
        std::io::ErrorKind::Other if e.to_string().contains("bytes remaining") => {
            Error::Malformed("connection closed mid-frame".into())
        }
        _ => Error::Io(e),
    }
}

/// The receiving half of a [`Connection`].
pub struct ConnReader {
    frames: FramedRead<OwnedReadHalf, FrameDecoder>,
}

impl ConnReader {
    /// Waits for the next message. `Ok(None)` is a clean end of stream between frames.
    /// Waiting for a frame to *start* is unbounded (idle connections are fine); once its
    /// first byte has arrived it must complete within [`FRAME_DEADLINE`].
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        loop {
            match tokio::time::timeout(FRAME_DEADLINE, self.frames.next()).await {
                Ok(Some(Ok(frame))) => return decode(&frame).map(Some),
                Ok(Some(Err(e))) => return Err(map_codec_error(e)),
                Ok(None) if self.frames.read_buffer().is_empty() => return Ok(None),
                Ok(None) => return Err(Error::Malformed("connection closed mid-frame".into())),
                Err(_) if self.frames.read_buffer().is_empty() => continue,
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

    /// True when a whole frame is already buffered, so the next `recv` returns without
    /// waiting: used to batch answers before flushing.
    pub fn has_complete_frame(&self) -> bool {
        let buffer = self.frames.read_buffer();
        buffer.len() >= 4
            && buffer.len() - 4
                >= u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize
    }
}

/// The sending half of a [`Connection`].
pub struct ConnWriter {
    frames: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
}

impl ConnWriter {
    /// Queues a message without flushing: call [`flush`](Self::flush) after a batch.
    pub async fn feed<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        let payload = encode(msg)?;
        self.frames.feed(payload).await.map_err(map_codec_error)
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        SinkExt::<Bytes>::flush(&mut self.frames).await.map_err(map_codec_error)
    }

    /// Sends one payload made by [`encode`] at once.
    pub async fn send_frame(&mut self, payload: Bytes) -> Result<()> {
        self.frames.feed(payload).await.map_err(map_codec_error)?;
        self.flush().await
    }

    /// Sends one message at once.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        self.feed(msg).await?;
        self.flush().await
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
            reader: ConnReader { frames: FramedRead::new(read, FrameDecoder) },
            writer: ConnWriter { frames: FramedWrite::new(write, codec()) },
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
        if !constant_time_eq(&hello.token, token) {
            return Err(Error::Protocol("wrong cluster token".into()));
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

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
        assert!(
            conn.reader.frames.read_buffer().capacity() < 1 << 20,
            "nothing reserved for the announced size"
        );
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

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
