//! `client bench` against a real cluster: a short run that must check every answer and print
//! its report lines. (Benchmarks themselves are not tests; this only proves the mode works.)

mod support;

use support::cluster::Cluster;

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
