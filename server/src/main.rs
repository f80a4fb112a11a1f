//! The `berth` binary: set up logging, read the command line and config file, serve until a
//! signal.

use std::process::ExitCode;

use berth_server::{Cli, Config, ServeError};
use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
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
