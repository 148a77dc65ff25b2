//! A dump file: written as `P "key" "value"` lines sorted by key ([`write`]: a server's
//! table, or a crashed cluster's log read back by the coordinator; it stays readable, and
//! `client -f` replays it), and read back, checked against its manifest entry and parsed.
//! Read by the coordinator, which rebuilds a set under another N, and by each server, which
//! loads its own two files when N is unchanged.

use std::io::Write;
use std::path::Path;

use md5::{Digest, Md5};

use crate::client::line::{Command, Parsed, parse_line};
use crate::protocol::DumpFile;
use crate::routing::slot_of;
use crate::text::quote;

/// Keys and values.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Writes `entries` (sorted here) to `path` as client lines `P "key" "value"`, so that a
/// dump is readable, diffable and can be replayed with `client -f`. Returns the file's name,
/// size, entry count and MD5, computed as it is written (for the dumps manifest), and its
/// metadata, taken before the rename, so surely of this file (a server tells its own dumps
/// from a newer start's by it). Written to `<path>.tmp`, synced, renamed over `path`.
pub fn write(
    path: &Path,
    entries: &mut [(Vec<u8>, Vec<u8>)],
) -> std::io::Result<(DumpFile, std::fs::Metadata)> {
    entries.sort_unstable();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| -> std::io::Result<_> {
        let file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        let mut out = Summing { inner: file, md5: Md5::new(), bytes: 0 };
        for (key, value) in entries.iter() {
            writeln!(out, "P {} {}", quote(key), quote(value))?;
        }
        let file = out.inner.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let meta = file.metadata()?;
        std::fs::rename(&tmp, path)?;
        Ok((out.bytes, out.md5.finalize(), meta))
    })();
    if written.is_err() {
        // A partial file (the disk filled up) helps nobody; an older dump at `path` is left
        // as it was.
        let _ = std::fs::remove_file(&tmp);
    }
    let (bytes, md5, meta) = written?;
    let file = DumpFile {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        bytes,
        keys: entries.len() as u64,
        md5: md5.iter().map(|b| format!("{b:02x}")).collect(),
    };
    Ok((file, meta))
}

/// A writer that counts and digests what goes through it.
struct Summing<W> {
    inner: W,
    md5: Md5,
    bytes: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.md5.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads `path`, checks it against `entry` ([`check_file`]), parses it, and checks that it
/// holds `entry.keys` keys, and with `placement` = `(n, slot)` that every one is `slot`'s
/// among `n` servers. `Ok(None)`: no such file.
pub fn load_file(
    path: &std::path::Path,
    entry: &DumpFile,
    placement: Option<(u32, u32)>,
) -> Result<Option<Entries>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    check_file(&bytes, entry)?;
    let entries = parse_dump(&bytes)?;
    if entries.len() as u64 != entry.keys {
        return Err(format!("{} keys, the manifest says {}", entries.len(), entry.keys));
    }
    if let Some((n, slot)) = placement
        && let Some((key, _)) = entries.iter().find(|(key, _)| slot_of(key, n) != slot)
    {
        let key = crate::text::quote(key);
        return Err(format!("key {key} does not belong in it among {n} servers"));
    }
    Ok(Some(entries))
}

/// A file's size against the manifest's entry.
pub fn check_size(size: u64, entry: &DumpFile) -> Result<(), String> {
    match size == entry.bytes {
        true => Ok(()),
        false => {
            Err(format!("{size} bytes, the manifest says {} (truncated or changed)", entry.bytes))
        }
    }
}

/// Size and MD5 against the manifest's entry.
pub fn check_file(bytes: &[u8], entry: &DumpFile) -> Result<(), String> {
    check_size(bytes.len() as u64, entry)?;
    let md5: String = Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    if md5 != entry.md5 {
        return Err(format!("MD5 {md5}, the manifest says {} (corrupt or changed)", entry.md5));
    }
    Ok(())
}

/// The entries of a dump: one `P "key" "value"` line each. In a file of ASCII text (as
/// the server writes them), a line as the server writes it is parsed by [`parse_written`]
/// (the REPL's general parser took most of a big restore's time); any other line (edited
/// by hand), by the REPL's parser, which decides.
pub fn parse_dump(bytes: &[u8]) -> Result<Entries, String> {
    let mut entries = Vec::with_capacity(bytes.len() / 64);
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(entries);
    }
    let ascii = body.is_ascii();
    for (number, line) in (1..).zip(body.split(|&b| b == b'\n')) {
        if ascii && let Some(entry) = parse_written(line) {
            entries.push(entry);
            continue;
        }
        let line =
            std::str::from_utf8(line).map_err(|e| format!("line {number}: not text: {e}"))?;
        match parse_line(line) {
            Ok(Parsed::Command(Command::Put { key, value })) => entries.push((key, value)),
            Ok(_) => return Err(format!("line {number} is not a P line")),
            Err(e) => return Err(format!("line {number}: {e}")),
        }
    }
    Ok(entries)
}

/// A line as [`crate::text::quote`] writes it (`P "key" "value"`, a non-empty key, the
/// escapes `\"`, `\\`, `\n`, `\t`, `\xNN`, every other byte as it is: the REPL's parser
/// takes those literally too); `None` for anything else.
fn parse_written(line: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (key, rest) = take_quoted(line.strip_prefix(b"P \"")?)?;
    let (value, rest) = take_quoted(rest.strip_prefix(b" \"")?)?;
    // An empty key is the general parser's to refuse.
    (rest.is_empty() && !key.is_empty()).then_some((key, value))
}

/// The bytes of a quoted string up to its closing quote (already past the opening one),
/// and what follows it.
fn take_quoted(text: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let run = memchr::memchr2(b'"', b'\\', &text[i..])?;
        out.extend_from_slice(&text[i..i + run]);
        i += run;
        if text[i] == b'"' {
            return Some((out, &text[i + 1..]));
        }
        // A backslash.
        let unescaped = match text.get(i + 1)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'n' => b'\n',
            b't' => b'\t',
            b'x' => {
                let hex = |at: usize| char::from(*text.get(at)?).to_digit(16);
                out.push((hex(i + 2)? << 4 | hex(i + 3)?) as u8);
                i += 4;
                continue;
            }
            _ => return None,
        };
        out.push(unescaped);
        i += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::quote;

    fn entry(bytes: &[u8], keys: u64) -> DumpFile {
        let md5 = Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        DumpFile { name: "server_0.primary".into(), bytes: bytes.len() as u64, keys, md5 }
    }

    #[test]
    fn a_file_must_match_its_entry() {
        let text = b"P \"k\" \"v\"\nP \"a\\x00\" \"\"\n";
        let good = entry(text, 2);
        assert!(check_file(text, &good).is_ok());
        let truncated = &text[..text.len() - 1];
        assert!(check_file(truncated, &good).unwrap_err().contains("truncated"));
        let mut flipped = text.to_vec();
        flipped[3] ^= 1;
        assert!(check_file(&flipped, &good).unwrap_err().contains("MD5"));
        let entries = parse_dump(text).unwrap();
        assert_eq!(entries, [(b"k".to_vec(), b"v".to_vec()), (b"a\0".to_vec(), Vec::new())]);
        assert!(parse_dump(b"P \"k\" \"v\nG \"k\"\n").is_err());
        assert!(parse_dump(b"G \"k\"\n").unwrap_err().contains("line 1"));
        assert!(parse_dump(b"P \"k\" \"v\"\n\nP \"l\" \"w\"\n").is_err(), "an empty line");
        assert_eq!(parse_dump(b"").unwrap(), []);
    }

    /// Every byte string, written as the server writes it, reads back through the fast
    /// parser to the same bytes, as the REPL's parser reads it.
    #[test]
    fn written_lines_read_back_the_same_both_ways() {
        let mut samples: Vec<Vec<u8>> = vec![Vec::new(), b"plain".to_vec(), (0..=255).collect()];
        samples.extend((0..=255u8).map(|b| vec![b, b'"', b'\\', b]));
        for key in &samples[1..] {
            for value in [&samples[0], key, &samples[2]] {
                let line = format!("P {} {}", quote(key), quote(value));
                let fast = parse_written(line.as_bytes());
                assert_eq!(fast, Some((key.clone(), value.clone())), "{line}");
                let general = parse_line(&line).unwrap();
                let Parsed::Command(Command::Put { key: k, value: v }) = general else { panic!() };
                assert_eq!((k, v), (key.clone(), value.clone()));
            }
        }
    }

    /// What the fast parser does not take goes to the REPL's parser: extra blanks, raw UTF-8; errors stay errors.
    #[test]
    fn other_lines_are_left_to_the_general_parser() {
        for line in ["P  \"k\" \"v\"", "P \"k\"\t\"v\"", "P \"k\" \"v\" "] {
            assert_eq!(parse_written(line.as_bytes()), None, "{line}");
            assert_eq!(parse_dump(line.as_bytes()).map(|e| e.len()), Ok(1), "{line}");
        }
        // Not ASCII: every line goes to the REPL's parser (which checks the UTF-8).
        let utf8 = "P \"é\" \"v\"\nP \"k\" \"v\"\n";
        let entries = parse_dump(utf8.as_bytes()).unwrap();
        assert_eq!(entries[0], ("é".as_bytes().to_vec(), b"v".to_vec()));
        assert!(parse_dump(b"P \"\xff\" \"v\"\n").unwrap_err().contains("not text"));
        for bad in [
            "P \"k\" \"v",
            "P \"k\\q\" \"v\"",
            "P \"k\" \"v\" x",
            "P \"k\\x4\" \"v\"",
            "P \"\\x+a\" \"v\"",
        ] {
            assert_eq!(parse_written(bad.as_bytes()), None, "{bad}");
            assert!(parse_dump(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
