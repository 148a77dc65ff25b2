//! A set of dumps written directly, as a cluster's orderly shutdown leaves it (dumps and
//! manifest): for the restore benchmark and tests that need a big set quickly.

use std::path::Path;

use ftkv::manifest::{MANIFEST, Manifest};
use ftkv::protocol::{DumpFile, Dumps};
use ftkv::routing::{primary_of, slot_of};
use ftkv::text::quote;
use md5::{Digest, Md5};

/// The value of every key of [`write_set`].
pub const VALUE: [u8; 100] = [b'v'; 100];

/// The `i`th key of [`write_set`].
pub fn key(i: usize) -> Vec<u8> {
    format!("key:{i:012}").into_bytes()
}

/// Writes `lines` to `dir/name`; returns its manifest entry.
fn write_dump(dir: &Path, name: &str, lines: &[&String]) -> DumpFile {
    let mut text = String::new();
    for line in lines {
        text.push_str(line);
    }
    std::fs::write(dir.join(name), &text).unwrap();
    DumpFile {
        name: name.into(),
        bytes: text.len() as u64,
        keys: lines.len() as u64,
        md5: Md5::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// The dumps and manifest of an `n`-server cluster holding `keys` keys (`key(i)`, values of
/// 100 bytes), as its orderly shutdown would leave them.
pub fn write_set(dir: &Path, n: u32, keys: usize) {
    let value = VALUE;
    let mut lines: Vec<(Vec<u8>, String)> = (0..keys)
        .map(|i| {
            let key = key(i);
            let line = format!("P {} {}\n", quote(&key), quote(&value));
            (key, line)
        })
        .collect();
    lines.sort_unstable();
    let dumps: Vec<Option<Dumps>> = (0..n)
        .map(|id| {
            let of = |owner: u32| -> Vec<&String> {
                lines.iter().filter(|(k, _)| slot_of(k, n) == owner).map(|(_, l)| l).collect()
            };
            let primary = write_dump(dir, &format!("server_{id}.primary"), &of(id));
            let secondary =
                write_dump(dir, &format!("server_{id}.secondary"), &of(primary_of(id, n)));
            Some(Dumps { primary, secondary })
        })
        .collect();
    let manifest = Manifest::of_shutdown(1, &dumps, None, std::time::SystemTime::now()).unwrap();
    std::fs::write(dir.join(MANIFEST), manifest.encode()).unwrap();
}
