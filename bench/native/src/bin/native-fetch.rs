//! The `fetch` app compiled straight into a hyper server: per request, decode `?url=` from the
//! query (or take `--upstream` when there is none), GET it with hyper-util's pooled legacy
//! client (set up like Berth's outbound client: `TCP_NODELAY`, 90 s idle pool timeout) and
//! answer its first 20 bytes, reading no more chunks than it needs and giving up after 10 s, as
//! the app does.
//!
//! Run with: `cargo run --release -p berth-bench --bin native-fetch -- --listen 127.0.0.1:8082`,
//! then `curl 'http://127.0.0.1:8082/fetch?url=http%3A%2F%2F127.0.0.1%3A8000%2Fsmall.txt'`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// A native hyper server that answers with the first 20 bytes of an upstream.
#[derive(Debug, Parser)]
struct Args {
    /// The address to serve HTTP/1.1 and HTTP/2 cleartext on.
    #[arg(long, default_value = "127.0.0.1:8082")]
    listen: SocketAddr,
    /// The URL to GET for requests without `?url=` (plain HTTP).
    #[arg(long)]
    upstream: Option<Uri>,
}

type Pooled = Client<HttpConnector, Empty<Bytes>>;

/// How many bytes of the upstream body to answer with.
const HEAD: usize = 20;

fn main() -> ExitCode {
    let args = Args::parse();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Pooled = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector);
    let upstream = args.upstream;
    let served = berth_bench::serve(args.listen, move |request| {
        let client = client.clone();
        // The app's `req.query_param("url")`, then the URL parsed as the host parses it.
        let query = request.uri().query().unwrap_or("");
        let param = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "url");
        let upstream = match param {
            Some((_, url)) => Uri::try_from(url.into_owned()).ok(),
            None => upstream.clone(),
        };
        async move {
            let Some(upstream) = upstream else {
                return berth_bench::respond(
                    StatusCode::BAD_REQUEST,
                    "text/plain; charset=utf-8",
                    "missing or invalid ?url= parameter\n",
                );
            };
            let fetched = tokio::time::timeout(
                Duration::from_secs(10),
                first_bytes(&client, upstream, HEAD),
            )
            .await;
            match fetched {
                Ok(Ok(head)) => {
                    berth_bench::respond(StatusCode::OK, "application/octet-stream", head)
                }
                Ok(Err(err)) => berth_bench::respond(
                    StatusCode::BAD_GATEWAY,
                    "text/plain; charset=utf-8",
                    format!("upstream failed: {err:#}\n"),
                ),
                Err(_elapsed) => berth_bench::respond(
                    StatusCode::GATEWAY_TIMEOUT,
                    "text/plain; charset=utf-8",
                    "upstream timed out after 10 s\n",
                ),
            }
        }
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("native-fetch: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the first `n` bytes of `url`'s body (fewer if it is shorter), then stops.
async fn first_bytes(client: &Pooled, url: Uri, n: usize) -> anyhow::Result<Vec<u8>> {
    let request = Request::get(url).body(Empty::new())?;
    let mut body = client.request(request).await?.into_body();
    let mut head = Vec::with_capacity(n);
    while head.len() < n {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame?.into_data() {
            let wanted = (n - head.len()).min(data.len());
            head.extend_from_slice(&data[..wanted]);
        }
    }
    Ok(head)
}
