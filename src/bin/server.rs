//! `server`: one ftkv storage server, normally started by `coord`.

/// mimalloc rather than the system allocator: 190 instead of 204 bytes of memory per stored
/// copy (1,000,000 keys of 16 bytes, values of 100: scripts/bench/memory.sh), against Redis's
/// 200. Measured alongside: throughput the same within noise; a+ filled with 1,000,000 keys in
/// about 640 ms instead of 375 ms (still far under the 2 s target).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ftkv::server::{
    DEFAULT_HEARTBEAT_MS, DEFAULT_ORPHAN_TIMEOUT, ServerOptions, parse_heartbeat_ms,
    parse_orphan_timeout, run,
};

/// An ftkv storage server. Started by `coord`, which passes the cluster token on standard
/// input (or in FTKV_CLUSTER_TOKEN); it is never given on the command line.
#[derive(Parser, Debug)]
#[command(version, disable_help_flag = true)]
struct Args {
    /// Coordinator's host; with standby coordinators, each one's, comma-separated, an
    /// entry as host:port if its port differs from -m.
    #[arg(short = 'h', long = "host")]
    coord_host: String,
    /// Coordinator's servers port.
    #[arg(short = 'm', long = "coord-port")]
    coord_port: u16,
    /// Own clients port (0: any free port).
    #[arg(short = 'c', long, default_value_t = 0)]
    clients_port: u16,
    /// Own servers (replication) port (0: any free port).
    #[arg(short = 's', long, default_value_t = 0)]
    servers_port: u16,
    /// Own coordinator-control port (0: any free port).
    #[arg(short = 'M', long, default_value_t = 0)]
    control_port: u16,
    /// This server's id, 0..N-1.
    #[arg(short = 'S', long)]
    id: u32,
    /// Number of servers in the cluster.
    #[arg(short = 'n', long)]
    servers: u32,
    /// Log file (default: server_<id>.log in the working directory).
    #[arg(short = 'l', long)]
    log: Option<PathBuf>,
    /// Directory for server_<id>.primary and .secondary.
    #[arg(long, default_value = ".")]
    dump_dir: PathBuf,
    /// Address the listening ports bind to.
    #[arg(long, default_value = "0.0.0.0")]
    bind: String,
    /// Which start of this id this is (set by coord).
    #[arg(long, default_value_t = 0)]
    incarnation: u64,
    /// Heartbeat interval in milliseconds (1 to 1800000).
    #[arg(long, value_name = "MS", default_value = DEFAULT_HEARTBEAT_MS, value_parser = parse_heartbeat_ms)]
    heartbeat_ms: Duration,
    /// Seconds (fractions allowed, 0.05 to 86400) that a server which lost its coordinator
    /// keeps its data and tries to re-attach to a restarted one, before it writes its dumps
    /// and exits. It serves no client meanwhile once its lease ends.
    #[arg(long, value_name = "SECS", default_value = DEFAULT_ORPHAN_TIMEOUT, value_parser = parse_orphan_timeout)]
    orphan_timeout: Duration,
    /// When the append-only log (server_<id>.aof in the dump directory) is synced to
    /// disk: always (before a write is acknowledged), everysec, no (left to the kernel).
    #[arg(long, value_name = "POLICY", default_value = "always")]
    fsync: ftkv::aof::FsyncPolicy,
    /// Compact the log in the background once it is at least this many MiB and twice the
    /// size of the live data (Redis's auto-aof-rewrite-min-size and -percentage 100).
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    compact_min_mib: u64,
    /// Keep the log of an earlier start and load it when the coordinator says so (the
    /// start after a crash); without it, a new log replaces an old one.
    #[arg(long)]
    from_log: bool,
    /// Worker threads of the async runtime; 0 runs everything on one thread.
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Detach after reading the token (for starts over ssh): print `ftkv-server pid N` and
    /// return, leaving the server running in a session of its own.
    #[arg(long)]
    daemon: bool,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

/// Forks; the parent prints the child's pid and exits, the child leaves the session and
/// drops the terminal and the ssh channel (standard streams to /dev/null). Not the
/// `daemonize` crate: it forks twice and changes directory, so the pid printed (which the
/// coordinator records) would not be the server's and relative paths would move.
fn daemonize() -> Result<(), String> {
    use nix::unistd::{ForkResult, dup2_stderr, dup2_stdin, dup2_stdout, fork, setsid};
    // SAFETY: called while the process has a single thread (no runtime, no logger yet), so
    // the child may run arbitrary code after fork.
    match unsafe { fork() }.map_err(|e| format!("fork failed: {e}"))? {
        ForkResult::Parent { child } => {
            println!("ftkv-server pid {child}");
            std::process::exit(0);
        }
        ForkResult::Child => {
            let _ = setsid();
            if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
                let _ = (dup2_stdin(&null), dup2_stdout(&null), dup2_stderr(&null));
                if null.as_raw_fd() <= 2 {
                    // A standard stream was closed, so /dev/null took its number: keep it.
                    let _ = null.into_raw_fd();
                }
            }
            Ok(())
        }
    }
}

fn read_token() -> Result<Vec<u8>, String> {
    if let Ok(token) = std::env::var("FTKV_CLUSTER_TOKEN") {
        return Ok(token.trim().as_bytes().to_vec());
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the cluster token from standard input: {e}"))?;
    let token = line.trim();
    if token.is_empty() {
        return Err("no cluster token on standard input (or in FTKV_CLUSTER_TOKEN)".into());
    }
    Ok(token.as_bytes().to_vec())
}

fn main() {
    let args = Args::parse();
    let code = match start(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("server: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn start(args: Args) -> Result<(), String> {
    if args.servers < 3 || args.id >= args.servers {
        return Err(format!(
            "bad id {} for {} servers (need id < n, n >= 3)",
            args.id, args.servers
        ));
    }
    let log = args.log.clone().unwrap_or_else(|| PathBuf::from(format!("server_{}.log", args.id)));
    let token = read_token()?;
    let dump_dir =
        std::path::absolute(&args.dump_dir).map_err(|e| format!("bad dump directory: {e}"))?;
    std::fs::create_dir_all(&dump_dir)
        .map_err(|e| format!("cannot create dump directory {}: {e}", dump_dir.display()))?;
    if args.daemon {
        daemonize()?;
    }
    ftkv::logging::init(Some(&log), "info")?;
    tracing::info!(log = %log.display(), dumps = %dump_dir.display(), "server starting");
    let opts = ServerOptions {
        id: args.id,
        servers: args.servers,
        coordinators: ftkv::config::coordinator_addrs(&args.coord_host, args.coord_port)?,
        bind_host: args.bind,
        client_port: args.clients_port,
        servers_port: args.servers_port,
        control_port: args.control_port,
        dump_dir,
        heartbeat: args.heartbeat_ms,
        incarnation: args.incarnation,
        orphan_timeout: args.orphan_timeout,
        fsync: args.fsync,
        compact_min_bytes: args.compact_min_mib << 20,
        from_log: args.from_log,
    };
    // One thread by default: measured on 2 cores with 3 servers and a load generator on the
    // same machine, a current-thread runtime did 66,000 PUT/s (-c 50) where 2 workers did
    // 50,000 (fewer wake-ups across threads, no work stealing). Bigger machines with one
    // server each may want more.
    let runtime = match args.worker_threads {
        0 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
    .map_err(|e| e.to_string())?;
    let result = runtime.block_on(async {
        ignore_stop_signals()?;
        run(opts, token).await.map_err(|e| e.to_string())
    });
    runtime.shutdown_background();
    if let Err(e) = &result {
        tracing::error!(error = %e, "server stopped");
    }
    result
}

/// A server is stopped by its coordinator, which first has it write its dumps. SIGINT,
/// SIGTERM and SIGHUP are logged and otherwise ignored, for they reach servers along with
/// their coordinator: a terminal's ctrl+c or hang-up goes to its whole foreground process
/// group (local servers are in the coordinator's, so that ctrl+z and `fg` stop and resume the
/// service as one), and a service manager stopping the service sends SIGTERM to every process
/// at once (systemd's default). A server that died of any of them would take its data along
/// before the coordinator could ask for the dumps. (SIGKILL still ends a server at once, as a
/// crash.)
fn ignore_stop_signals() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind, name| signal(kind).map_err(|e| format!("{name} handler: {e}"));
    let mut int = listen(SignalKind::interrupt(), "SIGINT")?;
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut hup = listen(SignalKind::hangup(), "SIGHUP")?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
                _ = hup.recv() => "SIGHUP",
            };
            let why = "the coordinator stops servers (ctrl+d, SIGINT or SIGTERM to it); \
                       kill -9 ends one at once";
            tracing::warn!(signal = name, "ignored: {why}");
            // Standard error may be gone (a closed terminal): never fail on it.
            // One write, so that lines of servers sharing the terminal do not interleave.
            let line = format!("server: {name} ignored: {why}\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    });
    Ok(())
}
