//! `client`: the ftkv command-line client (REPL, script file, one-shot, status, watch,
//! bench). `args` is the command line; this file picks the form and runs it.

mod args;
mod bench;

use std::io::{IsTerminal, Write};

use clap::Parser;
use ftkv::client::Client;
use ftkv::client::line::parse_words;
use ftkv::client::repl;
use ftkv::client::session::{Outcome, Session, end_by_sigpipe, status_json};
use ftkv::text::format_table;
use tokio::runtime::Runtime;

use args::{Args, Cmd, seconds};

fn main() {
    let args = Args::parse();
    let code = match start(args) {
        Ok(outcome) => outcome as i32,
        Err(e) => {
            eprintln!("client: {e}");
            2
        }
    };
    std::process::exit(code);
}

fn start(args: Args) -> Result<Outcome, String> {
    let global = &args.global;
    let port = global.port();
    match &global.log {
        Some(path) => ftkv::logging::init(Some(path), "info")?,
        None => ftkv::logging::init(None, "error")?,
    }
    let timeout = seconds(global.timeout, "timeout")?;
    let coordinator = ftkv::config::coordinator_addrs(&global.host, port)?.join(",");
    if args.file.is_some() && !args.words.is_empty() {
        return Err("give either -f FILE or an operation, not both".into());
    }
    if let Some(command) = args.command {
        if args.file.is_some() {
            return Err(format!("give either -f FILE or {}, not both", command.name()));
        }
        return match command {
            Cmd::Status { json } => status(Client::new(coordinator, timeout), json),
            Cmd::Watch => watch(coordinator),
            Cmd::Bench(options) => bench::run(coordinator, timeout, options),
        };
    }
    let client = Client::new(coordinator, timeout);
    let runtime = LetGo(Some(Runtime::new().map_err(|e| e.to_string())?));
    let mut session = Session::new(client);
    if !args.words.is_empty() {
        match parse_words(&args.words) {
            Ok(command) => runtime.block_on(session.run(command)),
            Err(e) => return Err(format!("Invalid operation format ({e})")),
        }
        return Ok(session.outcome());
    }
    if let Some(path) = &args.file {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        repl::run_lines(&runtime, &mut session, std::io::BufReader::new(file))?;
    } else if std::io::stdin().is_terminal() {
        repl::run_terminal(&runtime, &mut session)?;
    } else {
        repl::run_lines(&runtime, &mut session, std::io::stdin().lock())?;
    }
    Ok(session.outcome())
}

/// `client status [--json]`: the table, or exactly one JSON object.
fn status(mut client: Client, json: bool) -> Result<Outcome, String> {
    let runtime = LetGo(Some(Runtime::new().map_err(|e| e.to_string())?));
    let report = runtime.block_on(client.status()).map_err(|e| e.to_string())?;
    if json {
        out(&format!("{}\n", status_json(&report)))?;
    } else {
        out(&format_table(&report))?;
    }
    Ok(Outcome::Ok)
}

/// `client watch`: full-screen on a terminal, event lines otherwise.
fn watch(coordinator: String) -> Result<Outcome, String> {
    let runtime = LetGo(Some(Runtime::new().map_err(|e| e.to_string())?));
    let terminal = std::io::stdout().is_terminal();
    runtime.block_on(ftkv::watch::run(coordinator, terminal))?;
    Ok(Outcome::Ok)
}

/// Writes `text` to standard output; a failure (a full disk) is an error, not a panic.
fn out(text: &str) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => end_by_sigpipe(),
        written => written.map_err(|e| format!("writing standard output: {e}")),
    }
}

/// A runtime that is let go when dropped rather than waited for: dropping one waits for its
/// blocking threads, among them a name lookup that outlived its operation's deadline.
struct LetGo(Option<Runtime>);

impl std::ops::Deref for LetGo {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        self.0.as_ref().expect("until dropped")
    }
}

impl Drop for LetGo {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
