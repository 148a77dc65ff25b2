//! `client`: the ftkv command-line client (REPL, script file, one-shot, status, bench).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ftkv::bench::{Bench, BenchOp, BenchOptions, PhaseKind};
use ftkv::client::Client;
use ftkv::client::line::parse_words;
use ftkv::client::repl;
use ftkv::client::session::{Outcome, Session, end_by_sigpipe, status_json};
use ftkv::text::format_table;
use tokio::runtime::Runtime;

/// The ftkv client. Reads `P "key" "value"`, `G "key"` and `D "key"` lines from the
/// terminal, a pipe or FILE; or runs one operation given as words (`P key value`);
/// or `status [--json]`; or `bench [-n -c -d -P -t -r --duration]` (`bench --help`); or
/// `watch` (the cluster live; q quits).
#[derive(Parser, Debug)]
#[command(version, disable_help_flag = true)]
struct Args {
    /// Coordinator's host; with standby coordinators, each one's, comma-separated, an
    /// entry as host:port if its port differs from -p.
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
    /// One operation (`P key value`, `G key`, `D key`), `status [--json]`, `bench ...`, or
    /// `watch`.
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
    let timeout = seconds(args.timeout, "timeout")?;
    let coordinator = ftkv::config::coordinator_addrs(&args.host, args.port)?.join(",");
    if args.file.is_some() && !args.words.is_empty() {
        return Err("give either -f FILE or an operation, not both".into());
    }
    if args.words.first().map(String::as_str) == Some("bench") {
        return bench(coordinator, timeout, &args.words[1..]);
    }
    if args.words.first().map(String::as_str) == Some("watch") {
        return watch(coordinator, &args.words[1..]);
    }
    let client = Client::new(coordinator, timeout);
    let runtime = LetGo(Some(Runtime::new().map_err(|e| e.to_string())?));
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
        repl::run_lines(&runtime, &mut session, std::io::BufReader::new(file))?;
    } else if std::io::stdin().is_terminal() {
        repl::run_terminal(&runtime, &mut session)?;
    } else {
        repl::run_lines(&runtime, &mut session, std::io::stdin().lock())?;
    }
    Ok(session.outcome())
}

fn status(runtime: &Runtime, session: &mut Session, rest: &[String]) -> Result<Outcome, String> {
    let json = match rest {
        [] => false,
        [flag] if flag == "--json" => true,
        _ => return Err(format!("status takes only --json, found {rest:?}")),
    };
    let report = runtime.block_on(session.client().status()).map_err(|e| e.to_string())?;
    if json {
        out(&format!("{}\n", status_json(&report)))?;
    } else {
        out(&format_table(&report))?;
    }
    Ok(Outcome::Ok)
}

/// `client bench`: a load generator modelled on redis-benchmark. Prints the parameters, then
/// one line per test: `put: <ops>/s p50=<us>us p99=<us>us p99.9=<us>us`. Every answer is
/// checked (a GET of a key put by this run must return exactly its value); any error makes
/// the exit status 2.
#[derive(Parser, Debug)]
#[command(name = "client bench", disable_help_flag = true)]
struct BenchArgs {
    /// Requests per test.
    #[arg(short = 'n', long = "requests", default_value_t = 100_000)]
    requests: u64,
    /// Concurrent connections (each is a task with its own connection to every server).
    #[arg(short = 'c', long = "clients", default_value_t = 50)]
    clients: usize,
    /// Value size in bytes.
    #[arg(short = 'd', long = "data-size", default_value_t = 3)]
    data_size: usize,
    /// Requests pipelined per connection.
    #[arg(short = 'P', long = "pipeline", default_value_t = 1)]
    pipeline: usize,
    /// Tests to run, comma-separated: put (or set), get. Put runs first; get alone first
    /// stores the whole keyspace (not measured).
    #[arg(short = 't', long = "tests", value_delimiter = ',', default_value = "put,get")]
    tests: Vec<BenchOp>,
    /// Keyspace size: keys are key:000000000000 .. key:<r-1>, drawn at random.
    #[arg(short = 'r', long = "keyspace", default_value_t = 100_000)]
    keyspace: u64,
    /// Seconds per test, instead of -n.
    #[arg(long, conflicts_with = "requests")]
    duration: Option<f64>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Longest --timeout and --duration: a day (far larger values overflowed the clock's
/// arithmetic).
const MAX_SECONDS: f64 = 86_400.0;

/// `secs` as a duration, if it is more than 0 and at most [`MAX_SECONDS`] (not NaN).
fn seconds(secs: f64, what: &str) -> Result<Duration, String> {
    if secs > 0.0 && secs <= MAX_SECONDS {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("bad {what} {secs} (seconds, at most {MAX_SECONDS})"))
    }
}

fn bench(coordinator: String, timeout: Duration, rest: &[String]) -> Result<Outcome, String> {
    let args = BenchArgs::try_parse_from(
        std::iter::once("client bench").chain(rest.iter().map(String::as_str)),
    )
    .unwrap_or_else(|e| e.exit());
    let duration = match args.duration {
        Some(secs) => Some(seconds(secs, "--duration")?),
        None => None,
    };
    let options = BenchOptions {
        coordinator,
        requests: args.requests,
        duration,
        connections: args.clients,
        value_size: args.data_size,
        pipeline: args.pipeline,
        ops: args.tests,
        keyspace: args.keyspace,
        timeout,
        progress: std::io::stderr().is_terminal(),
    };
    // One thread, like redis-benchmark: on 2 cores shared with the servers it measured
    // faster than two (fewer wake-ups across threads), for -P 1 by a sixth.
    let runtime = LetGo(Some(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?,
    ));
    runtime.block_on(run_bench(options))
}

/// Runs every phase, printing a line for each, then the totals. A phase in which requests
/// failed for a whole `--timeout` ends the run with an error: the service is unavailable,
/// and the phases after it would only wait out their deadlines too.
async fn run_bench(options: BenchOptions) -> Result<Outcome, String> {
    let timeout = options.timeout;
    let mut bench = Bench::connect(options).await?;
    out(&format!("{}\n", bench.summary()))?;
    let (mut errors, mut retries, mut answers, mut absent) = (0, 0, 0, 0);
    for kind in bench.phases() {
        let report = bench.run_phase(kind).await;
        out(&format!("{}\n", report.line()))?;
        for sample in &report.error_samples {
            eprintln!("client bench: {sample}");
        }
        if report.gave_up > 0 {
            return Err(format!(
                "stopped in {}: {} requests failed for a whole --timeout of {timeout:?} (the \
                 service is unavailable: is the coordinator running?)",
                kind.name(),
                report.gave_up,
            ));
        }
        errors += report.errors;
        retries += report.retries;
        answers += report.ok + report.errors;
        if kind != PhaseKind::Fill {
            absent += report.absent;
        }
    }
    out(&format!(
        "checked: {answers} answers, {errors} errors, {retries} retries, {absent} gets of absent keys\n"
    ))?;
    Ok(if errors == 0 { Outcome::Ok } else { Outcome::Failed })
}

/// `client watch`: full-screen on a terminal, event lines otherwise.
fn watch(coordinator: String, rest: &[String]) -> Result<Outcome, String> {
    if !rest.is_empty() {
        return Err(format!("watch takes no arguments, found {rest:?}"));
    }
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
