//! A fan-out load client: opens `--n` connections at once, then, once every one is open (or
//! has failed), sends one HTTP/1.1 GET on each at the same instant and waits for all the
//! answers. Prints one JSON line:
//! `{"n","ok","failed","wall_s","connect_s","p50_ms","p99_ms","first_error"}`, where `wall_s`
//! runs from the first connect to the last answer, `connect_s` is the connect phase, and the
//! latencies run from the moment the requests were released to each complete response.
//!
//! Sockets are closed with `SO_LINGER` 0 (a reset), so that tens of thousands of runs' worth of
//! `TIME_WAIT` sockets do not pile up on the ephemeral ports. The open-file soft limit is raised
//! to the hard limit at start; the client needs one descriptor per connection.
//!
//! Run with: `cargo run --release -p berth-bench --bin fanout -- --url
//! 'http://127.0.0.1:8080/gather?sleep_ms=1000' --n 10000`. Exits 1 if any request failed.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Request, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Opens N connections at once and sends one request on each simultaneously.
#[derive(Debug, Parser)]
struct Args {
    /// The URL to GET on every connection (plain HTTP).
    #[arg(long)]
    url: Uri,
    /// How many connections (and requests).
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    /// Seconds for the whole run; a request not answered by then has failed.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

/// What every request needs.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("fanout: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the fan-out and prints its JSON line; `Ok(false)` when a request failed.
fn run(args: Args) -> anyhow::Result<bool> {
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(_soft, hard)| hard)
        .context("cannot read RLIMIT_NOFILE")?;
    let soft = rlimit::increase_nofile_limit(u64::MAX).context("cannot raise RLIMIT_NOFILE")?;
    eprintln!("fanout: open-file limit raised to {soft} (hard limit {hard})");
    if (args.n as u64).saturating_add(16) > soft {
        eprintln!(
            "fanout: warning: {} connections need more descriptors than the limit of {soft}",
            args.n
        );
    }
    if !args.timeout.is_finite() || args.timeout <= 0.0 {
        bail!("--timeout must be a positive number of seconds");
    }
    let target = target(&args.url)?;
    let runtime = berth_bench::runtime().context("cannot start the tokio runtime")?;
    let report = runtime.block_on(fan_out(
        target,
        args.n,
        Duration::from_secs_f64(args.timeout),
    ));
    println!("{}", report.json());
    Ok(report.failed == 0)
}

/// The address, `Host` header and path of `url`.
fn target(url: &Uri) -> anyhow::Result<Target> {
    if url.scheme_str() != Some("http") {
        bail!("only http:// URLs are supported, not {url}");
    }
    let authority = url.authority().context("the URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = (authority.host(), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    Ok(Target {
        addr,
        host: authority.as_str().to_owned(),
        path: url
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    })
}

/// The outcome of one fan-out.
#[derive(Debug)]
struct Report {
    n: usize,
    ok: usize,
    failed: usize,
    wall: Duration,
    connect: Duration,
    latencies_ms: Vec<f64>,
    first_error: Option<String>,
}

impl Report {
    fn json(&self) -> serde_json::Value {
        let round = |x: f64, places: i32| {
            let scale = 10f64.powi(places);
            (x * scale).round() / scale
        };
        serde_json::json!({
            "n": self.n,
            "ok": self.ok,
            "failed": self.failed,
            "wall_s": round(self.wall.as_secs_f64(), 3),
            "connect_s": round(self.connect.as_secs_f64(), 3),
            "p50_ms": round(berth_bench::percentile(&self.latencies_ms, 50.0), 2),
            "p99_ms": round(berth_bench::percentile(&self.latencies_ms, 99.0), 2),
            "first_error": self.first_error,
        })
    }
}

async fn fan_out(target: Target, n: usize, limit: Duration) -> Report {
    let started = Instant::now();
    let deadline = started + limit;
    // Each task reports once its connect is done (or failed), then waits for the release.
    let (connected_tx, mut connected_rx) = mpsc::unbounded_channel::<()>();
    let (release_tx, release_rx) = watch::channel(None::<Instant>);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let target = target.clone();
        let connected = connected_tx.clone();
        let release = release_rx.clone();
        tasks.spawn(async move {
            tokio::time::timeout_at(deadline, one_request(&target, connected, release))
                .await
                .unwrap_or_else(|_| Err("timed out".to_owned()))
        });
    }
    drop(connected_tx);
    let mut connected = 0;
    while connected < n {
        match tokio::time::timeout_at(deadline, connected_rx.recv()).await {
            Ok(Some(())) => connected += 1,
            Ok(None) | Err(_) => break,
        }
    }
    let connect = started.elapsed();
    // Nobody may be listening any more if every task has already failed.
    let _ = release_tx.send(Some(Instant::now()));

    let mut report = Report {
        n,
        ok: 0,
        failed: 0,
        wall: Duration::ZERO,
        connect,
        latencies_ms: Vec::with_capacity(n),
        first_error: None,
    };
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap_or_else(|err| Err(format!("task failed: {err}"))) {
            Ok(latency) => {
                report.ok += 1;
                report.latencies_ms.push(latency.as_secs_f64() * 1000.0);
            }
            Err(err) => {
                report.failed += 1;
                report.first_error.get_or_insert(err);
            }
        }
    }
    report.wall = started.elapsed();
    report.latencies_ms.sort_by(f64::total_cmp);
    report
}

/// Connects, says so on `connected`, waits for `release`, then sends one GET and reads the
/// whole response. Returns the time from the release to the end of the response.
async fn one_request(
    target: &Target,
    connected: mpsc::UnboundedSender<()>,
    mut release: watch::Receiver<Option<Instant>>,
) -> Result<Duration, String> {
    let stream = berth_bench::connect_reset(target.addr).await;
    // The receiver only goes away once the connect phase is over.
    let _ = connected.send(());
    let stream = stream.map_err(|err| format!("connect: {err}"))?;
    let released = release
        .wait_for(Option::is_some)
        .await
        .map_err(|_| "never released".to_owned())?
        .unwrap_or_else(Instant::now);

    let request = Request::get(target.path.as_str())
        .header(http::header::HOST, target.host.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|err| format!("request: {err}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| format!("handshake: {err}"))?;
    let mut connection = std::pin::pin!(connection);
    let mut exchange = std::pin::pin!(async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, hyper::Error>(status)
    });
    let status = tokio::select! {
        biased;
        status = &mut exchange => status,
        closed = &mut connection => match closed {
            // Closed cleanly by the server: the response may still be readable.
            Ok(()) => exchange.await,
            Err(err) => Err(err),
        },
    }
    .map_err(|err| format!("request: {err}"))?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    // Dropping the connection closes the socket with a reset (SO_LINGER 0).
    Ok(released.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_splits_the_url() {
        let url: Uri = "http://127.0.0.1:8080/gather?sleep_ms=1000"
            .parse()
            .expect("url");
        let target = target(&url).expect("target");
        assert_eq!(target.addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(target.host, "127.0.0.1:8080");
        assert_eq!(target.path, "/gather?sleep_ms=1000");
    }

    #[test]
    fn target_refuses_https() {
        let url: Uri = "https://127.0.0.1/".parse().expect("url");
        assert!(target(&url).is_err());
    }

    #[test]
    fn fan_out_against_a_local_server() {
        let runtime = berth_bench::runtime().expect("runtime");
        let report = runtime.block_on(async {
            let listener = berth_bench::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(berth_bench::respond(
                                http::StatusCode::OK,
                                "text/plain",
                                "hi",
                            ))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            let target = Target {
                addr,
                host: addr.to_string(),
                path: "/".into(),
            };
            fan_out(target, 50, Duration::from_secs(10)).await
        });
        assert_eq!((report.ok, report.failed), (50, 0), "{report:?}");
        assert_eq!(report.json()["n"], 50);
    }
}
