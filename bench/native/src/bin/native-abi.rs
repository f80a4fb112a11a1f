//! native-hello's server answering through an app plugin: per request, the same hyper setup
//! calls the `hello` app's cdylib through Berth's C ABI (`berth_server::embed::LoadedApp`,
//! the boundary code the server uses) and answers what it returns, and nothing else of Berth:
//! no router, no timeouts, no drain, no hot reload.
//!
//! It splits Berth's cost over native hyper in two: what crossing the plugin boundary costs
//! (this server against `native-hello`) and what the rest of Berth costs (Berth against this
//! server). `bench/run.py` and `bench/instructions.py --abi` measure it next to both.
//!
//! Run with: `cargo run --release -p berth-bench --bin native-abi -- --listen 127.0.0.1:8083
//! --app target/release/libhello.so`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use berth_server::embed::LoadedApp;
use bytes::Bytes;
use clap::Parser;
use http::StatusCode;
use http_body_util::Full;

/// A native hyper server that answers every request through one app plugin.
#[derive(Debug, Parser)]
struct Args {
    /// The address to serve HTTP/1.1 and HTTP/2 cleartext on.
    #[arg(long, default_value = "127.0.0.1:8083")]
    listen: SocketAddr,
    /// The app library to call (e.g. `target/release/libhello.so`).
    #[arg(long)]
    app: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let app = match LoadedApp::load(&args.app) {
        Ok(app) => Arc::new(app),
        Err(err) => {
            eprintln!("native-abi: cannot load {}: {err}", args.app.display());
            return ExitCode::FAILURE;
        }
    };
    let served = berth_bench::serve(args.listen, move |request| {
        let app = Arc::clone(&app);
        async move {
            let (parts, _body) = request.into_parts();
            // Boxed: the call's future is large, and hyper moves the request's future into a
            // task of its own per HTTP/2 stream; inline, those moves cost more than the box.
            let call = Box::pin(app.call(&parts.method, &parts.uri, &parts.headers, Bytes::new()));
            match call.await {
                Ok((status, headers, body)) => {
                    let mut response = http::Response::new(Full::new(body));
                    *response.status_mut() = status;
                    *response.headers_mut() = headers;
                    response
                }
                Err(err) => berth_bench::respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("{err}\n"),
                ),
            }
        }
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("native-abi: {err:#}");
            ExitCode::FAILURE
        }
    }
}
