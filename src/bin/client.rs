//! `client`: the ftkv command-line client (REPL, script file, one-shot, status).

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ftkv::client::Client;
use ftkv::client::line::parse_words;
use ftkv::client::session::{Outcome, Session, status_json};
use ftkv::coord::format_table;
use tokio::runtime::Runtime;

/// The ftkv client. Reads `P "key" "value"`, `G "key"` and `D "key"` lines from the
/// terminal, a pipe or FILE; or runs one operation given as words (`P key value`);
/// or `status [--json]`.
#[derive(Parser, Debug)]
#[command(version, disable_help_flag = true)]
struct Args {
    /// Coordinator's host.
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    host: String,
    /// Coordinator's clients port.
    #[arg(short = 'p', long)]
    port: u16,
    /// Run the operations in FILE instead of reading standard input.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Log file.
    #[arg(short = 'l', long)]
    log: Option<PathBuf>,
    /// Seconds an operation keeps retrying before it fails.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// One operation (`P key value`, `G key`, `D key`) or `status [--json]`.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    words: Vec<String>,
}

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
    match &args.log {
        Some(path) => ftkv::logging::init(Some(path), "info")?,
        None => ftkv::logging::init(None, "error")?,
    }
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(format!("bad timeout {}", args.timeout));
    }
    let client =
        Client::new(format!("{}:{}", args.host, args.port), Duration::from_secs_f64(args.timeout));
    let runtime = Runtime::new().map_err(|e| e.to_string())?;
    let mut session = Session::new(client);
    match args.words.first().map(String::as_str) {
        Some("status") => return status(&runtime, &mut session, &args.words[1..]),
        Some(_) => {
            match parse_words(&args.words) {
                Ok(command) => runtime.block_on(session.run(command)),
                Err(e) => return Err(format!("Invalid operation format ({e})")),
            }
            return Ok(session.outcome());
        }
        None => {}
    }
    if let Some(path) = &args.file {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        run_lines(&runtime, &mut session, std::io::BufReader::new(file))?;
    } else if std::io::stdin().is_terminal() {
        repl(&runtime, &mut session)?;
    } else {
        run_lines(&runtime, &mut session, std::io::stdin().lock())?;
    }
    Ok(session.outcome())
}

fn run_lines(runtime: &Runtime, session: &mut Session, input: impl BufRead) -> Result<(), String> {
    for line in input.split(b'\n') {
        let line = line.map_err(|e| format!("reading input: {e}"))?;
        runtime.block_on(session.run_line(&String::from_utf8_lossy(&line)));
    }
    Ok(())
}

fn repl(runtime: &Runtime, session: &mut Session) -> Result<(), String> {
    let mut editor = rustyline::DefaultEditor::new().map_err(|e| e.to_string())?;
    loop {
        match editor.readline("> ") {
            Ok(line) => {
                let _ = editor.add_history_entry(line.as_str());
                runtime.block_on(session.run_line(&line));
            }
            Err(
                rustyline::error::ReadlineError::Eof | rustyline::error::ReadlineError::Interrupted,
            ) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn status(runtime: &Runtime, session: &mut Session, rest: &[String]) -> Result<Outcome, String> {
    let json = match rest {
        [] => false,
        [flag] if flag == "--json" => true,
        _ => return Err(format!("status takes only --json, found {rest:?}")),
    };
    let report = runtime.block_on(session.client().status()).map_err(|e| e.to_string())?;
    if json {
        println!("{}", status_json(&report));
    } else {
        print!("{}", format_table(&report));
    }
    Ok(Outcome::Ok)
}
