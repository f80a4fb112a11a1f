//! Native baselines and a load client for Berth's benchmark suite.
//!
//! `bench/run.py` measures Berth running a sample app against the same handler compiled
//! straight into a hyper server. For that comparison to mean anything, the baseline must be
//! set up the way Berth sets up its own server, and this crate is where that setup lives:
//!
//! * the tokio multi-thread runtime with default settings ([`runtime`]),
//! * Berth's own listener set-up, a backlog of 8192 ([`bind`]),
//! * `TCP_NODELAY` on every accepted connection, and hyper-util's auto builder serving
//!   HTTP/1.1 and HTTP/2 cleartext on one port ([`serve`]).
//!
//! # Layout
//!
//! * `src/bin/native-hello.rs`: answers `Hello, world!` (the `hello` app's baseline).
//! * `src/bin/native-fetch.rs`: GETs an upstream with hyper-util's pooled client and answers
//!   its first 20 bytes (the `fetch` app's baseline).
//! * `src/bin/native-sleep.rs`: sleeps 1 s, then answers (the `gather?sleep_ms=1000` baseline).
//! * `src/bin/native-db.rs`: reads one row from PostgreSQL through a deadpool-postgres pool with
//!   a cached prepared statement and answers it as JSON (the `todo` app's `GET
//!   /todo/items/{id}` baseline).
//! * `src/bin/native-redis.rs`: `GET counter:{key}` from Redis on one multiplexed connection,
//!   answered as JSON (the `counter` app's `GET /counter/{key}` baseline).
//! * `src/bin/native-abi.rs`: native-hello's server, answering through the `hello` app's plugin
//!   via Berth's C ABI (`berth_server::embed`) and nothing else of Berth: it tells what the
//!   boundary costs apart from what the rest of the server costs.
//! * `src/bin/fanout.rs`: a load client that opens N connections at once, sends one request
//!   on each, and prints one JSON line of results.
//! * `src/bin/native-ws-echo.rs`: a WebSocket echo (the `ws-echo` app's baseline), and
//!   `src/bin/native-ws-chat.rs`: sockets subscribed to one in-process broadcast, published to
//!   by `POST /chat/publish` or a socket's text message (the `chat` app's baseline); both on
//!   tokio-tungstenite over hyper's upgrade, set up in [`ws`] as Berth's host does it.
//! * `src/bin/wsload.rs`: the suite's WebSocket load client: echo round trips per second and
//!   their latency, or the delivery time of one published message to N idle sockets.
//!
//! Run with: `cargo run --release -p berth-bench --bin native-hello -- --listen 127.0.0.1:8081`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

pub mod ws;

/// The body every baseline answers with: one buffer, like a sample app's small answer.
pub type Body = Full<Bytes>;

/// The runtime Berth's `main` builds: multi-thread, default settings, all drivers on. Under
/// `taskset -c 0` it starts one worker thread, as Berth does.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Binds `addr` the way Berth does (it is Berth's own function): through `socket2`, with
/// `SO_REUSEADDR` and a backlog of 8192 (tokio's own `bind` uses 1024, which overflows in a
/// burst of new connections). The kernel caps the backlog at `net.core.somaxconn`.
pub use berth_server::error_chain;
pub use berth_server::http::bind;

/// Serves `handler` on `listen` until the process is killed: builds the runtime, binds, logs
/// `listening on http://ADDR` to stderr, then accepts forever. Each connection gets
/// `TCP_NODELAY` and its own task, served by hyper-util's auto builder (HTTP/1.1, or HTTP/2
/// when the client opens with the HTTP/2 preface), as in Berth.
pub fn serve<H, F>(listen: SocketAddr, handler: H) -> anyhow::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    serve_with(listen, async move { Ok(handler) })
}

/// [`serve`], with the handler made by `setup`, which runs on the server's runtime before it
/// binds: for state that must live on that runtime, such as a connection pool or a multiplexed
/// connection and the tasks that drive them. An error from `setup` is returned before anything
/// listens, so `listening on` still means ready.
pub fn serve_with<S, H, F>(listen: SocketAddr, setup: S) -> anyhow::Result<()>
where
    S: Future<Output = anyhow::Result<H>>,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let runtime = runtime().context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let handler = setup.await?;
        let listener = bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr().context("no local address")?;
        eprintln!("listening on http://{local}");
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    eprintln!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Errors here only mean the peer is already gone; Berth ignores them too.
            let _ = stream.set_nodelay(true);
            let builder = Arc::clone(&builder);
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                // A connection error is the client's business (reset, bad request).
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A response with `status`, a `Content-Type` and `body`.
pub fn respond(
    status: http::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// A connected TCP socket with `TCP_NODELAY` that resets instead of lingering in `TIME_WAIT`
/// when closed (`SO_LINGER` 0): a load client opens tens of thousands of them per run.
pub async fn connect_reset(addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_linger(Some(Duration::ZERO))?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    tokio::net::TcpSocket::from_std_stream(socket.into())
        .connect(addr)
        .await
}

/// The `p`-th percentile (0 to 100) of `sorted` by the nearest-rank method; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_uses_the_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&values, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn respond_sets_status_and_content_type() {
        let response = respond(http::StatusCode::BAD_GATEWAY, "text/plain", "no");
        assert_eq!(response.status(), http::StatusCode::BAD_GATEWAY);
        assert_eq!(response.headers()[http::header::CONTENT_TYPE], "text/plain");
    }

    #[test]
    fn bind_listens_on_a_free_port() {
        let runtime = runtime().expect("runtime");
        runtime.block_on(async {
            let listener = bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let client = tokio::net::TcpStream::connect(addr);
            let (accepted, connected) = tokio::join!(listener.accept(), client);
            assert!(accepted.is_ok() && connected.is_ok());
        });
    }
}
