//! Reading a log back. A crash can only leave the last record short (the write that was
//! under way): a record that runs past the end of the file, or the very last one whose
//! checksum fails, is cut off (the file truncated to the record before it). Anything wrong
//! before that cannot come from a crash: the load is refused, the file untouched.

use std::path::Path;

use super::LogError;
use super::format::{self, Change, HEADER_LEN, MAX_BODY, RECORD_HEAD};
use crate::protocol::TableKind;

/// What a load found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    pub records: u64,
    /// The length of the log once loaded (its torn tail cut).
    pub len: u64,
    /// A torn last record cut off: its offset and its bytes.
    pub torn: Option<(u64, u64)>,
}

/// Reads the log at `path` as [`parse`] does, changing nothing (a torn tail is reported,
/// not cut): the coordinator reads the logs of a crashed cluster this way when it reshards
/// them onto another number of servers, and moves the files aside as they were.
pub fn read(
    path: &Path,
    id: u32,
    cluster: [u8; 16],
    apply: impl FnMut(TableKind, Change),
) -> Result<Loaded, LogError> {
    parse(path, &read_bytes(path)?, id, cluster, apply)
}

/// The whole file at `path`; [`LogError::Missing`] if there is none.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, LogError> {
    std::fs::read(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => LogError::Missing { path: path.into() },
        _ => LogError::Io { path: path.into(), what: "reading", err },
    })
}

/// Reads `bytes` (the whole file at `path`), checks its header against `id` and `cluster`,
/// and hands every record to `apply`, in order. Nothing is applied when the log is refused.
pub fn parse(
    path: &Path,
    bytes: &[u8],
    id: u32,
    cluster: [u8; 16],
    mut apply: impl FnMut(TableKind, Change),
) -> Result<Loaded, LogError> {
    let (found, digest) =
        format::read_header(bytes).map_err(|why| LogError::NotALog { path: path.into(), why })?;
    if digest != cluster {
        return Err(LogError::OtherCluster { path: path.into() });
    }
    if found != id {
        return Err(LogError::OtherServer { path: path.into(), found, expected: id });
    }
    // Checked whole first, then applied: a refusal must leave the tables untouched.
    let (bodies, torn) = records(path, bytes)?;
    let records = bodies.len() as u64;
    for (offset, body) in bodies {
        let (table, change) = format::decode_body(body).map_err(|why| LogError::Damaged {
            path: path.into(),
            offset: offset as u64,
            why,
        })?;
        apply(table, change);
    }
    let len = torn.map_or(bytes.len() as u64, |(offset, _)| offset);
    Ok(Loaded { records, len, torn })
}

/// The bodies (with their offsets) of the records after the header, checksums checked, and
/// the torn tail if there is one.
type Bodies<'a> = Vec<(usize, &'a [u8])>;

fn records<'a>(path: &Path, bytes: &'a [u8]) -> Result<(Bodies<'a>, Option<(u64, u64)>), LogError> {
    let mut bodies = Vec::new();
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let rest = bytes.len() - at;
        let torn = Some((at as u64, rest as u64));
        if rest < RECORD_HEAD {
            return Ok((bodies, torn));
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let damaged = |why: String| LogError::Damaged { path: path.into(), offset: at as u64, why };
        if !(2..=MAX_BODY).contains(&len) {
            // Zeros to the end: a file extended by a crash before its bytes reached the disk.
            if bytes[at..].iter().all(|&b| b == 0) {
                return Ok((bodies, torn));
            }
            return Err(damaged(format!("an impossible length of {len} bytes")));
        }
        let end = at + RECORD_HEAD + len;
        if end > bytes.len() {
            return Ok((bodies, torn));
        }
        let body = &bytes[at + RECORD_HEAD..end];
        if crc32c::crc32c(body) != crc {
            if end == bytes.len() {
                return Ok((bodies, torn));
            }
            return Err(damaged("its checksum does not match".into()));
        }
        bodies.push((at, body));
        at = end;
    }
    Ok((bodies, None))
}
