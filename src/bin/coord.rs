//! `coord`: starts the ftkv servers listed in a config file and coordinates them.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ftkv::coord::{CoordOptions, EtcdOptions, default_server_bin, run};
use ftkv::server::{
    DEFAULT_HEARTBEAT_MS, DEFAULT_ORPHAN_TIMEOUT, parse_heartbeat_ms, parse_orphan_timeout,
};

/// The ftkv coordinator. End of standard input (ctrl+d), SIGINT or SIGTERM shut the whole
/// service down: every server writes server_<id>.primary and .secondary, then exits.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Port where clients ask for the configuration (0: any free port).
    #[arg(short = 'c', long)]
    clients_port: u16,
    /// Port where servers report and heartbeat (0: any free port).
    #[arg(short = 's', long)]
    servers_port: u16,
    /// Configuration file.
    #[arg(short = 'C', long)]
    config: PathBuf,
    /// Seconds without a heartbeat before a server is declared dead (fractions allowed).
    #[arg(short = 't', long, default_value_t = 1.0)]
    timeout: f64,
    /// Log file (default: standard error).
    #[arg(short = 'l', long)]
    log: Option<PathBuf>,
    /// Seconds (0.05 to 86400) that servers which lost this coordinator keep their data and
    /// try to re-attach to a restarted one before they write their dumps and exit.
    #[arg(long, value_name = "SECS", default_value = DEFAULT_ORPHAN_TIMEOUT, value_parser = parse_orphan_timeout)]
    orphan_timeout: Duration,
    /// Server heartbeat interval in milliseconds (1 to 1800000).
    #[arg(long, value_name = "MS", default_value = DEFAULT_HEARTBEAT_MS, value_parser = parse_heartbeat_ms)]
    heartbeat_ms: Duration,
    /// The server binary (default: `server` beside this program).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where servers write their logs.
    #[arg(long, default_value = ".")]
    log_dir: PathBuf,
    /// Where servers write their dumps.
    #[arg(long, default_value = ".")]
    dump_dir: PathBuf,
    /// Do not shut down at the end of standard input (run in the background).
    #[arg(long)]
    ignore_stdin: bool,
    /// Extra options for every ssh call, split at spaces (e.g. "-i key -p 2222").
    /// `-o BatchMode=yes` and a connect timeout are always set.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    ssh_args: String,
    /// The server program on remote hosts (default: the absolute path of the local one).
    #[arg(long)]
    remote_server_bin: Option<String>,
    /// Directory for logs and dumps of remote servers, on their hosts.
    #[arg(long, default_value = ".")]
    remote_dir: String,
    /// Address remote servers use to reach this coordinator (default: the source address
    /// on the route to each host).
    #[arg(long)]
    advertise_host: Option<String>,
    /// Where the coordinator keeps its state (coord.state, mode 0600: it holds the cluster
    /// token) and its lock. A coordinator started again on the same state after it died
    /// takes the running servers back.
    #[arg(long, default_value = ".")]
    state_dir: PathBuf,
    /// Start empty: move the dumps and dumps.manifest in the dump directory aside into a
    /// new directory dumps-<UTC time> instead of restoring them (nothing is deleted).
    #[arg(long)]
    fresh: bool,
    /// When every server syncs its append-only log to disk (Redis's appendfsync): always (a
    /// write is acknowledged only once on disk on both copies), everysec (a crash of every
    /// process loses at most the last second), no (left to the kernel).
    #[arg(long, value_name = "POLICY", default_value = "always")]
    fsync: ftkv::aof::FsyncPolicy,
    /// Every server compacts its log in the background once it is at least this many MiB
    /// and twice the size of its live data.
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    compact_min_mib: u64,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default; port 0: any
    /// free port, printed at start).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<String>,
    /// Standby coordinators: keep the state in etcd at these client URLs (comma-separated,
    /// e.g. http://10.0.0.1:2379,http://10.0.0.2:2379; no TLS) instead of the state file. Every
    /// coordinator started with the same etcd and --cluster joins one election: one leads,
    /// the others stand by and take over when it is gone.
    #[arg(long, value_name = "URLS")]
    etcd: Option<String>,
    /// The cluster's name in etcd (default: the configuration file's name without its
    /// extension).
    #[arg(long, value_name = "NAME", requires = "etcd")]
    cluster: Option<String>,
    /// Seconds of this coordinator's etcd lease: a leader that dies is replaced about this
    /// long after (etcd grants at least 1.5 of its election timeouts, rounded up: 2 s at
    /// its defaults, 1 s with --election-timeout 500).
    #[arg(long, value_name = "SECS", default_value_t = 1, requires = "etcd", value_parser = clap::value_parser!(u64).range(1..=3600))]
    etcd_ttl: u64,
}

fn main() {
    let args = Args::parse();
    let code = match start(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("coord: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn absolute(path: PathBuf) -> Result<PathBuf, String> {
    std::path::absolute(&path).map_err(|e| format!("bad path {}: {e}", path.display()))
}

/// `dir`, created if missing (servers create their dump directory the same way).
fn existing_dir(dir: PathBuf, what: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create {what} directory {}: {e}", dir.display()))?;
    Ok(dir)
}

fn start(args: Args) -> Result<(), String> {
    if !(args.timeout.is_finite() && (0.05..=3600.0).contains(&args.timeout)) {
        return Err(format!("bad timeout {} (seconds, 0.05 to 3600)", args.timeout));
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    let heartbeat = args.heartbeat_ms;
    if heartbeat * 2 > timeout {
        return Err(format!(
            "heartbeat interval {heartbeat:?} is too long for a timeout of {timeout:?} (at most half)"
        ));
    }
    let specs = ftkv::config::load(&args.config).map_err(|e| e.to_string())?;
    let etcd = match args.etcd {
        Some(urls) => Some(etcd_options(&urls, args.cluster, &args.config, args.etcd_ttl)?),
        None => None,
    };
    let remote = specs.iter().any(|s| !matches!(s.host, ftkv::config::Host::Local(_)));
    if etcd.is_some() && remote && args.advertise_host.is_none() {
        // What a coordinator registers in etcd is what servers re-attach to and clients are
        // sent to: 127.0.0.1 would send remote servers to their own host.
        return Err("--etcd with servers on other hosts needs --advertise-host (this \
                    coordinator's address as they reach it)"
            .into());
    }
    ftkv::logging::init(args.log.as_deref(), "info")?;
    let server_bin = match args.server_bin {
        Some(path) => path,
        None => default_server_bin().ok_or("cannot locate the server binary (use --server-bin)")?,
    };
    let server_bin = absolute(server_bin)?;
    let remote_server_bin =
        args.remote_server_bin.unwrap_or_else(|| server_bin.to_string_lossy().into_owned());
    let opts = CoordOptions {
        clients_port: args.clients_port,
        servers_port: args.servers_port,
        specs,
        timeout,
        heartbeat,
        server_bin,
        log_dir: existing_dir(absolute(args.log_dir)?, "log")?,
        dump_dir: absolute(args.dump_dir)?,
        watch_stdin: !args.ignore_stdin,
        ssh_args: args.ssh_args.split_whitespace().map(String::from).collect(),
        remote_server_bin,
        remote_dir: args.remote_dir,
        advertise_host: args.advertise_host,
        state_dir: absolute(args.state_dir)?,
        orphan_timeout: args.orphan_timeout,
        fresh: args.fresh,
        fsync: args.fsync,
        compact_min_mib: args.compact_min_mib,
        metrics: args.metrics,
        etcd,
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    let result = runtime.block_on(run(opts));
    // The stdin reader is a blocking read that cannot be cancelled: do not wait for it.
    runtime.shutdown_background();
    result.map_err(|e| e.to_string())
}

/// `--etcd`, `--cluster` and `--etcd-ttl`, checked.
fn etcd_options(
    urls: &str,
    cluster: Option<String>,
    config: &std::path::Path,
    ttl: u64,
) -> Result<EtcdOptions, String> {
    let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_string()).collect();
    // TLS to etcd is not built in (etcd-client's TLS features are off): say so up front.
    if let Some(bad) = urls.iter().find(|u| !u.starts_with("http://") || u.len() == 7) {
        return Err(format!("--etcd: {bad:?} is not an http://HOST:PORT URL (no TLS)"));
    }
    let cluster = match cluster {
        Some(name) => name,
        None => config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
    };
    let fits = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if cluster.is_empty() || !cluster.chars().all(fits) {
        return Err(format!("--cluster: {cluster:?} must be letters, digits, '-', '_' or '.'"));
    }
    Ok(EtcdOptions { urls, cluster, ttl: Duration::from_secs(ttl) })
}
