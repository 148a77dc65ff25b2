//! The interactive client on a real terminal (tmux): pasted lines, bracketed or not, and
//! lines typed ahead all run, in order; `help`; `quit`, ctrl+c and ctrl+d; the history
//! file, kept across restarts of the client, and one that cannot be written.

mod support;

use std::path::Path;
use std::time::Duration;

use ftkv::routing::slot_of;
use support::cluster::{CLIENT, Cluster, kill, wait_until};
use support::sockets;
use support::tmux::Tmux;

/// The client on a terminal, on `cluster`, with `env` (`NAME=value` words for env(1)).
fn client_on_a_terminal(cluster: &Cluster, env: &str) -> Option<Tmux> {
    let command = format!("env {env} {CLIENT} -h 127.0.0.1 -p {}", cluster.clients_port);
    let tmux = Tmux::start(&command)?;
    tmux.wait_for("> ");
    Some(tmux)
}

/// What a second client, from a pipe, reads for `keys`.
fn stored(cluster: &Cluster, keys: &[&str]) -> String {
    let input: String = keys.iter().map(|key| format!("G \"{key}\"\n")).collect();
    let run = cluster.run_client(&[], input);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

/// A cluster whose servers may be paused for a while without being replaced: a pause of a
/// few hundred milliseconds on a loaded machine must not start a recovery.
fn patient_cluster() -> Cluster {
    Cluster::start_with(3, &["-t", "5"])
}

/// The pid and clients port of the server that owns `key` (of 3).
fn owner_of(cluster: &Cluster, key: &[u8]) -> (u32, u16) {
    let owner = slot_of(key, 3) as usize;
    let port = cluster.status()["servers"][owner]["client_port"].as_u64().unwrap() as u16;
    (cluster.pids[owner], port)
}

/// Types `line` and Enter, then waits until the operation is surely under way: its request
/// waits unread in the socket of the server on `port`, paused.
fn start_waiting(tmux: &Tmux, line: &str, port: u16) {
    tmux.keys(&[line, "Enter"]);
    let sent = || sockets::established(port).iter().any(|q| q.recv > 0);
    assert!(wait_until(Duration::from_secs(10), sent), "{line} was not sent");
}

#[test]
fn pasted_and_typed_ahead_lines_all_run_in_order() {
    let cluster = patient_cluster();
    let history = cluster.path("history");
    let env = format!("FTKV_HISTORY={}", history.display());
    let Some(tmux) = client_on_a_terminal(&cluster, &env) else { return };

    // A paste of three lines, with bracketed-paste markers (the editor asks for them).
    tmux.paste("P \"a\" \"1\"\nP \"b\" \"2\"\nG \"a\"\n");
    tmux.wait_for("value[\"a\"] == \"1\"");
    // Three lines typed at once, faster than anyone types.
    tmux.keys(&["P \"c\" \"3\"", "Enter", "P \"d\" \"4\"", "Enter", "G \"c\"", "Enter"]);
    tmux.wait_for("value[\"c\"] == \"3\"");

    // Typed while an operation runs: its key's owner is paused, so the GET waits.
    tmux.keys(&["P \"slow\" \"s\"", "Enter"]);
    tmux.wait_for("value[\"slow\"] <- \"s\"");
    let (owner, port) = owner_of(&cluster, b"slow");
    kill(owner, "STOP");
    // The editor has returned the GET's line: the next keys reach the terminal while the
    // operation runs.
    start_waiting(&tmux, "G \"slow\"", port);
    tmux.keys(&["P \"e\" \"5\"", "Enter", "G \"e\"", "Enter"]);
    let screen = tmux.wait_for("G \"e\"");
    kill(owner, "CONT");
    assert!(!screen.contains("value[\"e\"]"), "ran before the GET it followed:\n{screen}");
    let screen = tmux.wait_for("value[\"e\"] == \"5\"");

    let answers = [
        "value[\"a\"] <- \"1\"",
        "value[\"b\"] <- \"2\"",
        "value[\"a\"] == \"1\"",
        "value[\"c\"] <- \"3\"",
        "value[\"d\"] <- \"4\"",
        "value[\"c\"] == \"3\"",
        "value[\"slow\"] == \"s\"",
        "value[\"e\"] <- \"5\"",
        "value[\"e\"] == \"5\"",
    ];
    let mut at = 0;
    for answer in answers {
        let found = screen[at..].find(answer).unwrap_or_else(|| panic!("{answer}:\n{screen}"));
        at += found + answer.len();
    }
    assert!(!screen.contains("failed with"), "{screen}");
    assert_eq!(
        stored(&cluster, &["a", "b", "c", "d", "e"]),
        "value[\"a\"] == \"1\"\nvalue[\"b\"] == \"2\"\nvalue[\"c\"] == \"3\"\n\
         value[\"d\"] == \"4\"\nvalue[\"e\"] == \"5\"\n",
        "a second client reads every value"
    );

    tmux.keys(&["quit", "Enter"]);
    assert_eq!(tmux.wait_exit(), 0);
    let kept = std::fs::read_to_string(&history).unwrap();
    assert!(kept.contains("P \"b\" \"2\"\n") && kept.contains("G \"e\"\n"), "{kept}");
}

/// `help` lists the operations, the escapes and the history file; `exit` leaves. (No
/// operation runs: the client asks no coordinator.)
#[test]
fn help_lists_the_operations_and_exit_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    let command = format!("env FTKV_HISTORY={} {CLIENT} -p 1", history.display());
    let Some(tmux) = Tmux::start(&command) else { return };
    tmux.wait_for("> ");
    tmux.keys(&["help", "Enter"]);
    let screen = tmux.wait_for(&format!("History file: {}", history.display()));
    for text in ["P \"key\" \"value\"", "G \"key\"", "D \"key\"", "\\xNN", "quit, exit", "ctrl+c"] {
        assert!(screen.contains(text), "help names {text}:\n{screen}");
    }
    tmux.keys(&["exit", "Enter"]);
    assert_eq!(tmux.wait_exit(), 0);
}

/// The history is `$HOME/.ftkv_history` by default: after a restart of the client, the up
/// arrow recalls the last line of the run before. Ctrl+c drops the line being typed (it does
/// not run), ctrl+d leaves.
#[test]
fn history_survives_a_restart_of_the_client() {
    let cluster = Cluster::start(3);
    let home = cluster.path("home");
    std::fs::create_dir(&home).unwrap();
    let env = format!("-u FTKV_HISTORY HOME={}", home.display());
    let Some(tmux) = client_on_a_terminal(&cluster, &env) else { return };
    tmux.keys(&["P \"h\" \"1\"", "Enter"]);
    tmux.wait_for("value[\"h\"] <- \"1\"");
    tmux.keys(&["G \"dropped\"", "C-c"]);
    tmux.wait_for_count("> ", 3);
    tmux.keys(&["G \"h\"", "Enter"]);
    let screen = tmux.wait_for("value[\"h\"] == \"1\"");
    assert!(!screen.contains("failed with"), "the line before ctrl+c did not run:\n{screen}");
    tmux.keys(&["C-d"]);
    assert_eq!(tmux.wait_exit(), 0);
    drop(tmux);
    let file = Path::new(&home).join(".ftkv_history");
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(kept.ends_with("P \"h\" \"1\"\nG \"h\"\n"), "{kept}");

    let tmux = client_on_a_terminal(&cluster, &env).unwrap();
    tmux.keys(&["Up"]);
    tmux.wait_for("> G \"h\"");
    tmux.keys(&["Up", "Up", "Enter"]);
    tmux.wait_for("value[\"h\"] <- \"1\"");
    tmux.keys(&["exit", "Enter"]);
    assert_eq!(tmux.wait_exit(), 0);
}

/// A history file that cannot be written is said once; every operation still runs.
#[test]
fn a_history_file_that_cannot_be_written_is_said_once() {
    let cluster = Cluster::start(3);
    let env = format!("FTKV_HISTORY={}", cluster.path("missing/dir/history").display());
    let Some(tmux) = client_on_a_terminal(&cluster, &env) else { return };
    tmux.keys(&["P \"x\" \"1\"", "Enter", "P \"y\" \"2\"", "Enter", "G \"x\"", "Enter"]);
    let screen = tmux.wait_for("value[\"x\"] == \"1\"");
    assert_eq!(screen.matches("cannot write the history file").count(), 1, "{screen}");
    assert!(screen.contains("value[\"y\"] <- \"2\""), "{screen}");
    tmux.keys(&["C-d"]);
    assert_eq!(tmux.wait_exit(), 0);
}

/// Ctrl+c while an operation runs abandons it (it fails, and the exit status says so) and
/// the session goes on: the next operations get their own answers, not the abandoned one's,
/// which comes late. A ctrl+d typed while an operation runs leaves once it is done.
#[test]
fn ctrl_c_abandons_the_operation_that_runs() {
    let cluster = patient_cluster();
    let env = format!("FTKV_HISTORY={}", cluster.path("history").display());
    let Some(tmux) = client_on_a_terminal(&cluster, &env) else { return };
    tmux.keys(&["P \"slow\" \"s\"", "Enter"]);
    tmux.wait_for("value[\"slow\"] <- \"s\"");
    let (owner, port) = owner_of(&cluster, b"slow");
    kill(owner, "STOP");
    start_waiting(&tmux, "G \"slow\"", port);
    tmux.keys(&["C-c"]);
    tmux.wait_for("Operation #2 failed with: Interrupted");
    kill(owner, "CONT");
    tmux.keys(&["P \"slow\" \"t\"", "Enter", "G \"slow\"", "Enter"]);
    tmux.wait_for("value[\"slow\"] == \"t\"");

    kill(owner, "STOP");
    start_waiting(&tmux, "G \"slow\"", port);
    tmux.keys(&["C-d"]);
    kill(owner, "CONT");
    assert_eq!(tmux.wait_exit(), 2, "an operation failed");
    let screen = tmux.screen();
    assert_eq!(screen.matches("value[\"slow\"] == \"t\"").count(), 2, "{screen}");
    assert_eq!(screen.matches("failed with").count(), 1, "{screen}");
}
