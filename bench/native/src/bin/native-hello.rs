//! The `hello` app compiled straight into a hyper server: answers every request with
//! `200 Hello, world!` as `text/plain`, like Berth + `hello`.
//!
//! Run with: `cargo run --release -p berth-bench --bin native-hello -- --listen 127.0.0.1:8081`.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use http::StatusCode;

/// A native hyper hello server, the baseline for Berth + the `hello` app.
#[derive(Debug, Parser)]
struct Args {
    /// The address to serve HTTP/1.1 and HTTP/2 cleartext on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let served = berth_bench::serve(args.listen, |_request| async {
        berth_bench::respond(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "Hello, world!\n",
        )
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("native-hello: {err:#}");
            ExitCode::FAILURE
        }
    }
}
