//! The listener, the accept loop, request dispatch and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth_app::ffi::{ForeignBody, HandleFailure};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::bridge::{RequestView, outcome_into_parts, request_scope};
use crate::config::Config;
use crate::config::Limits;
use crate::drain::{self, Drain};
use crate::outbound::Outbound;
use crate::plugin::{RequestScope, limited_incoming_to_abi};
use crate::registry::{AppVersion, InFlight, Registry, Rescan};
use crate::router::Router;
use crate::{admin, conn, tls, watch};
use tokio_rustls::TlsAcceptor;

/// The body of every response Berth sends: its own small answers, or an app's stream.
pub type ResponseBody = Either<Full<Chunk>, AppBody>;

/// A piece of a response body: bytes of the host's own, or a chunk the app still holds, which
/// is written out where it is and released once sent (wrapping it in [`Bytes`] would cost an
/// allocation per chunk).
#[derive(Debug)]
pub enum Chunk {
    /// The host's own bytes.
    Own(Bytes),
    /// A chunk of an app's body.
    App(berth_app::ffi::ForeignChunk),
}

impl bytes::Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Own(bytes) => bytes.remaining(),
            Chunk::App(chunk) => chunk.remaining(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Own(bytes) => bytes.chunk(),
            Chunk::App(chunk) => chunk.chunk(),
        }
    }

    fn advance(&mut self, cnt: usize) {
        match self {
            Chunk::Own(bytes) => bytes.advance(cnt),
            Chunk::App(chunk) => chunk.advance(cnt),
        }
    }
}

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
    type Data = Chunk;
    type Error = berth_app::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Chunk>, Self::Error>>> {
        let polled = self.inner.poll_chunk_in_place(cx);
        if let std::task::Poll::Ready(Some(Err(err))) = &polled {
            let version = self._in_flight.version();
            version.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(app = &*version.name, "app's response body failed: {err}");
        }
        polled.map(|chunk| chunk.map(|chunk| chunk.map(|c| http_body::Frame::data(Chunk::App(c)))))
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
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
    let registry = Registry::new(Arc::clone(&config), outbound).map_err(ServeError::Shadow)?;
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

    serve(listener, acceptor, Arc::clone(&registry), &config, shutdown).await;
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
    let protocols = Arc::new(conn::Protocols::new(&config.limits));
    let graceful = Drain::new();
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
        };
        connection.spawn(&protocols, &graceful, acceptor.clone(), stream, slot);
    }
    drop(listener);
    let drain_timeout = config.drain_timeout;
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

/// What serving one connection needs.
struct Connection {
    registry: Arc<Registry>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    limits: Limits,
    /// Log every request (`--access-log`).
    access_log: bool,
}

impl Connection {
    /// Serves the connection on its own task (after the TLS handshake, with `acceptor`),
    /// watched by `graceful` for shutdown; `slot` is its place under the connection limit,
    /// freed when it ends.
    fn spawn(
        self,
        protocols: &Arc<conn::Protocols>,
        graceful: &Drain,
        acceptor: Option<TlsAcceptor>,
        stream: TcpStream,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        // Small responses should leave at once rather than wait for Nagle's timer.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(peer = %self.peer, "cannot set TCP_NODELAY: {err}");
        }
        let protocols = Arc::clone(protocols);
        let watcher = graceful.watcher();
        // The first request head is due this long after the connection opens, TLS handshake
        // and protocol detection included.
        let first_head = tokio::time::Instant::now() + self.limits.header_read_timeout;
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let sniffed =
                        tokio::time::timeout_at(first_head, conn::opens_with_h2_preface(&stream));
                    match sniffed.await {
                        Ok(Ok(h2)) => {
                            let io = TokioIo::new(stream);
                            self.serve(&protocols, watcher, io, h2, first_head).await;
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(peer = %self.peer, "connection error: {err}")
                        }
                        Err(_elapsed) => {
                            tracing::debug!(peer = %self.peer, "no request before the header timeout")
                        }
                    }
                }
                Some(acceptor) => {
                    // Out of line: a TLS session is large, and every plain connection's task
                    // would otherwise be sized for one.
                    Box::pin(async move {
                        let limit = self.limits.tls_handshake_timeout;
                        match tls::accept(&acceptor, stream, limit).await {
                            Ok((stream, h2)) => {
                                let io = TokioIo::new(stream);
                                self.serve(&protocols, watcher, io, h2, first_head).await;
                            }
                            Err(err) => {
                                tracing::debug!(peer = %self.peer, "TLS handshake failed: {err}")
                            }
                        }
                    })
                    .await;
                }
            }
            drop(slot);
        });
    }

    /// Serves HTTP/2 (`h2`) or HTTP/1.1 on `io` until the connection ends, with the keep-alive
    /// idle timeout and request tracking.
    async fn serve<I>(
        self,
        protocols: &conn::Protocols,
        watcher: drain::Watcher,
        io: I,
        h2: bool,
        first_head: tokio::time::Instant,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let activity = Arc::new(conn::Activity::default());
        let io = conn::IdleIo::new(
            io,
            Arc::clone(&activity),
            self.limits.keepalive_timeout,
            self.limits.header_read_timeout,
            first_head,
        );
        let this = Arc::new(self);
        let service = service_fn(move |request| {
            use futures_util::FutureExt as _;
            let guard = activity.begin();
            // A combinator, not an async block: the future hyper holds per request (and, for
            // HTTP/2, spawns as a task per stream) stays as small as the answer's own.
            dispatch(&this, request).map(move |response| {
                Ok::<_, Infallible>(response.map(|body| conn::Tracked::new(body, guard)))
            })
        });
        let served = if h2 {
            let connection = protocols.http2.serve_connection(io, service);
            watcher.watch(connection).await
        } else {
            let connection = protocols.http1.serve_connection(io, service);
            watcher.watch(connection).await
        };
        if let Err(err) = served {
            tracing::debug!(%peer, "connection error: {err}");
        }
    }
}

/// Routes `request` and starts its app at once, without waiting: the returned future only
/// waits for the answer. Everything about the request's head is done and dropped here, so the
/// future hyper keeps for as long as the request waits holds none of it.
fn dispatch(
    connection: &Connection,
    request: Request<Incoming>,
) -> impl Future<Output = Response<ResponseBody>> + Send + use<> {
    use futures_util::future::Either as Answer;
    // Boxed: the host's own answers (404, 413, the listing) are rare, and the future hyper
    // keeps per request (for HTTP/2, spawns per stream) is sized for its largest variant.
    let now = |response: Response<ResponseBody>| {
        let boxed = std::future::ready(Box::new(response));
        Answer::Left(futures_util::FutureExt::map(boxed, |response| *response))
    };
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if path == "/" {
        return now(listing(&connection.registry.router()));
    }
    // The request holds its version until its response body is done, whatever swaps happen.
    let (in_flight, mount_len) = {
        let router = connection.registry.current_router();
        let Some(route) = router.route(path) else {
            let message = format!("no app is mounted at {path}\n");
            return now(text(StatusCode::NOT_FOUND, message));
        };
        (route.app.begin(), route.mount_len)
    };
    let app = in_flight.version();
    let mut log = connection.access_log.then(|| {
        Box::new(RequestLog {
            app: Arc::clone(&app.name),
            method: parts.method.clone(),
            path: path.to_owned(),
            started: Instant::now(),
            status: None,
        })
    });
    // hyper has read Content-Length already: no header lookup.
    let declared = http_body::Body::size_hint(&body).exact();
    if declared.is_some_and(|len| len > app.max_body_size) {
        // Refused before the app runs and before a byte of the body is read.
        let response = too_large(app.max_body_size);
        if let Some(log) = &mut log {
            log.status = Some(response.status());
        }
        return now(response);
    }
    let started = start(connection, parts, body, app, mount_len, log);
    Answer::Right(answer(started, in_flight))
}

/// A request handed to its app: the app's future and the request's host state.
struct Started {
    future: berth_app::abi::FfiFuture<berth_app::abi::AbiHandleOutcome>,
    scope: Arc<RequestScope>,
    deadline: tokio::time::Instant,
    /// Boxed: the request's future is moved (for HTTP/2, into a task of its own) and holds this
    /// for as long as the app takes; without the access log it is one word.
    log: Option<Box<RequestLog>>,
}

/// Lends the request to `app` and starts it.
fn start(
    connection: &Connection,
    parts: http::request::Parts,
    body: Incoming,
    app: &AppVersion,
    mount_len: usize,
    log: Option<Box<RequestLog>>,
) -> Started {
    let max_body = app.max_body_size;
    let deadline = tokio::time::Instant::now() + app.request_timeout;
    let scope = request_scope(
        &app.services,
        Some(deadline),
        &RequestView {
            method: parts.method.as_str(),
            uri: &parts.uri,
            version: parts.version,
            headers: &parts.headers,
            peer_addr: Some(connection.peer),
            local_addr: connection.local,
            mount_len,
        },
    );
    let body = limited_incoming_to_abi(body, max_body, &scope);
    let future = app.plugin.handle(Arc::clone(&scope), body);
    Started {
        future,
        scope,
        deadline,
        log,
    }
}

/// Waits for the app's answer until the request's deadline.
async fn answer(started: Started, in_flight: InFlight) -> Response<ResponseBody> {
    let Started {
        mut future,
        scope,
        deadline,
        mut log,
    } = started;
    // The plugin catches its own panics; a poll that panics all the same (broken plugin glue)
    // comes back as `Err`.
    let caught = std::future::poll_fn(move |cx| future.poll_caught(cx));
    let outcome = WithDeadline::new(caught, deadline).await;
    let response = respond(outcome, &scope, in_flight);
    if let Some(log) = &mut log {
        log.status = Some(response.status());
    }
    response
}

/// Turns the app's outcome (`None`: the deadline passed) into the response.
fn respond(
    outcome: Option<Result<berth_app::abi::AbiHandleOutcome, berth_app::ffi::Panicked>>,
    scope: &RequestScope,
    in_flight: InFlight,
) -> Response<ResponseBody> {
    let parts = match outcome {
        Some(Ok(outcome)) => outcome_into_parts(outcome),
        Some(Err(berth_app::ffi::Panicked)) => return failed(Failure::Unwound, scope, &in_flight),
        None => return failed(Failure::Late, scope, &in_flight),
    };
    match parts {
        Ok((status, headers, body)) if !scope.body_exceeded() => {
            let body = AppBody {
                inner: body,
                _in_flight: in_flight,
            };
            let mut response = Response::new(Either::Right(body));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Ok(_) => failed(Failure::TooLarge, scope, &in_flight),
        Err(failure) => failed(Failure::App(failure), scope, &in_flight),
    }
}

/// Why a request gets the host's answer instead of its app's.
enum Failure {
    /// The deadline passed first.
    Late,
    /// A poll of the app's future panicked across the boundary (broken plugin glue).
    Unwound,
    /// The request body went over the app's limit: whatever the app made of its failed body
    /// stream, the client sent too much.
    TooLarge,
    /// The app panicked, or its answer was not valid.
    App(HandleFailure),
}

/// The host's answer for `failure`, logged and counted. Out of line and marked cold, so that
/// an answer that goes well runs a short, straight path: about 80 instructions fewer per
/// request than with every failure inline.
#[cold]
#[inline(never)]
fn failed(failure: Failure, scope: &RequestScope, in_flight: &InFlight) -> Response<ResponseBody> {
    let app = in_flight.version();
    // What went wrong is logged whatever the client is told; `None`: the body was over the limit.
    let answer = match failure {
        Failure::Late => {
            let limit = app.request_timeout;
            tracing::warn!(
                app = &*app.name,
                "app did not answer within {limit:?}; its future was dropped"
            );
            Some(text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the app did not answer within {limit:?}\n"),
            ))
        }
        Failure::Unwound => {
            tracing::error!(
                app = &*app.name,
                "app's future panicked across the boundary"
            );
            Some(internal_error())
        }
        Failure::TooLarge => None,
        Failure::App(HandleFailure::Panicked(message)) => {
            tracing::error!(app = &*app.name, "app panicked: {message}");
            Some(internal_error())
        }
        Failure::App(failure) => {
            tracing::error!(
                app = &*app.name,
                "app returned an invalid response: {failure}"
            );
            Some(internal_error())
        }
    };
    // A body over the limit is the first thing to tell the client, whatever else went wrong.
    let response = match answer {
        Some(answer) if !scope.body_exceeded() => answer,
        _ => too_large(app.max_body_size),
    };
    if response.status().is_server_error() {
        app.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}

pin_project_lite::pin_project! {
    /// `future`, or `None` once `deadline` passes. Unlike `tokio::time::timeout` it sets no
    /// timer when the future is ready at its first poll, as most apps' answers are, and keeps
    /// the timer (a large value) out of line, so that the request's future stays small.
    struct WithDeadline<F> {
        #[pin]
        future: F,
        timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        deadline: tokio::time::Instant,
    }
}

impl<F> WithDeadline<F> {
    fn new(future: F, deadline: tokio::time::Instant) -> Self {
        WithDeadline {
            future,
            timer: None,
            deadline,
        }
    }
}

impl<F: Future> Future for WithDeadline<F> {
    type Output = Option<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(output) = this.future.poll(cx) {
            return std::task::Poll::Ready(Some(output));
        }
        let deadline = *this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| None)
    }
}

fn too_large(limit: u64) -> Response<ResponseBody> {
    let mut response = text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than the limit of {limit} bytes\n"),
    );
    // The rest of the body is not read: the connection cannot be reused.
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// With `--access-log`, emits the one log event per request when dropped: with the response
/// status, or, if the request future was dropped first (the client went away), as status 499
/// like NGINX.
struct RequestLog {
    app: Arc<str>,
    method: http::Method,
    path: String,
    started: Instant,
    status: Option<StatusCode>,
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let (app, method, path) = (&*self.app, &self.method, &*self.path);
        match self.status {
            Some(status) => {
                let status = status.as_u16();
                tracing::info!(target: "berth::access", app, %method, path, status, latency_ms, "request");
            }
            None => tracing::info!(
                target: "berth::access",
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
    let mut response = Response::new(Either::Left(Full::new(Chunk::Own(Bytes::from(body)))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn text(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Left(Full::new(Chunk::Own(Bytes::from(body)))));
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
