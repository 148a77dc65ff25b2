//! `client watch` against a real cluster: the full-screen view under tmux (a real
//! terminal), event lines through a pipe, and watchers that never read.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ftkv::connection::Connection;
use ftkv::protocol::{CoordRequest, Hello, Role};
use support::cluster::{CLIENT, Cluster, kill, wait_until};
use support::tmux::Tmux;

/// Whether the servers table shows server `id` with `pid`, running.
fn row_shows(screen: &str, id: u32, pid: u32) -> bool {
    screen.lines().any(|l| {
        let cells: Vec<&str> = l.trim_matches('│').split_whitespace().collect();
        cells.len() > 3
            && cells[0] == id.to_string()
            && cells[2] == pid.to_string()
            && cells[3] == "running"
    })
}

const STEPS: [&str; 5] = [
    "step 0 lease wait done in",
    "step 0 take-over done in",
    "step 1 start a+ done in",
    "step 2 join and copy done in",
    "step 5 hand-back done in",
];

#[test]
fn watch_on_a_terminal_shows_a_recovery_step_by_step() {
    let cluster = Cluster::start(3);
    let command = format!("{CLIENT} -h 127.0.0.1 -p {} watch", cluster.clients_port);
    let Some(tmux) = Tmux::start(&command) else { return };
    tmux.wait_until("three servers running", |s| {
        (0..3).all(|id| row_shows(s, id, cluster.pids[id as usize]))
    });
    let victim = cluster.pids[1];
    kill(victim, "KILL");
    // Waited for as a whole: a capture can catch the screen halfway through a redraw.
    let lost = format!("server 1 lost (pid {victim})");
    tmux.wait_until("the loss, every step and the recovery's duration", |screen| {
        screen.contains(&lost)
            && screen.contains("server 1 recovered in")
            && STEPS.iter().all(|step| screen.contains(&format!("server 1: {step}")))
    });
    let replacement = cluster.pid_of(1);
    assert_ne!(replacement, victim);
    tmux.wait_until("server 1 running with its new pid", |s| row_shows(s, 1, replacement));
    tmux.keys(&["q"]);
    assert_eq!(tmux.wait_exit(), 0, "q quits");
}

/// `client watch` on `cluster`, its standard output a pipe, and the lines it prints, as
/// they come.
fn watch_through_a_pipe(cluster: &Cluster) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut watch = Command::new(CLIENT)
        .args(["-h", "127.0.0.1", "-p", &cluster.clients_port.to_string(), "watch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = BufReader::new(watch.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (watch, rx)
}

/// Lines from `rx` up to and including the first that contains `end`.
fn lines_until(rx: &mpsc::Receiver<String>, end: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no {end:?} in {lines:#?}"));
        lines.push(line);
        if lines.last().unwrap().contains(end) {
            return lines;
        }
    }
}

#[test]
fn watch_through_a_pipe_prints_event_lines() {
    let cluster = Cluster::start(3);
    let (mut watch, rx) = watch_through_a_pipe(&cluster);
    let limit = Duration::from_secs(10);
    let opening = lines_until(&rx, "epoch 1", limit);
    for (id, pid) in cluster.pids.iter().enumerate() {
        let row = format!("server {id} localhost pid {pid} running");
        assert!(opening.iter().any(|l| l.ends_with(&row)), "{row}: {opening:#?}");
    }
    let victim = cluster.pids[2];
    kill(victim, "KILL");
    let lines = lines_until(&rx, "server 2 recovered in", limit);
    assert!(lines.iter().any(|l| l.contains(&format!("server 2 lost (pid {victim})"))));
    for step in STEPS {
        assert!(lines.iter().any(|l| l.contains(step)), "{step}: {lines:#?}");
    }
    for line in &lines {
        let (time, _) = line.split_once(' ').unwrap();
        assert!(time.len() == 12 && time.as_bytes()[8] == b'.', "a time first: {line}");
    }
    let _ = watch.kill();
    let _ = watch.wait();
}

/// Watchers that subscribe and never read take nothing from anyone else: a recovery runs
/// as usual, a reading watcher sees it, and the coordinator answers clients meanwhile.
#[test]
fn watchers_that_never_read_slow_nothing() {
    let cluster = Cluster::start(3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = cluster.coord_addr();
    let _stalled: Vec<Connection> = runtime.block_on(async {
        let mut stalled = Vec::new();
        for _ in 0..50 {
            let mut conn =
                Connection::connect(&addr, &Hello::new(Role::Client, &[])).await.unwrap();
            conn.send(&CoordRequest::Watch).await.unwrap();
            stalled.push(conn);
        }
        stalled
    });
    let (mut watch, rx) = watch_through_a_pipe(&cluster);
    lines_until(&rx, "epoch 1", Duration::from_secs(10));
    kill(cluster.pids[0], "KILL");
    let lines = lines_until(&rx, "server 0 recovered in", Duration::from_secs(10));
    let done = lines.last().unwrap();
    let ms: u64 =
        done.split("recovered in ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(ms < 2000, "a recovery as usual: {done}");
    let began = Instant::now();
    let run = cluster.run_client(&["status"], "");
    assert_eq!(run.code, 0);
    assert!(began.elapsed() < Duration::from_secs(2), "status answered at once");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// A replacement that fails to start: the watcher sees the rollback, the retry, and a
/// recovery complete in 2 attempts. The server program is a wrapper that exits at once for
/// the first replacement of any server (incarnation 1) and runs the real server otherwise.
#[test]
fn watch_shows_a_rollback_and_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("server");
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *' --incarnation 1 '*) exit 1;; esac\nexec {} \"$@\"\n",
        support::cluster::SERVER
    );
    std::fs::write(&wrapper, script).unwrap();
    let mode = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
    std::fs::set_permissions(&wrapper, mode).unwrap();
    let cluster = Cluster::start_with(3, &["--server-bin", wrapper.to_str().unwrap()]);
    let (mut watch, rx) = watch_through_a_pipe(&cluster);
    lines_until(&rx, "epoch 1", Duration::from_secs(10));
    kill(cluster.pids[1], "KILL");
    let lines = lines_until(&rx, "server 1 recovered in", Duration::from_secs(15));
    let rolled = lines.iter().find(|l| l.contains("server 1: recovery rolled back to step 1"));
    assert!(rolled.is_some_and(|l| l.contains("(attempt 2)")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("step 1 roll back, back off done in")), "{lines:#?}");
    assert!(lines.last().unwrap().ends_with(", 2 attempts"), "{lines:#?}");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// A watcher that subscribes and never reads, with a small receive buffer: once its socket
/// is full the coordinator's write to it waits, and after the write deadline (5 s) the
/// coordinator drops it (the coordinator's end is no longer established), while the
/// cluster serves as usual meanwhile.
#[test]
fn a_watcher_that_never_reads_is_dropped() {
    let cluster = Cluster::start(3);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr: std::net::SocketAddr = cluster.coord_addr().parse().unwrap();
    let (_stalled, port) = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(1024).unwrap();
        let stream = socket.connect(addr).await.unwrap();
        let port = stream.local_addr().unwrap().port();
        let mut conn = Connection::new(stream).unwrap();
        conn.send(&Hello::new(Role::Client, &[])).await.unwrap();
        conn.send(&CoordRequest::Watch).await.unwrap();
        (conn, port)
    });
    let ours = || {
        support::sockets::established(cluster.clients_port)
            .into_iter()
            .find(|q| q.remote_port == port)
    };
    let backed_up = wait_until(Duration::from_secs(60), || ours().is_some_and(|q| q.send > 0));
    assert!(backed_up, "the coordinator's writes to the watcher back up");
    assert_eq!(cluster.run_client(&["P", "k", "v"], "").code, 0, "clients served meanwhile");
    let dropped = wait_until(Duration::from_secs(60), || ours().is_none());
    assert!(dropped, "the coordinator dropped the watcher that does not read");
    assert_eq!(cluster.run_client(&["G", "k"], "").code, 0);
}
