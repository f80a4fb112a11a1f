//! The accept loop: takes connections under the connection limit, hands each to its own task,
//! and on shutdown stops accepting and drains them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::apps::Registry;
use crate::config::Config;
use crate::http::connection::{Connection, Protocols};
use crate::http::shutdown::Shutdown;

/// Binds with a large accept backlog: tokio's default of 1024 overflows in a burst of new
/// connections, and each overflowed client waits a full second for its SYN to be retried.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket(addr, false)?;
    socket.listen(8192)?;
    TcpListener::from_std(socket.into())
}

/// Binds `addr` with `SO_REUSEPORT`, as one of several listening sockets of one port, each
/// with a queue of its own that the kernel spreads connections over (`reuse_port` workers).
pub fn bind_reuse_port(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket(addr, true)?;
    socket.listen(8192)?;
    TcpListener::from_std(socket.into())
}

/// Binds `addr` with `SO_REUSEPORT` without listening: the supervisor of `reuse_port` workers
/// holds the port (and learns it, for port 0) but takes no connections itself.
pub fn reserve_port(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    Ok(socket(addr, true)?.into())
}

fn socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Serves `listener` until `shutdown` completes, then gives the open connections
/// `config.drain_timeout` to finish their requests. Within the same time, every WebSocket is
/// closed (with its app's `ws_shutdown_code`) and waited for, and streaming responses that
/// wait for their app are ended.
pub async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    registry: Arc<Registry>,
    config: &Config,
    shutdown: impl Future<Output = ()>,
) {
    let local = listener.local_addr().ok();
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    match local {
        Some(addr) => tracing::info!("listening on {scheme}://{addr}"),
        None => tracing::info!("listening"),
    }
    let protocols = Arc::new(Protocols::new(&config.limits));
    let graceful = GracefulShutdown::new();
    let stopping = Arc::new(Shutdown::default());
    // Past the limit, new connections wait in the kernel's listen backlog until one closes.
    let slots = Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_closed) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let connection = Connection {
            registry: Arc::clone(&registry),
            peer,
            local,
            limits: config.limits.clone(),
            access_log: config.access_log,
            shutdown: Arc::clone(&stopping),
            slot: std::sync::Mutex::new(None),
        };
        connection.spawn(&protocols, &graceful, acceptor.clone(), stream, slot);
    }
    drop(listener);
    let drain_timeout = config.drain_timeout;
    stopping.begin();
    let websockets = registry.close_websockets();
    tracing::info!(
        connections = graceful.count(),
        websockets,
        "shutting down: stopped accepting, draining in-flight requests and closing WebSockets (up to {drain_timeout:?})"
    );
    let drained = async {
        tokio::join!(graceful.shutdown(), registry.websockets_closed());
    };
    tokio::select! {
        () = drained => tracing::info!("all connections closed"),
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!("drain timeout of {drain_timeout:?} reached; closing remaining connections");
        }
    }
}
