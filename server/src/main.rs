//! The `berth` binary: set up logging, read the command line and config file, serve until a
//! signal.

use std::process::ExitCode;

use berth_server::{Cli, Config, ServeError};
use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Raises the soft open-file limit to the hard one, and says so when even that is too low for
/// `max_connections`: every connection is a descriptor, and so is each outbound request an app
/// makes while it waits (10,000 proxied requests need about 20,000).
fn raise_open_file_limit(max_connections: usize) {
    let wanted = u64::try_from(max_connections)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(64);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => tracing::warn!(
            "the open-file limit is {limit}: up to {max_connections} connections, each with an \
             outbound request, need about {wanted}; raise the hard limit (ulimit -Hn, or \
             LimitNOFILE= in a systemd unit) or lower --max-connections"
        ),
        Ok(limit) => tracing::info!(limit, "raised the open-file limit to the hard limit"),
        Err(err) => tracing::warn!("cannot raise the open-file limit: {err}"),
    }
}

fn main() -> ExitCode {
    // Lines are written by a thread of their own, so that a request never waits for stderr
    // (a pipe whose reader is slow, a file on a busy disk). Nothing is dropped: past 16k queued
    // lines, logging waits (the default of 128k preallocates 4 MB of queue). The guard flushes
    // what is queued when `main` returns.
    let (stderr, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(16 * 1024)
        .lossy(false)
        .thread_name("berth-log")
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match Config::load(Cli::parse()) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(2);
        }
    };
    if let Some(file) = &config.config_file {
        tracing::info!(file = %file.display(), "read config file");
    }
    raise_open_file_limit(config.limits.max_connections);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(berth_server::run(
        config,
        berth_server::server::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            match err {
                ServeError::AppsDir { .. } | ServeError::Tls(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
