//! One client connection: the TLS handshake or a peek for HTTP/2's preface, then hyper's
//! HTTP/1.1 or HTTP/2 connection with Berth's limits and timeouts, watched for shutdown.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::apps::Registry;
use crate::config::Limits;
use crate::http::dispatch::dispatch;
use crate::http::idle::{Activity, IdleIo, Tracked};
use crate::http::shutdown::Shutdown;
use crate::tls;

/// hyper's HTTP/1.1 and HTTP/2 connection builders with Berth's limits, shared by every
/// connection. Berth picks the protocol itself (ALPN, or a peek at the first bytes) instead of
/// letting hyper-util's auto builder read them: that read takes the first 24 bytes of a
/// request on their own, and hyper then grows its read buffer from 8 to 16 KiB for the rest,
/// on every connection.
#[derive(Debug, Clone)]
pub struct Protocols {
    /// HTTP/1.1.
    pub http1: hyper::server::conn::http1::Builder,
    /// HTTP/2 (over TLS with ALPN `h2`, or cleartext with prior knowledge).
    pub http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl Protocols {
    /// Both builders, with the limits that apply to each.
    pub fn new(limits: &Limits) -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // `IdleIo` times request heads; hyper's timer would also cut idle keep-alive
            // connections.
            .header_read_timeout(None)
            // 431 for a request head over the limit, however the bytes arrived: the buffer limit
            // alone is only checked while a head is incomplete, so a large head read in one
            // go could pass it.
            .max_header_size(limits.max_header_size)
            // hyper needs a read buffer of at least 8 KiB.
            .max_buf_size(limits.max_header_size.max(8192));
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
        Protocols { http1, http2 }
    }
}

/// The connection preface of HTTP/2 with prior knowledge (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a cleartext client opens with the HTTP/2 preface. The bytes are peeked, not read,
/// so hyper reads the whole first request at once. An HTTP/1.1 request differs from the
/// preface by its second byte at the latest; only a client that stops part-way through the
/// preface makes this wait for more.
async fn opens_with_h2_preface(stream: &tokio::net::TcpStream) -> io::Result<bool> {
    let mut buf = [0; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 || buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A peek returns at once while any byte is waiting: look again a little later.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What serving one connection needs.
pub(super) struct Connection {
    /// Where the request's app is found.
    pub(super) registry: Arc<Registry>,
    /// The client's address.
    pub(super) peer: SocketAddr,
    /// The address the connection arrived on.
    pub(super) local: Option<SocketAddr>,
    /// The limits and timeouts every request on it is held to.
    pub(super) limits: Limits,
    /// Log every request (`--access-log`).
    pub(super) access_log: bool,
    /// The server's shutdown, which HTTP/1.1 connections and streaming responses watch.
    pub(super) shutdown: Arc<Shutdown>,
    /// Its place under the connection limit, held for as long as the connection lives, or
    /// handed to the WebSocket it turns into (an upgraded socket is a connection served too).
    pub(super) slot: std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
}

impl Connection {
    /// Serves the connection on its own task (after the TLS handshake, with `acceptor`),
    /// watched by `graceful` for shutdown; `slot` is its place under the connection limit,
    /// freed when it ends (or, for a WebSocket, when the socket does).
    pub(super) fn spawn(
        mut self,
        protocols: &Arc<Protocols>,
        graceful: &GracefulShutdown,
        acceptor: Option<TlsAcceptor>,
        stream: TcpStream,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        *self
            .slot
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(slot);
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
                        tokio::time::timeout_at(first_head, opens_with_h2_preface(&stream));
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
        });
    }

    /// Serves HTTP/2 (`h2`) or HTTP/1.1 on `io` until the connection ends, with the keep-alive
    /// idle timeout and request tracking.
    async fn serve<I>(
        self,
        protocols: &Protocols,
        watcher: Watcher,
        io: I,
        h2: bool,
        first_head: tokio::time::Instant,
    ) where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let activity = Arc::new(Activity::default());
        let io = IdleIo::new(
            io,
            Arc::clone(&activity),
            self.limits.keepalive_timeout,
            self.limits.header_read_timeout,
            first_head,
        );
        let this = Arc::new(self);
        let shutdown = Arc::clone(&this.shutdown);
        let first_request = Arc::clone(&activity);
        let service = service_fn(move |request| {
            use futures_util::FutureExt as _;
            let guard = activity.begin();
            // A combinator, not an async block: the future hyper holds per request (and, for
            // HTTP/2, spawns as a task per stream) stays as small as the answer's own.
            dispatch(&this, request, &activity).map(move |response| {
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, guard)))
            })
        });
        let served = if h2 {
            let connection = protocols.http2.serve_connection(io, service);
            watcher.watch(connection).await
        } else {
            // With upgrades, for WebSockets. hyper-util's watcher cannot watch such a
            // connection: it is held only to be counted, and the shutdown is passed on here.
            let _counted = watcher;
            let connection = protocols
                .http1
                .serve_connection(io, service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => served,
                () = shutdown.wait() => {
                    // Accepted just before the drain (a worker being replaced, say): the
                    // client has sent its first request, or is sending it, and hyper would
                    // close a connection it has read nothing from. Serve that one request.
                    let grace = first_head.min(tokio::time::Instant::now() + FIRST_REQUEST_GRACE);
                    while !first_request.begun() && tokio::time::Instant::now() < grace {
                        let looked = tokio::time::sleep(Duration::from_millis(5));
                        tokio::select! {
                            served = connection.as_mut() => return log_end(peer, served),
                            () = looked => {}
                        }
                    }
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        };
        log_end(peer, served);
    }
}

/// How long a connection that was accepted but sent no request yet when the drain began has to
/// send its first one.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

fn log_end(peer: SocketAddr, served: Result<(), hyper::Error>) {
    if let Err(err) = served {
        tracing::debug!(%peer, "connection error: {err}");
    }
}
