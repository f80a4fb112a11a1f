//! Each request sleeps 1 s on the runtime's timer, then answers `slept 1000 ms`: the fan-out
//! baseline for Berth + `gather?sleep_ms=1000` (no upstreams: a timer is all it waits on).
//!
//! Run with: `cargo run --release -p berth-bench --bin native-sleep -- --listen 127.0.0.1:8083`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use http::StatusCode;

/// A native hyper server whose every request waits 1 s.
#[derive(Debug, Parser)]
struct Args {
    /// The address to serve HTTP/1.1 and HTTP/2 cleartext on.
    #[arg(long, default_value = "127.0.0.1:8083")]
    listen: SocketAddr,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let served = berth_bench::serve(args.listen, |_request| async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        berth_bench::respond(StatusCode::OK, "text/plain; charset=utf-8", "slept 1000 ms")
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("native-sleep: {err:#}");
            ExitCode::FAILURE
        }
    }
}
