//! The `chat` app's fan-out compiled straight into a hyper server, the baseline for Berth +
//! `chat` in the broadcast benchmark:
//!
//! * `/chat/ws` is a WebSocket subscribed to one in-process channel: every message published
//!   goes to every socket as text, and each text message a client sends is published.
//! * `POST /chat/publish` publishes its body (UTF-8, at most 1 MiB) and answers `200` with the
//!   number of sockets it went to.
//! * `GET /chat/` answers a small page, for readiness checks.
//!
//! The channel is a `tokio::sync::broadcast` of `--queue` messages: each socket's receiver is
//! its bounded queue, and a socket that falls further behind than that loses its oldest messages
//! (Berth's drop-oldest policy). A message is one `Utf8Bytes` shared by every socket, not copied.
//! The codec is tokio-tungstenite on hyper's upgrade, with the read buffer from `WS_READ_BUFFER`
//! (see `berth_bench::ws`).
//!
//! Run with: `cargo run --release -p berth-bench --bin native-ws-chat -- --listen 127.0.0.1:8092`.

use std::net::SocketAddr;
use std::process::ExitCode;

use berth_bench::ws;
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The largest body `POST /chat/publish` takes.
const MAX_PUBLISH: usize = 1 << 20;

const PAGE: &str = "<!doctype html><title>native chat</title><p>native-ws-chat: /chat/ws\n";

/// A native hyper + tokio-tungstenite chat server, the baseline for Berth + the `chat` app.
#[derive(Debug, Parser)]
struct Args {
    /// The address to serve on.
    #[arg(long, default_value = "127.0.0.1:8092")]
    listen: SocketAddr,
    /// How many messages a socket may fall behind before it loses the oldest.
    #[arg(long, default_value_t = 64)]
    queue: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let served = ws::config().and_then(|config| {
        ws::raise_nofile("native-ws-chat");
        let (channel, _) = broadcast::channel::<Utf8Bytes>(args.queue.max(1));
        berth_bench::serve(args.listen, move |request| {
            let channel = channel.clone();
            async move { route(request, channel, config).await }
        })
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("native-ws-chat: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn route(
    request: Request<Incoming>,
    channel: broadcast::Sender<Utf8Bytes>,
    config: WebSocketConfig,
) -> Response<berth_bench::Body> {
    let text = "text/plain; charset=utf-8";
    match (request.method(), request.uri().path()) {
        (_, "/chat/ws") => {
            // Subscribed before the 101 goes out: a message published once the client has its
            // answer reaches it.
            let queue = channel.subscribe();
            ws::accept(request, config, move |socket| chat(socket, channel, queue))
        }
        (&Method::POST, "/chat/publish") => {
            let body = match Limited::new(request.into_body(), MAX_PUBLISH)
                .collect()
                .await
            {
                Ok(body) => body.to_bytes(),
                Err(err) => {
                    return berth_bench::respond(StatusCode::BAD_REQUEST, text, err.to_string());
                }
            };
            match Utf8Bytes::try_from(body) {
                Ok(message) => {
                    let sockets = channel.send(message).unwrap_or(0);
                    berth_bench::respond(StatusCode::OK, text, format!("{sockets}\n"))
                }
                Err(_) => berth_bench::respond(StatusCode::BAD_REQUEST, text, "not UTF-8\n"),
            }
        }
        (&Method::GET, "/chat/" | "/chat") => berth_bench::respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(PAGE.as_bytes()),
        ),
        _ => berth_bench::respond(StatusCode::NOT_FOUND, text, "not found\n"),
    }
}

/// One socket: forwards the channel's messages to the client and publishes the client's text
/// messages, until either side is gone.
async fn chat(
    mut socket: ws::ServerSocket,
    channel: broadcast::Sender<Utf8Bytes>,
    mut queue: broadcast::Receiver<Utf8Bytes>,
) {
    loop {
        tokio::select! {
            published = queue.recv() => match published {
                Ok(message) => {
                    if socket.send(Message::Text(message)).await.is_err() {
                        return;
                    }
                }
                // Fell behind: the oldest messages are gone, carry on with the rest.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let _ = channel.send(text);
                }
                // Pings are answered by tungstenite; a close is answered on the next read.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
        }
    }
}
