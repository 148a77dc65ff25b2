//! Tracing set-up shared by the three binaries: `RUST_LOG` filters, `-l FILE` redirects.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Logs to `file` (appending) or to standard error. `default_level` applies when `RUST_LOG`
/// is not set. Returns an error message naming the file if it cannot be opened.
pub fn init(file: Option<&Path>, default_level: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            builder.with_ansi(false).with_writer(Mutex::new(file)).init();
        }
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}
