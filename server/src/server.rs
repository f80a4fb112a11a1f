//! The listener, the accept loop, request dispatch and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth_app::ffi::{ForeignBody, HandleFailure};
use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::bridge::{RequestView, outcome_into_parts};
use crate::config::Config;
use crate::outbound::Outbound;
use crate::plugin::incoming_to_abi;
use crate::registry::{InFlight, Registry, Rescan};
use crate::router::Router;
use crate::{admin, watch};

/// The body of every response Berth sends: its own small answers, or an app's stream.
pub type ResponseBody = Either<Full<Bytes>, AppBody>;

/// An app's response body, streamed to the client chunk by chunk as hyper asks for it. It keeps
/// its request counted in flight on its app version until it is finished or dropped. A failure
/// mid-stream (the app's stream returned an error or panicked) is logged with the app's name and
/// counted as an error; hyper then aborts the response, so the client sees it cut short.
#[derive(Debug)]
pub struct AppBody {
    inner: ForeignBody,
    _in_flight: InFlight,
}

impl http_body::Body for AppBody {
    type Data = Bytes;
    type Error = berth_app::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Err(err))) = &polled {
            let version = self._in_flight.version();
            version.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(app = &*version.name, "app's response body failed: {err}");
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

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

/// Loads the apps, binds the listeners and serves until `shutdown` completes, then drains
/// in-flight requests for at most `config.drain_timeout` and runs the apps' shutdown hooks.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let apps_dir = config.apps_dir.clone();
    let apps_dir_error = |source| ServeError::AppsDir {
        path: apps_dir.clone(),
        source,
    };
    if !std::fs::metadata(&config.apps_dir)
        .map_err(apps_dir_error)?
        .is_dir()
    {
        let not_dir = std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory");
        return Err(apps_dir_error(not_dir));
    }
    let config = Arc::new(config);
    let registry = Registry::new(Arc::clone(&config), Outbound::new(config.outbound_timeout))
        .map_err(ServeError::Shadow)?;
    registry.rescan(Rescan::Changed).await;

    let listener = bind(config.listen).map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    if let Some(addr) = config.admin_listen {
        let admin = bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
        tokio::spawn(admin::serve(admin, Arc::clone(&registry)));
    }
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

    serve(
        listener,
        Arc::clone(&registry),
        shutdown,
        config.drain_timeout,
    )
    .await;
    registry.shutdown().await;
    Ok(())
}

/// Binds with a large accept backlog: tokio's default of 1024 overflows in a burst of new
/// connections, and each overflowed client waits a full second for its SYN to be retried.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(8192)?;
    TcpListener::from_std(socket.into())
}

async fn serve(
    listener: TcpListener,
    state: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) {
    let local = listener.local_addr().ok();
    match local {
        Some(addr) => tracing::info!("listening on http://{addr}"),
        None => tracing::info!("listening"),
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
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
        spawn_connection(&builder, &graceful, &state, stream, peer, local);
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: stopped accepting, draining in-flight requests (up to {drain_timeout:?})"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(drain_timeout) => {
            tracing::warn!("drain timeout of {drain_timeout:?} reached; closing remaining connections");
        }
    }
}

/// Serves one connection on its own task, watched by `graceful` for shutdown.
fn spawn_connection(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    state: &Arc<Registry>,
    stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) {
    // Small responses should leave at once rather than wait for Nagle's timer.
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%peer, "cannot set TCP_NODELAY: {err}");
    }
    let state = Arc::clone(state);
    let service = service_fn(move |request| {
        let registry = Arc::clone(&state);
        async move { Ok::<_, Infallible>(dispatch(&registry, request, peer, local).await) }
    });
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(%peer, "connection error: {err}");
        }
    });
}

async fn dispatch(
    registry: &Registry,
    request: Request<Incoming>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    let router = registry.router();
    if path == "/" {
        return listing(&router);
    }
    let Some(route) = router.route(&path) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no app is mounted at {path}\n"),
        );
    };
    // The request holds its version until its response body is done, whatever swaps happen.
    let in_flight = route.app.begin();
    let app = Arc::clone(in_flight.version());
    let mut log = RequestLog {
        app: &app.name,
        method: request.method().clone(),
        path: &path,
        started,
        status: None,
    };
    let (parts, body) = request.into_parts();
    let uri = parts.uri.to_string();
    let view = RequestView {
        method: parts.method.as_str(),
        uri: &uri,
        version: parts.version,
        headers: &parts.headers,
        peer_addr: Some(peer),
        local_addr: local,
        mount_prefix: &app.mount,
        path: route.path,
        query: parts.uri.query().unwrap_or(""),
    };
    let future = app
        .plugin
        .handle(&view, incoming_to_abi(body), registry.scope(&app.name));
    // The plugin catches its own panics; catch_unwind only guards against a broken plugin glue.
    let limit = app.request_timeout;
    let outcome = tokio::time::timeout(limit, AssertUnwindSafe(future).catch_unwind()).await;
    let response = match outcome {
        Err(_elapsed) => {
            tracing::warn!(
                app = &*app.name,
                "app did not answer within {limit:?}; its future was dropped"
            );
            text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the app did not answer within {limit:?}\n"),
            )
        }
        Ok(Err(_)) => {
            tracing::error!(
                app = &*app.name,
                "app's future panicked across the boundary"
            );
            internal_error()
        }
        Ok(Ok(outcome)) => match outcome_into_parts(outcome) {
            Ok((status, headers, body)) => {
                let body = AppBody {
                    inner: body,
                    _in_flight: in_flight,
                };
                let mut response = Response::new(Either::Right(body));
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                response
            }
            Err(HandleFailure::Panicked(message)) => {
                tracing::error!(app = &*app.name, "app panicked: {message}");
                internal_error()
            }
            Err(failure) => {
                tracing::error!(
                    app = &*app.name,
                    "app returned an invalid response: {failure}"
                );
                internal_error()
            }
        },
    };
    if response.status().is_server_error() {
        app.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
    log.status = Some(response.status());
    response
}

/// Emits the one log event per request when dropped: with the response status, or, if the
/// request future was dropped first (the client went away), as status 499 like NGINX.
struct RequestLog<'a> {
    app: &'a str,
    method: http::Method,
    path: &'a str,
    started: Instant,
    status: Option<StatusCode>,
}

impl Drop for RequestLog<'_> {
    fn drop(&mut self) {
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let (app, method, path) = (self.app, &self.method, self.path);
        match self.status {
            Some(status) => {
                let status = status.as_u16();
                tracing::info!(app, %method, path, status, latency_ms, "request");
            }
            None => tracing::info!(
                app,
                %method,
                path,
                status = 499,
                latency_ms,
                "request cancelled: the client went away"
            ),
        }
    }
}

fn listing(router: &Router) -> Response<ResponseBody> {
    let apps: Vec<_> = router
        .apps()
        .map(|app| {
            serde_json::json!({
                "name": &*app.name,
                "version": app.plugin.version,
                "mount": app.mount,
                "file": app.file.display().to_string(),
            })
        })
        .collect();
    let body = serde_json::json!({ "apps": apps }).to_string() + "\n";
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn internal_error() -> Response<ResponseBody> {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal server error\n".to_owned(),
    )
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
