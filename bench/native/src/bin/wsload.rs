//! The benchmark suite's WebSocket load client, in two modes, each printing one JSON line of
//! results on stdout (diagnostics go to stderr):
//!
//! * `echo`: opens `--connections` sockets, then on each, for `--duration` seconds, sends one
//!   message of `--size` bytes and waits for its echo before sending the next. Reports
//!   `{"mode","connections","connected","messages","wall_s","msgs_per_s","p50_ms","p99_ms",
//!   "max_ms","failed","first_error"}`: round trips per second over all sockets, and the
//!   latency of each round trip (send to echo).
//! * `broadcast`: opens `--sockets` idle sockets (at most `--concurrency` handshakes at a time),
//!   waits `--settle` seconds (and, with `--wait-stdin`, prints `{"event":"idle",...}` and waits
//!   for a line on stdin, so that the caller can read the server's memory), then publishes one
//!   message, by `POST --publish-url` or, without it, as a text message on one more socket, and
//!   times its arrival on every socket. Reports `{"mode","sockets","connected","received",
//!   "lost","connect_s","p50_ms","p99_ms","max_ms","publish","first_error"}`: the delivery
//!   times run from just before the publish to the arrival on each socket.
//!
//! Every phase is bounded by `--timeout` seconds, every loop by its deadline and a count. Sockets
//! are closed with `SO_LINGER` 0 (a reset), so that runs leave no `TIME_WAIT` sockets behind;
//! the open-file soft limit is raised to the hard limit at start. Each socket's codec reads
//! through a buffer of `--read-buffer` bytes (tungstenite's default, 128 KiB, would cost the
//! client 1.25 GiB at 10,000 sockets). Exits 0 when every socket connected and every message
//! arrived, 1 otherwise (the JSON line is printed either way), 2 on a usage error.
//!
//! Run with: `cargo run --release -p berth-bench --bin wsload -- echo --url
//! ws://127.0.0.1:8080/ws-echo --connections 64 --duration 10`, or `... broadcast --url
//! ws://127.0.0.1:8080/chat/ws --sockets 10000 --publish-url http://127.0.0.1:8080/chat/publish`.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes as WsBytes, Message, Utf8Bytes};

/// A client socket.
type Socket = WebSocketStream<TcpStream>;

/// Round trips one echo socket records at most (a bound on memory, far above what a socket
/// does in a measurement).
const MAX_ROUND_TRIPS: usize = 10_000_000;

/// A WebSocket load client: echo round trips, or broadcast delivery to idle sockets.
#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// N sockets, each sending a message and awaiting its echo in a loop for D seconds.
    Echo(EchoArgs),
    /// N idle sockets, then one published message: the time until each socket has it.
    Broadcast(BroadcastArgs),
}

/// What both modes take.
#[derive(Debug, clap::Args)]
struct Common {
    /// The WebSocket URL (ws://).
    #[arg(long)]
    url: Uri,
    /// Bytes in each message.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds each phase (connecting, waiting for messages) may take at most.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// The read buffer of each socket's codec, in bytes.
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
}

#[derive(Debug, clap::Args)]
struct EchoArgs {
    #[command(flatten)]
    common: Common,
    /// Sockets, each with one message in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Send binary messages instead of text.
    #[arg(long)]
    binary: bool,
}

#[derive(Debug, clap::Args)]
struct BroadcastArgs {
    #[command(flatten)]
    common: Common,
    /// Idle sockets to open.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Handshakes in flight at most while opening them.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Publish with a POST of the message to this URL (http://); without it, the message is sent
    /// as text on one more socket (the `chat` app publishes each text message a client sends).
    #[arg(long)]
    publish_url: Option<Uri>,
    /// Seconds to wait once every socket is open, before publishing.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Once settled, print `{"event":"idle",...}` and wait (at most --timeout) for a line on
    /// stdin before publishing.
    #[arg(long)]
    wait_stdin: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match berth_bench::runtime() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wsload: cannot start the tokio runtime: {err}");
            return ExitCode::from(2);
        }
    };
    let outcome = runtime.block_on(async {
        match args.mode {
            Mode::Echo(args) => echo(args).await,
            Mode::Broadcast(args) => broadcast(args).await,
        }
    });
    // A read of stdin still blocked in its thread must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok((report, complete)) => {
            println!("{report}");
            if complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("wsload: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Where to connect and what to ask for.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    url: Uri,
    config: WebSocketConfig,
}

impl Target {
    fn new(common: &Common) -> anyhow::Result<Self> {
        if common.url.scheme_str() != Some("ws") {
            bail!("only ws:// URLs are supported, not {}", common.url);
        }
        if !common.timeout.is_finite() || common.timeout <= 0.0 {
            bail!("--timeout must be a positive number of seconds");
        }
        if common.read_buffer == 0 {
            bail!("--read-buffer must be at least 1 byte");
        }
        Ok(Self {
            addr: resolve(&common.url, 80)?,
            url: common.url.clone(),
            config: WebSocketConfig::default().read_buffer_size(common.read_buffer),
        })
    }

    /// A socket with its handshake done.
    async fn connect(&self) -> Result<Socket, String> {
        let stream = berth_bench::connect_reset(self.addr)
            .await
            .map_err(|err| format!("connect: {err}"))?;
        let (socket, _response) =
            tokio_tungstenite::client_async_with_config(&self.url, stream, Some(self.config))
                .await
                .map_err(|err| format!("handshake: {err}"))?;
        Ok(socket)
    }
}

/// The first address of `url`'s host.
fn resolve(url: &Uri, default_port: u16) -> anyhow::Result<SocketAddr> {
    let authority = url.authority().context("the URL has no host")?;
    let port = authority.port_u16().unwrap_or(default_port);
    (authority.host(), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))
}

/// Raises the open-file soft limit and warns when it is still short of `sockets`.
fn raise_nofile(sockets: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) if (sockets as u64).saturating_add(32) > soft => eprintln!(
            "wsload: warning: {sockets} sockets need more descriptors than the limit of {soft}"
        ),
        Ok(_) => {}
        Err(err) => eprintln!("wsload: cannot raise the open-file limit: {err}"),
    }
}

/// Seconds, rounded to the millisecond.
fn secs(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e3).round() / 1e3
}

/// p50, p99 and max of `latencies` (sorted here), in milliseconds.
fn latency_summary(latencies: &mut [f64]) -> (f64, f64, f64) {
    latencies.sort_by(f64::total_cmp);
    let round = |x: f64| (x * 1e3).round() / 1e3;
    (
        round(berth_bench::percentile(latencies, 50.0)),
        round(berth_bench::percentile(latencies, 99.0)),
        round(latencies.last().copied().unwrap_or(0.0)),
    )
}

/// `size` bytes of printable text starting with `prefix`.
fn payload(prefix: &str, size: usize) -> String {
    let mut text = prefix.to_owned();
    while text.len() < size {
        text.push('.');
    }
    text
}

/// Opens `n` sockets to `target`, at most `concurrency` handshakes at a time, all by
/// `deadline`: the sockets, and the errors of those that failed.
async fn open_all(
    target: &Target,
    n: usize,
    concurrency: usize,
    deadline: Instant,
) -> (Vec<Socket>, Vec<String>) {
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for _ in 0..n {
        let target = target.clone();
        let permits = Arc::clone(&permits);
        tasks.spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|err| err.to_string())?;
            timeout_at(deadline, target.connect())
                .await
                .unwrap_or_else(|_| Err("no handshake before the timeout".to_owned()))
        });
    }
    let mut sockets = Vec::with_capacity(n);
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap_or_else(|err| Err(format!("task failed: {err}"))) {
            Ok(socket) => sockets.push(socket),
            Err(err) => errors.push(err),
        }
    }
    (sockets, errors)
}

// ---- echo

async fn echo(args: EchoArgs) -> anyhow::Result<(serde_json::Value, bool)> {
    let target = Target::new(&args.common)?;
    if !args.duration.is_finite() || args.duration <= 0.0 {
        bail!("--duration must be a positive number of seconds");
    }
    raise_nofile(args.connections);
    let limit = Duration::from_secs_f64(args.common.timeout);
    let (sockets, mut errors) = open_all(
        &target,
        args.connections,
        args.connections,
        Instant::now() + limit,
    )
    .await;
    let connected = sockets.len();
    let message = if args.binary {
        Message::Binary(WsBytes::from(payload("wsload echo ", args.common.size)))
    } else {
        Message::Text(Utf8Bytes::from(payload("wsload echo ", args.common.size)))
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let mut tasks = JoinSet::new();
    for socket in sockets {
        tasks.spawn(round_trips(socket, message.clone(), deadline, limit));
    }
    let mut latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (mut times, error) =
            joined.unwrap_or_else(|err| (Vec::new(), Some(format!("task failed: {err}"))));
        latencies.append(&mut times);
        errors.extend(error);
    }
    let wall = started.elapsed();
    let messages = latencies.len();
    let (p50, p99, max) = latency_summary(&mut latencies);
    let rate = if wall.is_zero() {
        0.0
    } else {
        messages as f64 / wall.as_secs_f64()
    };
    let report = json!({
        "mode": "echo",
        "connections": args.connections,
        "connected": connected,
        "messages": messages,
        "wall_s": secs(wall),
        "msgs_per_s": rate.round(),
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max,
        "failed": errors.len(),
        "first_error": errors.first(),
    });
    Ok((report, errors.is_empty() && messages > 0))
}

/// Round trips on one socket until `deadline`: the latency of each, in milliseconds, and the
/// error that ended them early, if one did. Each echo may take `limit` at most.
async fn round_trips(
    mut socket: Socket,
    message: Message,
    deadline: Instant,
    limit: Duration,
) -> (Vec<f64>, Option<String>) {
    let mut latencies = Vec::new();
    let mut error = None;
    while Instant::now() < deadline && latencies.len() < MAX_ROUND_TRIPS {
        let sent = Instant::now();
        match timeout_at(sent + limit, round_trip(&mut socket, &message)).await {
            Ok(Ok(())) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
            Ok(Err(err)) => {
                error = Some(err);
                break;
            }
            Err(_) => {
                error = Some(format!("no echo within {limit:?}"));
                break;
            }
        }
    }
    if error.is_none() {
        // A clean close, but no waiting on a slow server: the figures are taken.
        let _ = tokio::time::timeout(Duration::from_secs(1), socket.close(None)).await;
    }
    (latencies, error)
}

/// Sends `message` and reads until it comes back (skipping pings and pongs).
async fn round_trip(socket: &mut Socket, message: &Message) -> Result<(), String> {
    socket
        .send(message.clone())
        .await
        .map_err(|err| format!("send: {err}"))?;
    loop {
        match socket.next().await {
            Some(Ok(reply @ (Message::Text(_) | Message::Binary(_)))) => {
                return if &reply == message {
                    Ok(())
                } else {
                    Err(format!("echo differs: {} bytes", reply.len()))
                };
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed by the server: {frame:?}"));
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(format!("receive: {err}")),
            None => return Err("the server went away".to_owned()),
        }
    }
}

// ---- broadcast

async fn broadcast(args: BroadcastArgs) -> anyhow::Result<(serde_json::Value, bool)> {
    let target = Target::new(&args.common)?;
    if !args.settle.is_finite() || args.settle < 0.0 {
        bail!("--settle must be a number of seconds");
    }
    let publish_addr = match &args.publish_url {
        Some(url) if url.scheme_str() != Some("http") => bail!("--publish-url must be http://"),
        Some(url) => Some(resolve(url, 80)?),
        None => None,
    };
    raise_nofile(args.sockets + 1);
    let limit = Duration::from_secs_f64(args.common.timeout);
    let started = Instant::now();
    let (sockets, connect_errors) =
        open_all(&target, args.sockets, args.concurrency, started + limit).await;
    let connect = started.elapsed();
    let connected = sockets.len();
    eprintln!(
        "wsload: {connected} of {} sockets open in {:.2} s",
        args.sockets,
        connect.as_secs_f64()
    );

    // Every socket reads from here on (answering pings while idle), and reports the arrival of
    // the message that equals the token once the token is set.
    let (token_tx, token_rx) = watch::channel(None::<Utf8Bytes>);
    let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel::<Result<Instant, String>>();
    let mut readers = JoinSet::new();
    for socket in sockets {
        readers.spawn(await_token(socket, token_rx.clone(), arrived_tx.clone()));
    }
    drop(arrived_tx);
    // The publishing socket, when there is no publish URL, opened with the others.
    let mut publisher = match publish_addr {
        Some(_) => None,
        None => Some(
            timeout_at(Instant::now() + limit, target.connect())
                .await
                .unwrap_or_else(|_| Err("no handshake before the timeout".to_owned()))
                .map_err(|err| format!("the publishing socket: {err}")),
        ),
    };
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    if args.wait_stdin {
        println!("{}", json!({"event": "idle", "connected": connected}));
        let read = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| ())
        });
        match timeout_at(Instant::now() + limit, read).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => bail!("reading stdin: {err}"),
            Ok(Err(err)) => bail!("reading stdin: {err}"),
            Err(_) => bail!("no line on stdin within {limit:?}"),
        }
    }

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let token = Utf8Bytes::from(payload(
        &format!("wsload broadcast {nanos} "),
        args.common.size,
    ));
    token_tx.send_replace(Some(token.clone()));
    let published = Instant::now();
    let deadline = published + limit;
    let publish = match (&args.publish_url, publish_addr, publisher.as_mut()) {
        (Some(url), Some(addr), _) => post(addr, url, token.clone(), deadline).await,
        (_, _, Some(Ok(socket))) => timeout_at(deadline, socket.send(Message::Text(token.clone())))
            .await
            .map_err(|_| "send timed out".to_owned())
            .and_then(|sent| sent.map_err(|err| err.to_string()))
            .map(|()| "sent on a socket".to_owned()),
        (_, _, Some(Err(err))) => Err(err.clone()),
        _ => Err("nothing to publish with".to_owned()),
    };
    let mut errors = connect_errors;
    let mut latencies = Vec::with_capacity(connected);
    match &publish {
        Ok(how) => eprintln!("wsload: published ({how})"),
        Err(err) => errors.insert(0, format!("publish: {err}")),
    }
    if publish.is_ok() {
        let mut waiting = connected;
        while waiting > 0 {
            match timeout_at(deadline, arrived_rx.recv()).await {
                Ok(Some(Ok(at))) => {
                    latencies.push(at.saturating_duration_since(published).as_secs_f64() * 1000.0)
                }
                Ok(Some(Err(err))) => errors.push(err),
                Ok(None) => break,
                Err(_) => {
                    errors.push(format!(
                        "{waiting} socket(s) had no message within {limit:?}"
                    ));
                    break;
                }
            }
            waiting -= 1;
        }
    }
    readers.abort_all();
    let received = latencies.len();
    let (p50, p99, max) = latency_summary(&mut latencies);
    let report = json!({
        "mode": "broadcast",
        "sockets": args.sockets,
        "connected": connected,
        "received": received,
        "lost": connected - received,
        "connect_s": secs(connect),
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max,
        "publish": publish.as_ref().map_or_else(|err| format!("failed: {err}"), Clone::clone),
        "failed": errors.len(),
        "first_error": errors.first(),
    });
    Ok((report, received == args.sockets && errors.is_empty()))
}

/// Reads `socket` until a text message equal to the token arrives, and reports when; ends on
/// the socket's end or error (reported too) or when aborted.
async fn await_token(
    mut socket: Socket,
    token: watch::Receiver<Option<Utf8Bytes>>,
    arrived: mpsc::UnboundedSender<Result<Instant, String>>,
) {
    let outcome = loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let at = Instant::now();
                if token.borrow().as_ref() == Some(&text) {
                    break Ok(at);
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break Err(format!("closed by the server: {frame:?}"));
            }
            Some(Ok(_)) => {}
            Some(Err(err)) => break Err(format!("receive: {err}")),
            None => break Err("the server went away".to_owned()),
        }
    };
    // The receiver is gone once the wait is over.
    let _ = arrived.send(outcome);
    // Keep the socket open (and answering pings) until aborted, so that leaving does not
    // disturb the others' delivery.
    while let Some(Ok(_)) = socket.next().await {}
}

/// POSTs `body` to `url` on a connection of its own: `status NNN` for a success.
async fn post(
    addr: SocketAddr,
    url: &Uri,
    body: Utf8Bytes,
    deadline: Instant,
) -> Result<String, String> {
    let exchange = async {
        let stream = berth_bench::connect_reset(addr)
            .await
            .map_err(|err| format!("connect: {err}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|err| format!("handshake: {err}"))?;
        tokio::spawn(connection);
        let request = Request::post(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                http::header::HOST,
                url.authority().map_or("", |a| a.as_str()),
            )
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| format!("request: {err}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|err| format!("request: {err}"))?;
        let status = response.status();
        let answer = response
            .into_body()
            .collect()
            .await
            .map_err(|err| format!("response: {err}"))?
            .to_bytes();
        if status.is_success() {
            Ok(format!("status {}", status.as_u16()))
        } else {
            Err(format!(
                "status {status}: {}",
                String::from_utf8_lossy(&answer[..answer.len().min(200)])
            ))
        }
    };
    timeout_at(deadline, exchange)
        .await
        .unwrap_or_else(|_| Err("no answer before the timeout".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_size() {
        assert_eq!(payload("ab", 5), "ab...");
        assert_eq!(payload("abcdef", 3), "abcdef");
    }

    /// Serves `session` on every WebSocket opened to a local port, `POST`s publishing to
    /// `channel`; returns the port's address.
    async fn serve<S, F>(
        session: S,
        channel: tokio::sync::broadcast::Sender<Utf8Bytes>,
    ) -> SocketAddr
    where
        S: Fn(berth_bench::ws::ServerSocket) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = berth_bench::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let session = session.clone();
                let channel = channel.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let session = session.clone();
                            let channel = channel.clone();
                            async move {
                                let response = if request.method() == http::Method::POST {
                                    let body = request
                                        .into_body()
                                        .collect()
                                        .await
                                        .expect("body")
                                        .to_bytes();
                                    let _ = channel.send(Utf8Bytes::try_from(body).expect("UTF-8"));
                                    berth_bench::respond(http::StatusCode::OK, "text/plain", "ok")
                                } else {
                                    let config = WebSocketConfig::default();
                                    berth_bench::ws::accept(request, config, session)
                                };
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        addr
    }

    fn common(addr: SocketAddr) -> Common {
        Common {
            url: format!("ws://{addr}/ws").parse().expect("url"),
            size: 32,
            timeout: 10.0,
            read_buffer: 4096,
        }
    }

    #[test]
    fn echo_against_a_local_server() {
        let runtime = berth_bench::runtime().expect("runtime");
        let (report, complete) = runtime.block_on(async {
            let (channel, _) = tokio::sync::broadcast::channel(1);
            let addr = serve(
                |mut socket: berth_bench::ws::ServerSocket| async move {
                    while let Some(Ok(message)) = socket.next().await {
                        if message.is_text() && socket.send(message).await.is_err() {
                            return;
                        }
                    }
                },
                channel,
            )
            .await;
            let args = EchoArgs {
                common: common(addr),
                connections: 4,
                duration: 0.3,
                binary: false,
            };
            echo(args).await.expect("echo")
        });
        assert!(complete, "{report}");
        assert_eq!(report["connected"], 4);
        assert!(
            report["messages"].as_u64().expect("messages") > 0,
            "{report}"
        );
    }

    #[test]
    fn broadcast_against_a_local_server() {
        let runtime = berth_bench::runtime().expect("runtime");
        runtime.block_on(async {
            let (channel, _) = tokio::sync::broadcast::channel::<Utf8Bytes>(8);
            let sender = channel.clone();
            let addr = serve(
                move |mut socket: berth_bench::ws::ServerSocket| {
                    let sender = sender.clone();
                    let mut queue = sender.subscribe();
                    async move {
                        loop {
                            tokio::select! {
                                Ok(text) = queue.recv() => {
                                    if socket.send(Message::Text(text)).await.is_err() {
                                        return;
                                    }
                                }
                                incoming = socket.next() => match incoming {
                                    Some(Ok(Message::Text(text))) => {
                                        let _ = sender.send(text);
                                    }
                                    Some(Ok(_)) => {}
                                    _ => return,
                                },
                            }
                        }
                    }
                },
                channel,
            )
            .await;
            for publish_url in [
                None,
                Some(format!("http://{addr}/publish").parse().expect("url")),
            ] {
                let args = BroadcastArgs {
                    common: common(addr),
                    sockets: 50,
                    concurrency: 8,
                    publish_url,
                    settle: 0.1,
                    wait_stdin: false,
                };
                let (report, complete) = broadcast(args).await.expect("broadcast");
                assert!(complete, "{report}");
                assert_eq!(report["received"], 50, "{report}");
            }
        });
    }

    #[test]
    fn target_refuses_other_schemes() {
        let common = Common {
            url: "http://127.0.0.1:1/".parse().expect("url"),
            size: 1,
            timeout: 1.0,
            read_buffer: 4096,
        };
        assert!(Target::new(&common).is_err());
    }
}
