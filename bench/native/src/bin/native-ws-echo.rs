//! The `ws-echo` app compiled straight into a hyper server: a WebSocket (on any path; Berth
//! serves it at `/ws-echo`) that sends every text and binary message back unchanged and answers
//! a close with a close. The codec is tokio-tungstenite on hyper's upgrade, with the read buffer
//! from `WS_READ_BUFFER` (see `berth_bench::ws`). A request that is not a handshake gets `200
//! native-ws-echo`, for readiness checks.
//!
//! Run with: `cargo run --release -p berth-bench --bin native-ws-echo -- --listen 127.0.0.1:8091`.

use std::net::SocketAddr;
use std::process::ExitCode;

use berth_bench::ws;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

/// A native hyper + tokio-tungstenite echo server, the baseline for Berth + the `ws-echo` app.
#[derive(Debug, Parser)]
struct Args {
    /// The address to serve on.
    #[arg(long, default_value = "127.0.0.1:8091")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let served = ws::config().and_then(|config| {
        ws::raise_nofile("native-ws-echo");
        berth_bench::serve(args.listen, move |request| async move {
            if ws::is_upgrade(request.headers()) {
                ws::accept(request, config, echo)
            } else {
                berth_bench::respond(StatusCode::OK, "text/plain", "native-ws-echo\n")
            }
        })
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("native-ws-echo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Echoes until the client closes or goes away. tungstenite answers pings itself, and queues
/// the reply to a close, which the next read sends before the stream ends.
async fn echo(mut socket: ws::ServerSocket) {
    while let Some(Ok(message)) = socket.next().await {
        if matches!(message, Message::Text(_) | Message::Binary(_))
            && socket.send(message).await.is_err()
        {
            return;
        }
    }
}
