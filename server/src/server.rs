//! Start-up and shutdown: loads the apps, serves the HTTP and admin listeners until the
//! shutdown future completes, drains, and runs the apps' shutdown hooks.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::apps::{Registry, Rescan, watch};
use crate::config::Config;
use crate::host::calls::{self, CallTable};
use crate::host::{Broker, Outbound};
use crate::{admin, http, tls};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The apps directory is missing or unreadable.
    #[error("cannot read apps directory {}: {source}", path.display())]
    AppsDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TLS certificate, key or extra CA file is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The private directory for shadow copies of app libraries could not be created.
    #[error("cannot create the shadow directory for app libraries: {0}")]
    Shadow(std::io::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
}

impl ServeError {
    /// The process's exit status for it: 2 for what the operator must fix in the configuration
    /// (the apps directory, the TLS files), which a restart would not, else 1.
    pub fn exit_code(&self) -> std::process::ExitCode {
        match self {
            ServeError::AppsDir { .. } | ServeError::Tls(_) => std::process::ExitCode::from(2),
            _ => std::process::ExitCode::FAILURE,
        }
    }
}

/// The sockets Berth serves on, bound before [`run`] starts: by [`Listeners::bind`] from the
/// config's addresses, or by an embedder or a test that binds its own.
#[derive(Debug)]
pub struct Listeners {
    /// The HTTP listener (HTTPS when the config has TLS files).
    pub http: TcpListener,
    /// The admin API's listener, if it is served.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds `config.listen`, and `config.admin_listen` when set.
    pub fn bind(config: &Config) -> Result<Self, ServeError> {
        let bind = |addr| http::bind(addr).map_err(|source| ServeError::Bind { addr, source });
        Ok(Listeners {
            http: bind(config.listen)?,
            admin: config.admin_listen.map(bind).transpose()?,
        })
    }
}

/// Loads the apps, serves `listeners` until `shutdown` completes, then drains in-flight
/// requests for at most `config.drain_timeout` and runs the apps' shutdown hooks.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve(listeners, config, shutdown, |_| {}).await
}

/// [`run`], calling `ready` with the apps once they are loaded, before the first connection
/// is accepted: a worker tells its supervisor then.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&Arc<Registry>),
) -> Result<(), ServeError> {
    check_apps_dir(&config.apps_dir)?;
    let config = Arc::new(config);
    let client_tls = tls::client_config(config.outbound.ca_file.as_deref())?;
    let acceptor = match &config.tls {
        Some(files) => Some(TlsAcceptor::from(tls::server_config(
            &files.cert,
            &files.key,
        )?)),
        None => None,
    };
    let outbound = Outbound::new(
        config.outbound_timeout,
        config.outbound.connect_timeout,
        client_tls,
    );
    // Before the apps, so that their `init` hooks can subscribe.
    let broker = Broker::start(&config.pubsub).await;
    let registry =
        Registry::new(Arc::clone(&config), outbound, broker.clone()).map_err(ServeError::Shadow)?;
    // Once stopping, event streams fed by pub/sub end instead of holding the drain open.
    let shutdown = async move {
        shutdown.await;
        broker.end_streams("the server is stopping");
    };
    registry.rescan(Rescan::Changed).await;

    // A worker's table is its supervisor's, installed before; a single process keeps its own.
    let calls = calls::table().unwrap_or_else(|| {
        let table: &'static CallTable = Box::leak(Box::default());
        calls::install(table);
        table
    });
    calls::spawn_heartbeat(calls);
    if let Some(listener) = listeners.admin {
        let process = admin::Process {
            registry: Arc::clone(&registry),
            serving: tokio::runtime::Handle::current(),
            calls,
            hang_grace: config.hang_grace,
        };
        let started = listener
            .into_std()
            .and_then(|listener| admin::spawn(listener, admin::Admin::Process(process)));
        if let Err(err) = started {
            tracing::error!("cannot serve the admin API: {err}");
        }
    }
    ready(&registry);
    // Kept alive for as long as we serve.
    let _watcher = if config.watch {
        watch::spawn(Arc::clone(&registry), &config.apps_dir)
            .inspect_err(|err| {
                tracing::warn!("cannot watch the apps directory ({err}); send SIGHUP to rescan")
            })
            .ok()
    } else {
        None
    };
    watch::rescan_on_sighup(Arc::clone(&registry));

    http::serve(
        listeners.http,
        acceptor,
        Arc::clone(&registry),
        &config,
        shutdown,
    )
    .await;
    registry.shutdown().await;
    Ok(())
}

/// Fails unless `apps_dir` is a readable directory.
pub fn check_apps_dir(apps_dir: &Path) -> Result<(), ServeError> {
    let error = |source| ServeError::AppsDir {
        path: apps_dir.to_owned(),
        source,
    };
    if !std::fs::metadata(apps_dir).map_err(error)?.is_dir() {
        let not_dir = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory");
        return Err(error(not_dir));
    }
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop berth with SIGKILL");
        return std::future::pending().await;
    };
    let name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!("received {name}");
}
