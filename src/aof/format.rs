//! The bytes of a log, little-endian throughout.
//!
//! Header (36 bytes): `FTKVAOF1` | format version u32 | server id u32 | cluster digest
//! (16 bytes, MD5 of the cluster token: a log from another cluster is refused) | crc32c of
//! the 32 bytes before it.
//!
//! Then records, each `length u32 | crc32c(body) u32 | body`, where the body is a kind byte
//! (0 put, 1 delete, 2 clear), a table byte (0 primary, 1 secondary) and, for a put,
//! `key length u32 | key | value`, for a delete the key. A length over [`MAX_BODY`] cannot
//! have been written: it is damage, not a torn tail.

use md5::{Digest, Md5};

use crate::protocol::{MAX_KEY_LEN, MAX_VALUE_LEN, Op, TableKind};

pub const MAGIC: &[u8; 8] = b"FTKVAOF1";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 36;
/// Length and checksum before each body.
pub const RECORD_HEAD: usize = 8;
/// The longest body a put of the largest key and value makes.
pub const MAX_BODY: usize = 2 + 4 + MAX_KEY_LEN + MAX_VALUE_LEN;

/// The bytes a put of a key and value of these lengths takes in a log.
pub fn entry_len(key_and_value: u64) -> u64 {
    (RECORD_HEAD + 6) as u64 + key_and_value
}

/// One change of a table, as a log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Del {
        key: Vec<u8>,
    },
    /// The table was emptied (a copy about to be filled again by its owner).
    Clear,
}

/// The identity of a cluster in its logs: the MD5 of its token (not the token itself).
pub fn cluster_digest(token: &[u8]) -> [u8; 16] {
    Md5::digest(token).into()
}

pub fn header(id: u32, cluster: [u8; 16]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&id.to_le_bytes());
    h[16..32].copy_from_slice(&cluster);
    let crc = crc32c::crc32c(&h[..32]);
    h[32..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Header fields read back: (server id, cluster digest), or what is wrong.
pub fn read_header(bytes: &[u8]) -> Result<(u32, [u8; 16]), String> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err("no ftkv log header".into());
    }
    let crc = u32::from_le_bytes(bytes[32..36].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..32]) != crc {
        return Err("its header's checksum does not match".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("format version {version}, this server reads {VERSION}"));
    }
    let id = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    Ok((id, bytes[16..32].try_into().expect("16 bytes")))
}

fn table_byte(table: TableKind) -> u8 {
    match table {
        TableKind::Primary => 0,
        TableKind::Secondary => 1,
    }
}

/// Appends the record of `op` (a put or a delete) into `table` to `buf`.
pub fn encode_op(buf: &mut Vec<u8>, table: TableKind, op: &Op) {
    match op {
        Op::Put { key, value } => {
            let len = 2 + 4 + key.len() + value.len();
            let start = begin(buf, len, 0, table);
            buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
            buf.extend_from_slice(key);
            buf.extend_from_slice(value);
            finish(buf, start);
        }
        Op::Del { key } => {
            let start = begin(buf, 2 + key.len(), 1, table);
            buf.extend_from_slice(key);
            finish(buf, start);
        }
        Op::Get { .. } => {}
    }
}

/// Appends the record "`table` was emptied" to `buf`.
pub fn encode_clear(buf: &mut Vec<u8>, table: TableKind) {
    let start = begin(buf, 2, 2, table);
    finish(buf, start);
}

/// Writes the length, room for the checksum, and the kind and table bytes; returns where
/// the body begins.
fn begin(buf: &mut Vec<u8>, len: usize, kind: u8, table: TableKind) -> usize {
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    let start = buf.len();
    buf.extend_from_slice(&[kind, table_byte(table)]);
    start
}

fn finish(buf: &mut [u8], start: usize) {
    let crc = crc32c::crc32c(&buf[start..]);
    buf[start - 4..start].copy_from_slice(&crc.to_le_bytes());
}

/// A record's body read back, or what is wrong with it.
pub fn decode_body(body: &[u8]) -> Result<(TableKind, Change), String> {
    let [kind, table, rest @ ..] = body else { return Err("a body too short".into()) };
    let table = match table {
        0 => TableKind::Primary,
        1 => TableKind::Secondary,
        other => return Err(format!("unknown table {other}")),
    };
    let change = match kind {
        0 => {
            let Some((len, rest)) = rest.split_first_chunk::<4>() else {
                return Err("a put without its key's length".into());
            };
            let len = u32::from_le_bytes(*len) as usize;
            if len > rest.len() || len > MAX_KEY_LEN {
                return Err(format!("a key of {len} bytes"));
            }
            let (key, value) = rest.split_at(len);
            Change::Put { key: key.to_vec(), value: value.to_vec() }
        }
        1 => Change::Del { key: rest.to_vec() },
        2 if rest.is_empty() => Change::Clear,
        other => return Err(format!("unknown record kind {other}")),
    };
    Ok((table, change))
}
