//! Text shown to people, shared by the programs: the cluster table of `coord` and
//! `client status`.

use crate::protocol::StatusReport;

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
    out
}
