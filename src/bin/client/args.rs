//! The client's command line: the REPL, a script file or one operation given as words, and the
//! subcommands `status`, `watch` and `bench`, each with its own `--help`.
//!
//! The coordinator's options (`-h`, `-p`, `-l`, `--timeout`) are global: they may come before
//! or after a subcommand's word, as people type them (`client watch -h host -p 7000`). `-h` is
//! the host, so no command has clap's `-h` help flag: help is `--help` only.

use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use ftkv::bench::BenchOp;

/// The ftkv client. Reads `P "key" "value"`, `G "key"` and `D "key"` lines from the
/// terminal, a pipe or FILE; or runs one operation given as words (`P key value`); or one of
/// the commands below (each has its own --help).
#[derive(Parser, Debug)]
#[command(
    version,
    disable_help_flag = true,
    // `client help` stays what it was, an unknown operation: help is --help.
    disable_help_subcommand = true,
    override_usage = "client [OPTIONS] [-f FILE | OPERATION...]\n       client [OPTIONS] <COMMAND>",
)]
pub struct Args {
    #[command(flatten)]
    pub global: Global,
    /// Run the operations in FILE instead of reading standard input.
    #[arg(short = 'f', long)]
    pub file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Cmd>,
    /// One operation: `P key value`, `G key` or `D key`, each word a separate argument.
    #[arg(value_name = "OPERATION", trailing_var_arg = true, allow_hyphen_values = true)]
    pub words: Vec<String>,
}

/// Options of every form, accepted before or after a command's word.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Global options (before or after a command)")]
pub struct Global {
    /// Coordinator's host; with standby coordinators, each one's, comma-separated, an
    /// entry as host:port if its port differs from -p.
    #[arg(short = 'h', long = "host", default_value = "localhost", global = true)]
    pub host: String,
    /// Coordinator's clients port (required).
    // Not `required`: clap refuses a required global option; `port` checks it instead.
    #[arg(short = 'p', long, global = true)]
    pub port: Option<u16>,
    /// Log file.
    #[arg(short = 'l', long, value_name = "FILE", global = true)]
    pub log: Option<PathBuf>,
    /// Seconds an operation keeps retrying before it fails.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, global = true)]
    pub timeout: f64,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help, global = true)]
    help: Option<bool>,
}

impl Global {
    /// `-p`, or clap's own error for a missing required option (its message and exit status
    /// 2, as when `-p` was declared required).
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| {
            Args::command()
                .error(
                    ErrorKind::MissingRequiredArgument,
                    "the following required arguments were not provided:\n  --port <PORT>",
                )
                .exit()
        })
    }
}

/// The commands; each takes the global options too.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The cluster as the coordinator sees it: a table, or one JSON object.
    #[command(disable_help_flag = true)]
    Status {
        /// Print exactly one JSON object, for scripts and monitoring.
        #[arg(long)]
        json: bool,
    },
    /// The cluster live: full-screen on a terminal (q quits), event lines otherwise.
    #[command(disable_help_flag = true)]
    Watch,
    /// A load generator modelled on redis-benchmark; every answer is checked.
    // The output in `after_help`: a doc paragraph would switch clap to its long, spaced help.
    #[command(
        disable_help_flag = true,
        after_help = "Prints the parameters, then one line per test (put: <ops> ops/s p50=<us>us \
                      p99=<us>us p99.9=<us>us) and the totals. Any error, or a test in which \
                      requests failed for a whole --timeout, makes the exit status 2."
    )]
    Bench(BenchArgs),
}

impl Cmd {
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Status { .. } => "status",
            Cmd::Watch => "watch",
            Cmd::Bench(_) => "bench",
        }
    }
}

/// `client bench`'s own options, with redis-benchmark's letters (so its users need learn no
/// new ones; `-P` pipelines, as there, while `-p` stays the coordinator's port).
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Requests per test.
    #[arg(short = 'n', long = "requests", value_name = "N", default_value_t = 100_000)]
    pub requests: u64,
    /// Concurrent connections (each is a task with its own connection to every server).
    #[arg(short = 'c', long = "clients", value_name = "N", default_value_t = 50)]
    pub clients: usize,
    /// Value size in bytes.
    #[arg(short = 'd', long = "data-size", value_name = "BYTES", default_value_t = 3)]
    pub data_size: usize,
    /// Requests pipelined per connection.
    #[arg(short = 'P', long = "pipeline", value_name = "N", default_value_t = 1)]
    pub pipeline: usize,
    /// Tests to run, comma-separated: put (or set), get. Put runs first; get alone first
    /// stores the whole keyspace (not measured).
    #[arg(short = 't', long = "tests", value_delimiter = ',', default_value = "put,get")]
    pub tests: Vec<BenchOp>,
    /// Keyspace size: keys are key:000000000000 .. key:<r-1>, drawn at random.
    #[arg(short = 'r', long = "keyspace", value_name = "N", default_value_t = 100_000)]
    pub keyspace: u64,
    /// Seconds per test, instead of -n.
    #[arg(long, value_name = "SECONDS", conflicts_with = "requests")]
    pub duration: Option<f64>,
}

/// Longest --timeout and --duration: a day (far larger values overflowed the clock's
/// arithmetic).
const MAX_SECONDS: f64 = 86_400.0;

/// `secs` as a duration, if it is more than 0 and at most [`MAX_SECONDS`] (not NaN).
pub fn seconds(secs: f64, what: &str) -> Result<Duration, String> {
    if secs > 0.0 && secs <= MAX_SECONDS {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(format!("bad {what} {secs} (seconds, at most {MAX_SECONDS})"))
    }
}

#[cfg(test)]
mod tests;
