//! The cluster file: first line N (at least 3), then N lines
//! `<host> <clients_port> <servers_port> <coord_port>`. Errors name the file's line.

use std::fmt;
use std::path::Path;

/// Fewest servers that can replicate to a distinct secondary and survive one fault.
pub const MIN_SERVERS: usize = 3;
/// Most servers a cluster file may list: a small cluster, and well within what the
/// coordinator's servers port accepts at once (each server keeps one report connection, a
/// replacement another while the old one lingers).
pub const MAX_SERVERS: usize = 100;

/// Where a server runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Host {
    /// `localhost` or a loopback address: started as a local child process.
    Local(String),
    /// `[user@]host`: started over ssh.
    Ssh { user: Option<String>, host: String },
}

impl Host {
    /// The host name clients and peers use to reach the server.
    pub fn name(&self) -> &str {
        match self {
            Host::Local(name) => name,
            Host::Ssh { host, .. } => host,
        }
    }

    fn parse(word: &str) -> Result<Host, String> {
        let (user, host) = match word.split_once('@') {
            Some((user, host)) if valid_user(user) => (Some(user.to_string()), host),
            Some(_) => return Err(format!("bad user name in host {word:?}")),
            None => (None, word),
        };
        if !valid_host(host) {
            return Err(format!(
                "bad host {word:?} (expected localhost, an address or [user@]host)"
            ));
        }
        if host.parse::<std::net::Ipv6Addr>().is_ok() {
            // Servers listen on IPv4 only.
            return Err(format!("IPv6 address {host:?} (use localhost or an IPv4 address)"));
        }
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        Ok(match (loopback, user) {
            (true, None) => Host::Local(host.to_string()),
            (_, user) => Host::Ssh { user, host: host.to_string() },
        })
    }
}

fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && !host.starts_with('-')
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerSpec {
    pub host: Host,
    /// 0 means any free port; the server reports the one it bound.
    pub client_port: u16,
    pub servers_port: u16,
    pub coord_port: u16,
}

/// A parse error with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "config: {}", self.message)
        } else {
            write!(f, "config line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn error(line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError { line, message: message.into() }
}

/// Parses the file's text. Blank lines and lines starting with `#` are skipped.
pub fn parse(text: &str) -> Result<Vec<ServerSpec>, ConfigError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (count_line, count) = lines.next().ok_or_else(|| error(0, "empty file"))?;
    let n: usize = count.parse().map_err(|_| {
        error(count_line, format!("expected the number of servers, found {count:?}"))
    })?;
    if n < MIN_SERVERS {
        return Err(error(count_line, format!("{n} servers, at least {MIN_SERVERS} needed")));
    }
    if n > MAX_SERVERS {
        return Err(error(count_line, format!("{n} servers, at most {MAX_SERVERS}")));
    }
    let mut specs = Vec::with_capacity(n);
    for (line, text) in lines {
        if specs.len() == n {
            return Err(error(
                line,
                format!("more than the {n} servers announced on line {count_line}"),
            ));
        }
        specs.push(parse_server(line, text)?);
    }
    if specs.len() < n {
        return Err(error(count_line, format!("{n} servers announced, {} listed", specs.len())));
    }
    Ok(specs)
}

fn parse_server(line: usize, text: &str) -> Result<ServerSpec, ConfigError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let [host, client, servers, coord] = words[..] else {
        return Err(error(
            line,
            format!(
                "expected <host> <clients_port> <servers_port> <coord_port>, found {} fields",
                words.len()
            ),
        ));
    };
    let port = |name: &str, word: &str| {
        word.parse::<u16>()
            .map_err(|_| error(line, format!("bad {name} port {word:?} (expected 0-65535)")))
    };
    Ok(ServerSpec {
        host: Host::parse(host).map_err(|m| error(line, m))?,
        client_port: port("clients", client)?,
        servers_port: port("servers", servers)?,
        coord_port: port("coord", coord)?,
    })
}

/// Reads and parses a file; errors carry the path.
pub fn load(path: &Path) -> Result<Vec<ServerSpec>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| error(0, format!("cannot read {}: {e}", path.display())))?;
    parse(&text).map_err(|e| ConfigError {
        line: e.line,
        message: format!("{} ({})", e.message, path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(text).unwrap_err()
    }

    #[test]
    fn parses_the_default_file() {
        let specs =
            parse("3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 7003 7004 7005\n").unwrap();
        assert_eq!(specs.len(), 3);
        assert_eq!(specs[2].client_port, 7003);
        assert_eq!(specs[2].coord_port, 7005);
        assert_eq!(specs[0].host, Host::Local("localhost".into()));
    }

    #[test]
    fn host_forms() {
        let specs =
            parse("# cluster\n3\n127.0.0.1 0 0 0\n\nbob@db1.example 1 2 3\n10.0.0.2 0 0 0\n")
                .unwrap();
        assert_eq!(specs[0].host, Host::Local("127.0.0.1".into()));
        assert_eq!(
            specs[1].host,
            Host::Ssh { user: Some("bob".into()), host: "db1.example".into() }
        );
        assert_eq!(specs[2].host, Host::Ssh { user: None, host: "10.0.0.2".into() });
    }

    #[test]
    fn errors_name_their_line() {
        assert_eq!(err("").line, 0);
        assert_eq!(err("x\n").line, 1);
        assert!(err("4294967297\nlocalhost 0 0 0\n").message.contains("at most 100"));
        let upper = parse("3\nLOCALHOST 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n").unwrap();
        assert_eq!(upper[0].host, Host::Local("LOCALHOST".into()));
        assert!(err("3\n::1 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n").message.contains("IPv6"));
        let few = err("2\nlocalhost 0 0 0\nlocalhost 0 0 0\n");
        assert_eq!(few.line, 1);
        assert!(few.message.contains("at least 3"), "{few}");
        let port = err("3\nlocalhost 0 0 0\nlocalhost 0 70000 0\nlocalhost 0 0 0\n");
        assert_eq!(port.line, 3);
        assert!(port.to_string().contains("config line 3: bad servers port \"70000\""), "{port}");
        assert_eq!(err("3\nlocalhost 0 0 0\nlocalhost 0 -1 0\nlocalhost 0 0 0\n").line, 3);
        let host = err("3\nlocalhost 0 0 0\nlocalhost 0 0 0\nbad/host 0 0 0\n");
        assert_eq!(host.line, 4);
        assert!(host.message.contains("bad host"), "{host}");
        assert_eq!(err("3\nlocalhost 0 0 0\n@h 0 0 0\nlocalhost 0 0 0\n").line, 3);
        assert_eq!(err("3\nlocalhost 0 0 0\n-oProxy=x 0 0 0\nlocalhost 0 0 0\n").line, 3);
        assert_eq!(err("3\nlocalhost 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n").line, 2);
        assert_eq!(err("3\nlocalhost 0 0 0\nlocalhost 0 0 0\n").line, 1);
        assert_eq!(
            err("3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n").line,
            5
        );
    }

    #[test]
    fn load_names_the_file() {
        let e = load(Path::new("/nonexistent/cfg.txt")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cfg.txt"), "{e}");
    }
}

/// Coordinator addresses from a `-h` flag: `host[:port][,host[:port]...]`, each entry
/// without a port on `port`. Clients and servers take several to find the leader among
/// standby coordinators (`coord --etcd`).
pub fn coordinator_addrs(hosts: &str, port: u16) -> Result<Vec<String>, String> {
    hosts
        .split(',')
        .map(|entry| {
            let entry = entry.trim();
            match entry.rsplit_once(':') {
                _ if entry.is_empty() => Err(format!("{hosts:?}: an empty coordinator address")),
                Some((host, p)) if !host.is_empty() && p.parse::<u16>().is_ok() => {
                    Ok(entry.to_string())
                }
                Some(_) => Err(format!("{entry:?} is not host:port")),
                None => Ok(format!("{entry}:{port}")),
            }
        })
        .collect()
}

#[cfg(test)]
mod coordinator_addrs_tests {
    use super::coordinator_addrs;

    #[test]
    fn entries_take_the_default_port_unless_they_carry_one() {
        assert_eq!(coordinator_addrs("localhost", 7000).unwrap(), ["localhost:7000"]);
        assert_eq!(
            coordinator_addrs("a, b:7001,10.0.0.3", 7000).unwrap(),
            ["a:7000", "b:7001", "10.0.0.3:7000"]
        );
        for bad in ["", "a,,b", "a:", ":7000", "a:port", "a:70000"] {
            assert!(coordinator_addrs(bad, 7000).is_err(), "{bad:?}");
        }
    }
}
