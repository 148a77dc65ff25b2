//! `coord --metrics`: scraped by a real Prometheus server (Debian's `prometheus`, on
//! loopback, scrape interval 1 s) through a kill -9 and its recovery, checked by
//! `promtool check metrics`, and refusing garbage without harm to the coordinator.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::cluster::{Cluster, kill};
use support::ports::{Held, hold};

/// One HTTP exchange on 127.0.0.1:`port`: sends `request` as it is, returns all it got.
fn http(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(port: u16, target: &str) -> String {
    http(port, format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
}

/// The body of a 200 answer.
fn body(answer: &str) -> &str {
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    answer.split_once("\r\n\r\n").unwrap().1
}

fn metrics_cluster() -> (Cluster, u16) {
    let cluster = Cluster::start_with(3, &["--metrics", "127.0.0.1:0"]);
    let port = cluster.metrics_port.expect("the coordinator prints the metrics address");
    (cluster, port)
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        // SAFETY: geteuid(2) has no preconditions.
        assert!(unsafe { libc::geteuid() } != 0, "{tool} is missing: scripts/test-deps.sh");
        eprintln!("skipped: {tool} not found (scripts/test-deps.sh installs it as root)");
    }
    found
}

/// A Prometheus server scraping `target` every second, killed on drop.
struct Prometheus {
    child: Child,
    /// The port of its web API, held while it runs.
    port: Held,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
             - job_name: ftkv\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        // Its web API on a port held for it (a port taken from the kernel and released could
        // be another process's by the time Prometheus binds it).
        let port = hold();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", port.port))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus");
        Prometheus { child, port, _dir: dir }
    }

    /// The value of instant query `query` (its only series), if it has one yet.
    fn query(&self, query: &str) -> Option<f64> {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port.port)) else { return None };
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let request = format!("GET /api/v1/query?query={query} HTTP/1.0\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let json: serde_json::Value =
            serde_json::from_str(answer.split_once("\r\n\r\n")?.1).ok()?;
        let value = &json["data"]["result"][0]["value"][1];
        value.as_str()?.parse().ok()
    }

    /// Waits until `query` has `value`; panics with the last value after `limit`.
    fn wait_for(&self, query: &str, value: f64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.query(query);
            if got == Some(value) {
                return;
            }
            assert!(Instant::now() < deadline, "{query}: {got:?}, expected {value}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_completed_recoveries() {
    if !have("prometheus") || !have("promtool") {
        return;
    }
    let (cluster, port) = metrics_cluster();
    let text = body(&get(port, "/metrics")).to_string();
    assert!(text.contains("ftkv_recoveries_completed_total 0\n"), "{text}");
    let mut promtool =
        Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).spawn().unwrap();
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    assert!(promtool.wait().unwrap().success(), "promtool check metrics accepts:\n{text}");

    let prometheus = Prometheus::start(port);
    let limit = Duration::from_secs(60);
    prometheus.wait_for("up", 1.0, limit);
    prometheus.wait_for("ftkv_recoveries_completed_total", 0.0, limit);
    kill(cluster.pids[1], "KILL");
    prometheus.wait_for("ftkv_recoveries_completed_total", 1.0, limit);
    prometheus.wait_for("ftkv_failures_total", 1.0, limit);
    prometheus.wait_for("ftkv_recovery_duration_seconds_count", 1.0, limit);
    prometheus.wait_for("sum(ftkv_server_state{state=\"running\"})", 3.0, limit);
}

#[test]
fn the_metrics_show_each_servers_keys_and_operations() {
    let (cluster, port) = metrics_cluster();
    let run = cluster.run_client(&["-f", "/dev/stdin"], "P \"a\" \"1\"\nP \"b\" \"2\"\nG \"a\"\n");
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Counters come with heartbeats (every 250 ms).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = body(&get(port, "/metrics")).to_string();
        let sum = |matching: &dyn Fn(&str) -> bool| -> f64 {
            let lines = text.lines().filter(|l| !l.starts_with('#') && matching(l));
            lines.map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()).sum()
        };
        let done = |op: &str| {
            let labels = format!("op=\"{op}\",outcome=\"done\"");
            sum(&|l| l.starts_with("ftkv_server_operations_total{") && l.contains(&labels))
        };
        let keys = sum(&|l| l.starts_with("ftkv_server_keys{"));
        if done("put") == 2.0 && done("get") == 1.0 && keys == 4.0 {
            assert_eq!(sum(&|l| l.starts_with("ftkv_server_bytes{")), 8.0, "{text}");
            assert!(text.contains("ftkv_server_replication_queue{server=\"0\"} 0"), "{text}");
            return;
        }
        assert!(Instant::now() < deadline, "2 puts, 1 get, 2 copies of 2 keys:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Garbage, an oversized head, a wrong method or path, and connections that send half a
/// request and hold: each gets an error status or is closed, and the coordinator serves
/// its clients and the next scrape as before.
#[test]
fn garbage_on_the_metrics_port_gets_an_error() {
    let (cluster, port) = metrics_cluster();
    assert!(http(port, b"\x00\x01\x02 garbage\r\n\r\n").starts_with("HTTP/1.1 400 "));
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(64 * 1024, b'a');
    assert!(http(port, &huge).starts_with("HTTP/1.1 431 "));
    assert!(get(port, "/").starts_with("HTTP/1.1 404 "));
    assert!(http(port, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
    let holding: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET /met").unwrap();
            s
        })
        .collect();
    let run = cluster.run_client(&["P", "k", "v"], "");
    assert_eq!(run.code, 0, "clients served meanwhile: {}", run.stderr);
    assert_eq!(cluster.run_client(&["status"], "").code, 0);
    drop(holding);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(port, "/metrics");
        if answer.starts_with("HTTP/1.1 200 OK") {
            break;
        }
        assert!(Instant::now() < deadline, "scrapes served again: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
