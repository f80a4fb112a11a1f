//! The `counter` app's `GET /counter/{key}` compiled straight into a hyper server: per request,
//! `GET counter:{key}` on one Redis `MultiplexedConnection` shared by every request (the `redis`
//! crate's, from `Client::get_multiplexed_async_connection`), answered as JSON (`{"key",
//! "value"}`, 0 for a key that is not set), `503` when Redis fails or takes over 2 s, as the
//! app does.
//!
//! It connects before it listens, so that an unreachable Redis stops it at once.
//!
//! Run with: `cargo run --release -p berth-bench --bin native-redis -- --listen 127.0.0.1:8085
//! --redis-url redis://127.0.0.1:6379/`, then `curl http://127.0.0.1:8085/counter/hits`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use berth_bench::Body;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

/// A native hyper server answering `GET /counter/{key}` from Redis.
#[derive(Debug, Parser)]
struct Args {
    /// The address to serve HTTP/1.1 and HTTP/2 cleartext on.
    #[arg(long, default_value = "127.0.0.1:8085")]
    listen: SocketAddr,
    /// The Redis server (`redis://host:port/`).
    #[arg(long)]
    redis_url: String,
}

/// The longest a Redis command may take before the request is answered `503`, as in the app.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let args = Args::parse();
    let served = berth_bench::serve_with(args.listen, async move {
        let client = redis::Client::open(args.redis_url.as_str()).context("--redis-url")?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .context("cannot connect to Redis")?;
        Ok(move |request: Request<_>| {
            let conn = conn.clone();
            let key = route(request.method(), request.uri().path());
            async move {
                match key {
                    Ok(key) => count(conn, key).await,
                    Err((status, reason)) => failure(status, reason),
                }
            }
        })
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("native-redis: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The key of `GET /counter/{key}`, or the status and reason to answer anything else with.
fn route(method: &Method, path: &str) -> Result<String, (StatusCode, &'static str)> {
    let key = path.strip_prefix("/counter/").unwrap_or_default();
    if key.is_empty() || key.contains('/') {
        return Err((StatusCode::NOT_FOUND, "no such route: try /counter/{key}"));
    }
    if method != Method::GET {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "GET only"));
    }
    Ok(key.to_owned())
}

/// The counter's value as JSON (0 when it is not set), or `503` with the reason.
async fn count(mut conn: MultiplexedConnection, key: String) -> Response<Body> {
    let name = format!("counter:{key}");
    let value = tokio::time::timeout(COMMAND_TIMEOUT, conn.get::<_, Option<i64>>(&name)).await;
    match value {
        Ok(Ok(value)) => json_response(
            StatusCode::OK,
            &json!({ "key": key, "value": value.unwrap_or_default() }),
        ),
        Ok(Err(err)) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Redis is unavailable: {err}"),
        ),
        Err(_elapsed) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Redis is unavailable: Redis did not answer within {COMMAND_TIMEOUT:?}"),
        ),
    }
}

fn failure(status: StatusCode, reason: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({ "error": reason.into() }))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    berth_bench::respond(status, "application/json", value.to_string())
}
