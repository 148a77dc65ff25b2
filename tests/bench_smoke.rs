//! `client bench` against a real cluster: a short run that must check every answer and print
//! its report lines. (Benchmarks themselves are not tests; this only proves the mode works.)

mod support;

use support::cluster::{CLIENT, Cluster};

/// The ops/s of a `<name>: <ops> ops/s p50=<us>us p99=<us>us p99.9=<us>us` line.
fn parse_line(stdout: &str, name: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} line in {stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 6, "{line}");
    assert_eq!(words[2], "ops/s", "{line}");
    for (word, label) in words[3..].iter().zip(["p50=", "p99=", "p99.9="]) {
        let micros = word
            .strip_prefix(label)
            .and_then(|w| w.strip_suffix("us"))
            .unwrap_or_else(|| panic!("{label} in {line}"));
        micros.parse::<u64>().unwrap_or_else(|_| panic!("{label} in {line}"));
    }
    words[1].parse().unwrap()
}

#[test]
fn bench_put_get_runs_and_checks_every_answer() {
    let cluster = Cluster::start(3);
    let args =
        ["bench", "-n", "2000", "-c", "4", "-P", "4", "-d", "16", "-r", "500", "-t", "put,get"];
    let run = cluster.run_client(&args, "");
    assert_eq!(run.code, 0, "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let first = run.stdout.lines().next().unwrap();
    assert!(first.starts_with("ftkv bench: 3 servers, tests put,get, -n 2000 -c 4"), "{first}");
    assert!(parse_line(&run.stdout, "put") > 0.0);
    assert!(parse_line(&run.stdout, "get") > 0.0);
    assert!(run.stdout.contains("checked: 4000 answers, 0 errors"), "{}", run.stdout);
    assert!(
        run.stderr.is_empty(),
        "no progress line when stderr is not a terminal: {}",
        run.stderr
    );
    // Keys spread over all servers: each one's primary holds some of the 500 keys.
    let mut cluster = cluster;
    assert!(cluster.ctrl_d().success());
    for id in 0..3 {
        assert!(!cluster.dump(id, "primary").is_empty(), "server {id} got no key");
    }
}

#[test]
fn bench_get_alone_fills_first_and_bad_flags_fail() {
    let cluster = Cluster::start(3);
    let run = cluster.run_client(&["bench", "-n", "500", "-c", "2", "-r", "100", "-t", "get"], "");
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("fill: 100 keys"), "{}", run.stdout);
    assert!(parse_line(&run.stdout, "get") > 0.0);
    assert!(run.stdout.contains("0 gets of absent keys"), "{}", run.stdout);

    let run = cluster.run_client(&["bench", "-t", "del"], "");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("unknown test"), "{}", run.stderr);
    let run = cluster.run_client(&["bench", "-n", "10", "--duration", "1"], "");
    assert_eq!(run.code, 2);
    let run = cluster.run_client(&["bench", "-P", "0"], "");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("-P"), "{}", run.stderr);
}

/// The coordinator killed while a bench runs: the run stops in the phase it was in, with a
/// message and exit status 2 (it went on into its get phase, and printed zero latencies).
#[test]
fn bench_stops_with_an_error_when_the_coordinator_dies() {
    use std::io::BufRead;
    let mut cluster = Cluster::start(3);
    let port = cluster.clients_port.to_string();
    let mut bench = std::process::Command::new(CLIENT)
        .args(["-h", "127.0.0.1", "-p", &port, "--timeout", "1"])
        .args(["bench", "-n", "1000000000", "-c", "4", "-t", "put,get"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(bench.stdout.take().unwrap());
    let mut summary = String::new();
    stdout.read_line(&mut summary).unwrap();
    assert!(summary.starts_with("ftkv bench: 3 servers"), "{summary}");
    cluster.kill_coord();
    let began = std::time::Instant::now();
    let out = bench.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{rest}{err}");
    assert!(err.contains("stopped in put") && err.contains("is the coordinator running"), "{err}");
    assert!(!rest.contains("get:") && !rest.contains("=0us"), "no get phase: {rest}");
    assert!(began.elapsed() < std::time::Duration::from_secs(15), "{:?}", began.elapsed());
}

/// A `-c` that the servers or the open-file limit cannot take is refused up front, naming
/// the limit (past the servers' limit the connections were closed without a word).
#[test]
fn bench_connections_past_a_limit_are_refused_naming_it() {
    let cluster = Cluster::start(3);
    let run = cluster.run_client(&["bench", "-c", "5000", "-n", "10"], "");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("-c 5000") && run.stderr.contains("at most 4096"),
        "{}",
        run.stderr
    );
    let command = format!(
        "ulimit -n 200 && exec {CLIENT} -h 127.0.0.1 -p {} bench -c 100 -n 10",
        cluster.clients_port
    );
    let out = std::process::Command::new("sh").args(["-c", &command]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("364 open files") && err.contains("may open 200"), "{err}");
}
