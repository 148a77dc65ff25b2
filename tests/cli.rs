//! The three programs' command lines: output formats, exit statuses, clear errors.

mod support;

use std::process::Command;

use ftkv::lines;
use support::cluster::{CLIENT, COORD, Cluster, SERVER};

#[test]
fn repl_from_a_pipe_prints_like_the_original() {
    let cluster = Cluster::start(3);
    let input = "P \"k1\" \"v1\"\nG \"k1\"\n\n# comment\nP \"bin\\x00\\xff\" \"tab\\there\\nnl \\\"q\\\" \\\\\"\nG \"bin\\x00\\xff\"\nD \"k1\"\nG \"k1\"\n";
    let run = cluster.run_client(&[], input);
    assert_eq!(
        run.stdout,
        "value[\"k1\"] <- \"v1\"\nvalue[\"k1\"] == \"v1\"\n\
         value[\"bin\\x00\\xff\"] <- \"tab\\there\\nnl \\\"q\\\" \\\\\"\n\
         value[\"bin\\x00\\xff\"] == \"tab\\there\\nnl \\\"q\\\" \\\\\"\n\
         value[\"k1\"] deleted\n"
    );
    assert_eq!(run.stderr, "Operation #6 failed with: Key not found\n");
    assert_eq!(run.code, 1, "only Key not found: exit 1");
    assert!(!run.stdout.contains("> "), "no prompt when not on a terminal");
}

#[test]
fn bad_lines_are_invalid_format_and_the_session_goes_on() {
    let cluster = Cluster::start(3);
    let input = "P \"k\" \"v\nG \"\"\nG \"k\" junk\nX \"k\"\nP \"k\" \"v\"\nG \"k\"\n";
    let run = cluster.run_client(&[], input);
    let errors: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(errors.len(), 4, "{}", run.stderr);
    for (i, line) in errors.iter().enumerate() {
        let prefix = format!("Operation #{} failed with: Invalid operation format (", i + 1);
        assert!(line.starts_with(&prefix), "{line}");
    }
    assert_eq!(run.stdout, "value[\"k\"] <- \"v\"\nvalue[\"k\"] == \"v\"\n");
    assert_eq!(run.code, 2);
}

#[test]
fn oversized_key_in_the_repl_is_refused_and_the_client_goes_on() {
    let cluster = Cluster::start(3);
    let big_key = "k".repeat(64 * 1024 + 1);
    let input = format!("P \"{big_key}\" \"v\"\nP \"ok\" \"fine\"\nG \"ok\"\n");
    let run = cluster.run_client(&[], &input);
    assert!(run.stderr.starts_with("Operation #1 failed with: Key too large"), "{}", run.stderr);
    assert_eq!(run.stdout, "value[\"ok\"] <- \"fine\"\nvalue[\"ok\"] == \"fine\"\n");
    assert_eq!(run.code, 2);
}

#[test]
fn one_shot_words_and_script_file() {
    let cluster = Cluster::start(3);
    let run = cluster.run_client(&["P", "some key", "a value"], "");
    assert_eq!((run.code, run.stdout.as_str()), (0, "value[\"some key\"] <- \"a value\"\n"));
    let run = cluster.run_client(&["G", "some key"], "");
    assert_eq!((run.code, run.stdout.as_str()), (0, "value[\"some key\"] == \"a value\"\n"));
    let run = cluster.run_client(&["G", "missing"], "");
    assert_eq!((run.code, run.stderr.as_str()), (1, "Operation #1 failed with: Key not found\n"));
    let run = cluster.run_client(&["X", "k"], "");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("Invalid operation format"), "{}", run.stderr);

    let script = cluster.path("ops.txt");
    std::fs::write(&script, "P \"f\" \"1\"\nG \"f\"\nD \"f\"\n").unwrap();
    let run = cluster.run_client(&["-f", script.to_str().unwrap()], "G \"ignored\"\n");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "value[\"f\"] <- \"1\"\nvalue[\"f\"] == \"1\"\nvalue[\"f\"] deleted\n");
    let run = cluster.run_client(&["-f", "/nonexistent/ops"], "");
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("/nonexistent/ops"), "{}", run.stderr);
}

#[test]
fn status_table_and_json() {
    let cluster = Cluster::start(3);
    let run = cluster.run_client(&["status"], "");
    assert_eq!(run.code, 0);
    assert!(run.stdout.contains("epoch 1"), "{}", run.stdout);
    assert_eq!(run.stdout.matches("running").count(), 3, "{}", run.stdout);

    let run = cluster.run_client(&["status", "--json"], "");
    assert_eq!(run.code, 0);
    assert_eq!(run.stdout.lines().count(), 1, "exactly one JSON object: {}", run.stdout);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["epoch"], 1);
    assert!(json["recovery"].is_null());
    let servers = json["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3);
    for (i, server) in servers.iter().enumerate() {
        let object = server.as_object().unwrap();
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["client_port", "coord_port", "host", "id", "pid", "servers_port", "state"]
        );
        assert_eq!(server["id"], i as u64);
        assert_eq!(server["host"], "localhost");
        assert_eq!(server["state"], "running");
        assert_eq!(server["pid"].as_u64().unwrap() as u32, cluster.pids[i]);
        assert!(server["client_port"].as_u64().unwrap() > 0);
    }
}

/// `client status`, `watch` and `bench` with the coordinator's options after the word, as
/// people type them (clap asked for `--port` that was there: the words after the command were
/// its own, so `-h` and `-p` had to come first).
#[test]
fn commands_take_the_coordinators_options_after_the_word() {
    use std::io::BufRead;
    let cluster = Cluster::start(3);
    let port = cluster.clients_port.to_string();
    let client = |words: &[&str]| {
        let out = Command::new(CLIENT).args(words).output().unwrap();
        let (stdout, stderr) = (out.stdout, out.stderr);
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        (out.status.code(), text(stdout), text(stderr))
    };
    let (code, stdout, stderr) = client(&["status", "-h", "127.0.0.1", "-p", &port]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.matches("running").count(), 3, "{stdout}");
    let (code, stdout, stderr) = client(&["-h", "127.0.0.1", "status", "--json", "-p", &port]);
    assert_eq!(code, Some(0), "options on both sides: {stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["servers"].as_array().unwrap().len(), 3);
    let bench = ["bench", "-n", "50", "-c", "2", "-p", &port, "-h", "127.0.0.1", "-r", "10"];
    let (code, stdout, stderr) = client(&bench);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("checked: 100 answers, 0 errors"), "{stdout}");

    let mut watch = Command::new(CLIENT)
        .args(["watch", "-h", "127.0.0.1", "-p", &port])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = std::io::BufReader::new(watch.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("epoch 1")) {
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = watch.kill();
                let out = watch.wait_with_output().unwrap();
                panic!("no epoch line: {lines:?} {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    assert_eq!(lines.iter().filter(|l| l.ends_with("running")).count(), 3, "{lines:#?}");
    let _ = watch.kill();
    let _ = watch.wait();
}

/// Each command's `--help` shows its own options with the coordinator's, `-h` staying the
/// host; it needs no `-p`.
#[test]
fn every_command_has_its_own_help() {
    for (command, own, others) in [
        ("status", &["--json"][..], &["--requests", "--file"][..]),
        ("watch", &[], &["--json", "--requests", "--file"]),
        ("bench", &["-n, --requests", "-P, --pipeline", "--duration"], &["--json", "--file"]),
    ] {
        let out = Command::new(CLIENT).args([command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(help.contains(&format!("Usage: client {command} [OPTIONS]")), "{help}");
        assert!(help.contains("-h, --host") && help.contains("-p, --port"), "{help}");
        assert!(!help.contains("-h, --help"), "help is long only: {help}");
        for option in own {
            assert!(help.contains(option), "{command} shows {option}: {help}");
        }
        for option in others {
            assert!(!help.contains(option), "{command} does not take {option}: {help}");
        }
    }
}

/// A command's bad option, a missing `-p` after the word, or `-f` with a command: a one-line
/// reason on standard error, usage, and exit status 2, before anything connects.
#[test]
fn a_bad_command_option_is_a_clear_error() {
    for (words, reason) in [
        (&["status", "--jsn", "-p", "1"][..], "unexpected argument '--jsn'"),
        (&["watch", "--json", "-p", "1"], "unexpected argument '--json'"),
        (&["bench", "-p", "1", "-t", "del"], "unknown test \"del\""),
        (&["bench", "-p", "1", "-x"], "unexpected argument '-x'"),
        (&["watch", "-h", "127.0.0.1"], "required arguments were not provided:\n  --port"),
        (&["-f", "ops.txt", "-p", "1", "status"], "give either -f FILE or status, not both"),
    ] {
        let out = Command::new(CLIENT).args(words).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{words:?}: {err}");
        assert!(err.contains(reason), "{words:?}: {err}");
        assert!(out.stdout.is_empty(), "{words:?}");
    }
}

/// Nobody listens at the coordinator's address (a port held for the test, so that no other
/// process takes it meanwhile): the operation fails, naming the coordinator.
#[test]
fn client_without_a_coordinator_fails_clearly() {
    let nobody = support::ports::hold();
    let port = nobody.port.to_string();
    let out = Command::new(CLIENT)
        .args(["-h", "127.0.0.1", "-p", &port, "--timeout", "0.5", "G", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("Operation #1 failed with: Service unavailable"), "{stderr}");
    assert!(stderr.contains(&port), "names the coordinator: {stderr}");
}

/// Runs `coord` on `config` (as cfg.txt); `args` replace the defaults `-c 0 -s 0 -C cfg.txt`.
fn coord_with_config(config: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cfg.txt"), config).unwrap();
    let defaults = ["-c", "0", "-s", "0", "-C", "cfg.txt"];
    let out = Command::new(COORD)
        .current_dir(dir.path())
        .args(if args.is_empty() { &defaults[..] } else { args })
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn coord_config_errors_name_the_line_and_exit_non_zero() {
    let (code, err) = coord_with_config("2\nlocalhost 0 0 0\nlocalhost 0 0 0\n", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("config line 1") && err.contains("at least 3"), "{err}");
    let (code, err) =
        coord_with_config("3\nlocalhost 0 0 0\nlocalhost 0 99999 0\nlocalhost 0 0 0\n", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("config line 3") && err.contains("99999"), "{err}");
    let (code, err) =
        coord_with_config("3\nlocalhost 0 0 0\nlocalhost 0 0 0\nbad!host 0 0 0\n", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("config line 4") && err.contains("bad host"), "{err}");
    let (code, err) = coord_with_config(
        "3\nlocalhost 0 0 0\n",
        &["-c", "0", "-s", "0", "-C", "cfg.txt", "-t", "nan"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("timeout"), "{err}");
    // Too large for the clocks' arithmetic (it panicked at 1e20).
    let (code, err) = coord_with_config(
        "3\nlocalhost 0 0 0\n",
        &["-c", "0", "-s", "0", "-C", "cfg.txt", "-t", "1e20"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("0.05 to 3600"), "{err}");
    // A count too large to allocate for (it aborted the coordinator).
    let (code, err) = coord_with_config("4294967297\nlocalhost 0 0 0\n", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("at most 100"), "{err}");
    let (code, err) = coord_with_config("", &["-c", "0", "-s", "0", "-C", "/nonexistent.txt"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.txt"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, no backtrace: {err}");
}

#[test]
fn coord_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, err) = coord_with_config(
        "3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n",
        &["-c", &port, "-s", "0", "-C", "cfg.txt"],
    );
    assert_eq!(code, 1);
    assert!(err.contains(&format!("cannot listen on 0.0.0.0:{port} (clients port)")), "{err}");
}

#[test]
fn help_is_long_only_and_h_is_host() {
    let out = Command::new(CLIENT).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("-h, --host"));
    let out = Command::new(COORD).arg("--help").output().unwrap();
    assert!(out.status.success());
    let out = Command::new(COORD).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "missing required flags");
}

/// On a terminal: a `> ` prompt, and history (arrow up recalls the last line). The terminal
/// is a real pty made by `script`. Each line is typed once the REPL has answered the last one
/// and prompted again (typed ahead, keys reach the terminal before the line editor).
#[test]
fn repl_on_a_terminal_has_a_prompt_and_history() {
    use std::io::{Read, Write};
    let cluster = Cluster::start(3);
    let command = format!("{CLIENT} -h 127.0.0.1 -p {}", cluster.clients_port);
    let mut script = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("FTKV_HISTORY", cluster.path("history"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    let mut input = script.stdin.take().unwrap();
    let mut output = script.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = output.read(&mut chunk) {
            if tx.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Vec::new();
    // Waits until `text` appears on the screen after byte `from`; returns where it ends.
    let mut wait_for = |from: usize, text: &str| -> usize {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(at) = screen[from..].windows(text.len()).position(|w| w == text.as_bytes())
            {
                return from + at + text.len();
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => screen.extend(chunk),
                Err(_) => {
                    panic!("no {text:?} on the screen: {:?}", String::from_utf8_lossy(&screen))
                }
            }
        }
    };
    let mut at = wait_for(0, "> ");
    for (keys, answer) in [
        ("P \"a\" \"1\"\r", "value[\"a\"] <- \"1\""),
        ("G \"a\"\r", "value[\"a\"] == \"1\""),
        ("\x1b[A\r", "value[\"a\"] == \"1\""),
    ] {
        input.write_all(keys.as_bytes()).unwrap();
        input.flush().unwrap();
        at = wait_for(at, answer);
        at = wait_for(at, "> ");
    }
    input.write_all(b"\x04").unwrap();
    drop(input);
    let status = script.wait().unwrap();
    reader.join().unwrap();
    screen.extend(rx.try_iter().flatten());
    let screen = String::from_utf8_lossy(&screen);
    assert!(screen.contains("> "), "prompt: {screen:?}");
    assert!(screen.contains("value[\"a\"] <- \"1\""), "{screen:?}");
    assert_eq!(
        screen.matches("value[\"a\"] == \"1\"").count(),
        2,
        "history recalled the GET: {screen:?}"
    );
    assert!(status.success());
}

/// A cluster token left in the coordinator's environment is not this cluster's: the servers
/// it starts must take theirs from standard input. (They read the variable first, were
/// refused, and the start failed.)
#[test]
fn a_token_in_the_coordinators_environment_does_not_break_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cfg.txt"),
        "3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n",
    )
    .unwrap();
    let mut coord = Command::new(COORD)
        .current_dir(dir.path())
        .args(["-c", "0", "-s", "0", "-C", "cfg.txt", "-l", "coord.log"])
        .env("FTKV_CLUSTER_TOKEN", "not-this-clusters")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(coord.stdout.take().unwrap());
    let ready = std::io::BufRead::lines(stdout)
        .map_while(Result::ok)
        .any(|line| line.starts_with("cluster ready"));
    drop(coord.stdin.take());
    assert!(coord.wait().unwrap().success());
    assert!(ready, "{}", std::fs::read_to_string(dir.path().join("coord.log")).unwrap());
}

/// A server that never joins a cluster (here nobody listens at the coordinator's address)
/// fails with a clear message and a non-zero status, and leaves the dumps of an earlier run
/// alone: it never held data. (It exited 0, "lost the coordinator", and wrote empty dumps
/// over them; a coordinator whose start failed left the same behind.)
#[test]
fn a_server_that_never_joins_fails_and_leaves_earlier_dumps_alone() {
    let dir = tempfile::tempdir().unwrap();
    let dumps = ["server_0.primary", "server_0.secondary"].map(|name| dir.path().join(name));
    for dump in &dumps {
        std::fs::write(dump, "P \"k\" \"v\"\n").unwrap();
    }
    // A port held for the test: nothing listens there, and no other process can take it.
    let nobody = support::ports::hold();
    let out = Command::new(SERVER)
        .args(["-h", "127.0.0.1", "-m", &nobody.port.to_string(), "-S", "0", "-n", "3"])
        .arg("--dump-dir")
        .arg(dir.path())
        .arg("-l")
        .arg(dir.path().join("server_0.log"))
        .env("FTKV_CLUSTER_TOKEN", "token")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(lines::NEVER_JOINED), "{err}");
    for dump in &dumps {
        assert_eq!(std::fs::read_to_string(dump).unwrap(), "P \"k\" \"v\"\n");
    }
}

/// Input bytes that are not UTF-8 are refused (pointing to `\xNN`), not stored altered: they
/// became U+FFFD. The lines around them run.
#[test]
fn input_that_is_not_utf8_is_refused_not_altered() {
    let cluster = Cluster::start(3);
    let run = cluster.run_client(&[], b"P \"raw\" \"a\xffb\"\nP \"ok\" \"x\"\nG \"raw\"\n");
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("Operation #1 failed with: Invalid operation format (not UTF-8"));
    assert!(run.stderr.contains("Operation #3 failed with: Key not found"), "{}", run.stderr);
    assert_eq!(run.stdout, "value[\"ok\"] <- \"x\"\n");
}

/// Output that cannot be written (a full disk) is a failure with a message, not a panic, and
/// not a success: `status` and a PUT into /dev/full.
#[test]
fn output_that_cannot_be_written_fails_clearly() {
    let cluster = Cluster::start(3);
    let port = cluster.clients_port.to_string();
    for words in [&["status"][..], &["P", "k", "v"]] {
        let out = Command::new(CLIENT)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(words)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{words:?}: {err}");
        assert!(err.contains("No space left on device") && !err.contains("panicked"), "{err}");
    }
}

/// A "coordinator" that accepts and never answers: the operation fails at its --timeout,
/// naming the address (the call to the coordinator waited a fixed 2 s, past the deadline).
#[test]
fn a_silent_coordinator_fails_at_the_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let began = std::time::Instant::now();
    let out = Command::new(CLIENT)
        .args(["-h", "127.0.0.1", "-p", &port, "--timeout", "0.5", "G", "k"])
        .output()
        .unwrap();
    let took = began.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("coordinator at 127.0.0.1:{port}: no answer in time")), "{err}");
    assert!(took < std::time::Duration::from_millis(1500), "took {took:?}");
}

/// Standard output's reader went away (`client ... | head -1`): the client ends by SIGPIPE,
/// as any Unix filter, without a panic (status and bench panicked on the broken pipe).
#[test]
fn a_reader_that_went_away_ends_the_client_by_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    let cluster = Cluster::start(3);
    let port = cluster.clients_port.to_string();
    for words in [&["status"][..], &["P", "k", "v"], &["bench", "-n", "100"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(CLIENT)
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(words)
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{words:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A script file and an operation on the command line together: one would be ignored (the
/// file was), so it is an error.
#[test]
fn a_file_and_an_operation_together_are_refused() {
    let out = Command::new(CLIENT).args(["-p", "1", "-f", "/dev/null", "G", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("either -f FILE or an operation"));
}

/// `make all` while a program it installs runs (the service is up): it copies each to a
/// temporary name and renames it over the old one (copying over a running program failed
/// with "Text file busy"). Run on a copy of the Makefile, with the build left out
/// (`CARGO=true`) and stand-ins for the built programs.
#[test]
fn make_all_installs_over_running_programs() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let makefile = concat!(env!("CARGO_MANIFEST_DIR"), "/Makefile");
    std::fs::copy(makefile, dir.path().join("Makefile")).unwrap();
    let built = dir.path().join("target/release");
    std::fs::create_dir_all(&built).unwrap();
    for program in ["client", "server", "coord"] {
        std::fs::write(built.join(program), format!("#!/bin/sh\necho new {program}\n")).unwrap();
        std::fs::set_permissions(built.join(program), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }
    let installed = dir.path().join("client");
    std::fs::copy("/bin/sleep", &installed).unwrap();
    let mut running = Command::new(&installed).arg("60").spawn().unwrap();
    let out = Command::new("make")
        .current_dir(dir.path())
        .args(["all", "CARGO=true"])
        .output()
        .expect("make");
    let _ = running.kill();
    let _ = running.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for program in ["client", "server", "coord"] {
        let run = Command::new(dir.path().join(program)).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&run.stdout), format!("new {program}\n"));
    }
    let left: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|name| name.to_string_lossy().ends_with(".new")), "{left:?}");
}

/// `--heartbeat-ms 0` is refused with a message (it silently became 1 ms), by `coord` and
/// by `server`, and so is a value past the largest.
#[test]
fn heartbeat_ms_0_is_refused() {
    let config = "3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n";
    for ms in ["0", "1800001"] {
        let (code, err) = coord_with_config(
            config,
            &["-c", "0", "-s", "0", "-C", "cfg.txt", "--heartbeat-ms", ms],
        );
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--heartbeat-ms") && err.contains("from 1 to 1800000"), "{err}");
    }
    let out = Command::new(SERVER)
        .args(["-h", "127.0.0.1", "-m", "1", "-S", "0", "-n", "3", "--heartbeat-ms", "0"])
        .env("FTKV_CLUSTER_TOKEN", "token")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--heartbeat-ms") && err.contains("from 1 to 1800000"), "{err}");
}

#[test]
fn bad_etcd_flags_are_refused_before_anything_starts() {
    let config = "3\nlocalhost 0 0 0\nlocalhost 0 0 0\nlocalhost 0 0 0\n";
    let with = |more: &[&str]| {
        let mut args = vec!["-c", "0", "-s", "0", "-C", "cfg.txt"];
        args.extend(more);
        coord_with_config(config, &args)
    };
    let (code, err) = with(&["--etcd", "127.0.0.1:2379"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not an http://HOST:PORT URL"), "{err}");
    let (code, err) = with(&["--etcd", "https://127.0.0.1:2379"]);
    assert_eq!(code, 1);
    assert!(err.contains("no TLS"), "{err}");
    let (code, err) = with(&["--etcd", "http://127.0.0.1:2379", "--cluster", "a/b"]);
    assert_eq!(code, 1);
    assert!(err.contains("--cluster"), "{err}");
    let (code, err) = with(&["--etcd", "http://127.0.0.1:2379", "--etcd-ttl", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--etcd-ttl"), "{err}");
    let (code, err) = with(&["--cluster", "alone"]);
    assert_ne!(code, 0, "--cluster needs --etcd");
    assert!(err.contains("--etcd"), "{err}");
}

#[test]
fn a_bad_coordinator_list_is_refused_by_the_client() {
    let out = Command::new(CLIENT).args(["-h", "a,,b", "-p", "7000", "G", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a failure other than a missing key");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("an empty coordinator address"), "{err}");
}
