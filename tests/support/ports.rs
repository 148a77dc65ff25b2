//! Ports a test holds for as long as it needs them. A port freed by a process the test
//! killed, or by a listener it dropped, is free for anyone: the kernel hands it to the next
//! process that binds port 0 or connects out (another test's, on a full run), so a test may
//! not expect it to stay refused, nor a restarted process to get it back.
//!
//! A [`Held`] port is bound with address reuse on and never listens. While it is held:
//! - the kernel gives it to no one else: binds to port 0 and outgoing connections skip it,
//!   and a bind to it without address reuse fails;
//! - a process that binds it with address reuse (the coordinator, `TcpListener::bind`, Go
//!   programs such as etcd and Prometheus) can listen on it, again after a restart;
//! - a connection to it is refused while nothing listens on it.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpSocket;

pub struct Held {
    pub port: u16,
    /// Bound, not listening; closed on drop (tokio's socket needs no runtime for this).
    _socket: TcpSocket,
}

/// A port on every IPv4 address of this network namespace, held until dropped.
pub fn hold() -> Held {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).expect("a port to hold");
    let port = socket.local_addr().expect("the held port").port();
    Held { port, _socket: socket }
}

/// [`hold`] in the network namespace that a program run behind `prefix` sees: the one an
/// `ip netns exec NS` prefix names (a socket stays in the namespace it was made in), else
/// this one.
pub fn hold_behind(prefix: &[String]) -> Held {
    match prefix {
        [ip, netns, exec, ns, ..] if ip == "ip" && netns == "netns" && exec == "exec" => {
            super::netns::run_in(ns, hold)
        }
        _ => hold(),
    }
}
