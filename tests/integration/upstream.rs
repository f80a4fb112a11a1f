//! Servers the apps call out to, each on `127.0.0.1:0` with its own runtime on its own thread
//! (so a test blocking its own thread never stalls them). Both stop when dropped.
//!
//! * [`Upstream`]: a small hyper HTTP/1.1 server with fixed routes;
//! * [`HangServer`]: accepts, reads the request, never answers, and reports when the client
//!   closes the connection;
//! * [`StreamingUpstream`]: answers every request with a large body generated chunk by chunk
//!   as the client reads it (never held in memory whole).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// At most this many connections are accepted by one upstream (every loop is bounded).
const MAX_CONNECTIONS: u32 = 256;

/// The 100-byte body of `GET /small`: the alphabet, repeated.
pub fn small_body() -> Vec<u8> {
    (0..100u8).map(|i| b'a' + i % 26).collect()
}

/// Runs `serve(listener, shutdown)` on a current-thread runtime on a new thread.
fn spawn_server<F, Fut>(serve: F) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>)
where
    F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    std_listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let addr = std_listener.local_addr().expect("local_addr");
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("upstream runtime");
        runtime.block_on(async move {
            let listener = TcpListener::from_std(std_listener).expect("tokio listener");
            serve(listener, stopped).await;
        });
        // Dropping the runtime cancels the connection tasks and closes their sockets.
    });
    (addr, stop, thread)
}

/// Stops a server thread: signals it and waits for it to finish.
fn stop(stop: &mut Option<oneshot::Sender<()>>, thread: &mut Option<JoinHandle<()>>) {
    if let Some(stop) = stop.take() {
        let _ = stop.send(());
    }
    if let Some(thread) = thread.take() {
        let _ = thread.join();
    }
}

/// A real HTTP/1.1 server for the apps to fetch from.
///
/// Routes: `/small` (200, [`small_body`]), `/slow?ms=N` (200 `slow N\n` after N ms, N capped at
/// 20 000), `/status?code=N` (status N, body `status N\n`), anything else 404. It counts the
/// connections it accepts ([`Upstream::connections`]), so a test can tell that none was made.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> Self {
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        let (addr, stop, thread) = spawn_server(move |listener, mut stopped| async move {
            for _ in 0..MAX_CONNECTIONS {
                let stream = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(route))
                        .await;
                });
            }
            let _ = stopped.await;
        });
        Self {
            addr,
            accepted,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections it has accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        stop(&mut self.stop, &mut self.thread);
    }
}

/// The integer value of query parameter `name`.
fn query_number(req: &Request<hyper::body::Incoming>, name: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.parse().ok()).flatten()
    })
}

async fn route(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    Ok(match req.uri().path() {
        "/small" => reply(StatusCode::OK, small_body()),
        "/slow" => {
            let ms = query_number(&req, "ms").unwrap_or(0).min(20_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(StatusCode::OK, format!("slow {ms}\n").into_bytes())
        }
        "/status" => {
            let code = query_number(&req, "code")
                .and_then(|code| u16::try_from(code).ok())
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            reply(code, format!("status {}\n", code.as_u16()).into_bytes())
        }
        _ => reply(StatusCode::NOT_FOUND, b"not found\n".to_vec()),
    })
}

/// What a [`HangServer`] saw on connection number `.0` (counted from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangEvent {
    /// A complete request head arrived (it will never be answered).
    Request(u32),
    /// The peer closed the connection (a read returned 0 or failed).
    Closed(u32),
}

/// A server that reads each request and never answers.
#[derive(Debug)]
pub struct HangServer {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<HangEvent>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HangServer {
    pub fn start() -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (addr, stop, thread) = spawn_server(move |listener, mut stopped| async move {
            for id in 0..MAX_CONNECTIONS {
                let mut stream = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let events = events_tx.clone();
                tokio::spawn(async move {
                    // Bounded in time (and in bytes: each read is at most 4 KiB, and we stop
                    // looking for the end of the head after 64 KiB).
                    let _ = tokio::time::timeout(Duration::from_secs(120), async {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        let mut seen_head = false;
                        loop {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => {
                                    let _ = events.send(HangEvent::Closed(id));
                                    return;
                                }
                                Ok(n) if !seen_head => {
                                    head.extend_from_slice(&buf[..n]);
                                    if head.windows(4).any(|w| w == b"\r\n\r\n")
                                        || head.len() > 64 * 1024
                                    {
                                        seen_head = true;
                                        let _ = events.send(HangEvent::Request(id));
                                    }
                                }
                                Ok(_) => {}
                            }
                        }
                    })
                    .await;
                });
            }
            let _ = stopped.await;
        });
        Self {
            addr,
            events,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<HangEvent> {
        tokio::time::timeout(timeout, self.events.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for HangServer {
    fn drop(&mut self) {
        stop(&mut self.stop, &mut self.thread);
    }
}

/// A server whose every response is `200` with `content-length: len`, `content-type:
/// application/octet-stream` and a body streamed from a fresh `chunks()` stream, which must
/// yield exactly `len` bytes. hyper pulls the next chunk only when the socket can take it, so
/// the body is generated as fast as the client reads.
#[derive(Debug)]
pub struct StreamingUpstream {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StreamingUpstream {
    pub fn start<F, S>(len: u64, chunks: F) -> Self
    where
        F: Fn() -> S + Clone + Send + 'static,
        S: Stream<Item = Bytes> + Send + 'static,
    {
        let (addr, stop, thread) = spawn_server(move |listener, mut stopped| async move {
            for _ in 0..MAX_CONNECTIONS {
                let stream = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let chunks = chunks.clone();
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let body = StreamBody::new(
                        chunks().map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))),
                    );
                    let response = Response::builder()
                        .header(hyper::header::CONTENT_LENGTH, len)
                        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
                        .body(body)
                        .expect("valid response");
                    async move { Ok::<_, Infallible>(response) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            let _ = stopped.await;
        });
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for StreamingUpstream {
    fn drop(&mut self) {
        stop(&mut self.stop, &mut self.thread);
    }
}

/// A `127.0.0.1` port that nothing listens on (bound, then released).
pub fn closed_port_url(path: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    drop(listener);
    format!("http://{addr}{path}")
}
