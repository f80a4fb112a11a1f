//! The `berth` binary: set up logging, read the command line and config file, serve until a
//! signal: in this process, or as the supervisor of `--workers N`, or as one of its workers.

use std::process::ExitCode;

use berth_server::workers::{Identity, supervisor, worker};
use berth_server::{Cli, Config, Listeners};
use clap::Parser;

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
    let _flush_on_exit = berth_server::logging::init();
    let config = match Config::load(Cli::parse()) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(2);
        }
    };
    // A worker of `--workers N`, started by its supervisor.
    if let Some(identity) = Identity::from_env() {
        return match identity {
            Ok(identity) => {
                berth_server::logging::name_process(format!(
                    "worker {} (pid {})",
                    identity.slot,
                    std::process::id()
                ));
                raise_open_file_limit(config.limits.max_connections);
                worker::main(config, identity)
            }
            Err(err) => {
                tracing::error!("{err}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(file) = &config.config_file {
        tracing::info!(file = %file.display(), "read config file");
    }
    raise_open_file_limit(config.limits.max_connections);
    if config.workers > 0 {
        return supervisor::main(config);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let listeners = Listeners::bind(&config)?;
        berth_server::run(listeners, config, berth_server::server::shutdown_signal()).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            err.exit_code()
        }
    }
}
