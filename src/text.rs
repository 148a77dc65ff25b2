//! Text shared by the programs: the escaping of keys and values (the REPL's answers, and
//! dump files, which the client's line parser reads back with
//! [`unescape`](crate::client::line::unescape)), and the cluster table of `coord` and
//! `client status`.

use crate::protocol::StatusReport;

/// Lowercase hex digits used by [`escape`].
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Escapes bytes as printable ASCII text.
///
/// Printable ASCII (`0x20..=0x7e`) is kept as is, except `"` becomes `\"`
/// and `\` becomes `\\`. Newline and tab become `\n` and `\t`. Every other
/// byte becomes `\xNN` with two lowercase hex digits. The inverse is
/// [`unescape`](crate::client::line::unescape).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => {
                out.push_str("\\x");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
    out
}

/// Escapes bytes with [`escape`] and wraps them in double quotes.
pub fn quote(bytes: &[u8]) -> String {
    format!("\"{}\"", escape(bytes))
}

/// The cluster table printed once all servers are up (and by `client status`).
pub fn format_table(report: &StatusReport) -> String {
    let mut out = format!(
        "{:<4}{:<18}{:>8}{:>9}{:>8}{:>9}  {}\n",
        "id", "host", "client", "servers", "coord", "pid", "state"
    );
    for s in &report.servers {
        let state = match report.recovery {
            Some(r) if r.server == s.id => format!("{} (step {})", s.state.as_str(), r.step),
            _ => s.state.as_str().to_string(),
        };
        out.push_str(&format!(
            "{:<4}{:<18}{:>8}{:>9}{:>8}{:>9}  {}\n",
            s.id, s.host, s.client_port, s.servers_port, s.coord_port, s.pid, state
        ));
    }
    out.push_str(&format!("epoch {}\n", report.epoch));
    for cut in &report.cuts {
        let link = if cut.connected { "connected" } else { "not connected" };
        out.push_str(&format!(
            "replication {} -> {} cut: writes unacknowledged for {} ms ({link})\n",
            cut.owner, cut.copy, cut.stalled_ms
        ));
    }
    if let Some(c) = &report.coordinators {
        let standbys = if c.standbys.is_empty() { "none".into() } else { c.standbys.join(", ") };
        out.push_str(&format!(
            "coordinator {} leads cluster {} since {}; standbys: {standbys}\n",
            c.leader, c.cluster, c.since
        ));
    }
    out
}
