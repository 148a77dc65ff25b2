//! The kernel's view of local TCP connections (`/proc/net/tcp` and `tcp6`): the bytes waiting
//! in a socket's queues show whether a process has read what was sent to it (a paused server
//! has not), or whether its peer has stopped reading (its sends back up).

#![allow(dead_code)]

/// One established connection, seen from its local end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queues {
    pub local_port: u16,
    pub remote_port: u16,
    /// Bytes written and not yet acknowledged by the peer.
    pub send: u64,
    /// Bytes received and not yet read by the process.
    pub recv: u64,
}

/// Every established connection whose local port is `port` (IPv4 and IPv6).
pub fn established(port: u16) -> Vec<Queues> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|table| table.lines().skip(1).filter_map(parse_row).collect::<Vec<_>>())
        .filter(|q| q.local_port == port)
        .collect()
}

/// `sl local_address rem_address st tx_queue:rx_queue ...`, addresses as `HEX:PORT`, all hex;
/// state 01 is ESTABLISHED.
fn parse_row(row: &str) -> Option<Queues> {
    let fields: Vec<&str> = row.split_whitespace().collect();
    let port = |address: &str| u16::from_str_radix(address.rsplit_once(':')?.1, 16).ok();
    if fields.get(3) != Some(&"01") {
        return None;
    }
    let (send, recv) = fields.get(4)?.split_once(':')?;
    Some(Queues {
        local_port: port(fields.get(1)?)?,
        remote_port: port(fields.get(2)?)?,
        send: u64::from_str_radix(send, 16).ok()?,
        recv: u64::from_str_radix(recv, 16).ok()?,
    })
}
