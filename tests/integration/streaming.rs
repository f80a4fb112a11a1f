//! Streaming in constant memory, through the `upload`, `proxy` and `clock` sample apps: a 1 GiB
//! upload and a 1 GiB proxied download while berth's resident memory is watched, server-sent
//! events that arrive over time, and an event stream that stops when its client goes away.
//!
//! The big bodies are generated chunk by chunk as they are sent ([`generated`]) and hashed on
//! both ends, so neither the test nor berth ever holds one whole. Berth's memory is read from
//! `/proc/<pid>/status` by an [`RssMonitor`].

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::harness::{Berth, Proto, Req, encode, get, proc_status_kib, send};
use crate::upstream::{StreamingUpstream, Upstream, closed_port_url};

/// The size of the big upload and of the big proxied download.
const BIG: u64 = 1 << 30;

/// The size of each generated chunk (the last one may be shorter).
const CHUNK: usize = 64 * 1024;

/// How much berth's resident memory may grow over its idle size during a big transfer.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// How often the [`RssMonitor`] samples `VmRSS`.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// Upper bound for one big transfer: a debug build of berth moved 1 GiB in 1 to 4 s (about
/// 280 to 900 MiB/s) on a 2-core machine with the whole suite running.
const BIG_TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);

/// Upper bound for reading the first events of the clock.
const EVENTS_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts berth with `apps`, allowed to fetch from anywhere (the proxy tests' upstreams are on
/// 127.0.0.1; outbound requests are denied by default).
fn berth_with_outbound(apps: &[&str]) -> Berth {
    apps.iter()
        .fold(Berth::builder(), |builder, app| builder.app(app))
        .args(&["--allow-outbound", "*"])
        .start()
}

// ---------------------------------------------------------------------------------------------
// Generated bodies and hashing
// ---------------------------------------------------------------------------------------------

/// The state of a [`generated`] stream.
struct Generator {
    len: u64,
    produced: u64,
    index: u64,
    pattern: Bytes,
    hasher: Sha256,
    digest: Option<mpsc::UnboundedSender<String>>,
}

/// `len` bytes as a stream of [`CHUNK`]-byte chunks, each made when it is polled. Chunk `i` is a
/// fixed pattern with `i` (little-endian) in its first 8 bytes, so a lost, repeated or
/// reordered chunk changes the hash. Along with the last chunk, the SHA-256 of everything
/// produced is sent on `digest` as lowercase hex.
fn generated(
    len: u64,
    digest: mpsc::UnboundedSender<String>,
) -> impl Stream<Item = Bytes> + Send + Unpin + 'static {
    let pattern: Vec<u8> = (0..CHUNK).map(|i| (i * 7 % 251) as u8).collect();
    let state = Generator {
        len,
        produced: 0,
        index: 0,
        pattern: Bytes::from(pattern),
        hasher: Sha256::new(),
        digest: Some(digest),
    };
    Box::pin(stream::unfold(state, |mut state| async move {
        let left = state.len - state.produced;
        if left == 0 {
            return None;
        }
        let size = usize::try_from(left).map_or(CHUNK, |left| left.min(CHUNK));
        let mut chunk = BytesMut::from(&state.pattern[..size]);
        let tag = state.index.to_le_bytes();
        let tagged = tag.len().min(size);
        chunk[..tagged].copy_from_slice(&tag[..tagged]);
        let chunk = chunk.freeze();
        state.hasher.update(&chunk);
        state.produced += size as u64;
        state.index += 1;
        // Reported with the last chunk: a receiver that knows the length (hyper with a
        // `content-length`) stops polling once it has that many bytes.
        if state.produced == state.len {
            if let Some(digest) = state.digest.take() {
                let _ = digest.send(format!("{:x}", state.hasher.finalize_reset()));
            }
        }
        Some((chunk, state))
    }))
}

/// A [`generated`] stream as a request or response body.
fn generated_body(
    len: u64,
    digest: mpsc::UnboundedSender<String>,
) -> StreamBody<impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Unpin + 'static> {
    StreamBody::new(generated(len, digest).map(|chunk| Ok(Frame::data(chunk))))
}

/// Reads `body` to its end frame by frame, counting and hashing the data; returns the count and
/// the SHA-256 as lowercase hex.
async fn count_and_hash(mut body: Incoming) -> Result<(u64, String), String> {
    let mut hasher = Sha256::new();
    let mut count = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| format!("body failed after {count} bytes: {err:?}"))?;
        if let Ok(data) = frame.into_data() {
            hasher.update(&data);
            count += data.len() as u64;
        }
    }
    Ok((count, format!("{:x}", hasher.finalize())))
}

/// Receives what a [`generated`] stream reported when it finished.
async fn generator_digest(digest: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(5), digest.recv())
        .await
        .ok()
        .flatten()
        .expect("the generated body was produced to its end")
}

/// `bytes` in MiB, for messages.
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------------------------
// Resident memory
// ---------------------------------------------------------------------------------------------

/// Watches a process's resident memory from its idle size: resets its high-water mark
/// (`VmHWM`) where the kernel allows it, records `VmRSS` as the baseline, then samples `VmRSS`
/// every [`RSS_SAMPLE_EVERY`] on a thread until [`RssMonitor::finish`].
struct RssMonitor {
    pid: u32,
    baseline_kib: u64,
    /// Whether `VmHWM` was reset at the start (so it measures the transfer, not the startup).
    hwm_reset: bool,
    stop: Arc<AtomicBool>,
    /// Returns the highest sample and the number of samples.
    sampler: Option<JoinHandle<(u64, u32)>>,
}

/// What an [`RssMonitor`] saw.
#[derive(Debug)]
struct RssReport {
    baseline_kib: u64,
    sampled_peak_kib: u64,
    samples: u32,
    hwm_kib: u64,
    hwm_reset: bool,
}

impl RssMonitor {
    fn start(pid: u32) -> Self {
        // Writing 5 to clear_refs resets the peak RSS to the current RSS (Linux 4.0+).
        let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let baseline_kib = proc_status_kib(pid, "VmRSS");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let sampler = std::thread::spawn(move || {
            let (mut peak, mut samples) = (0, 0);
            while !stopped.load(Ordering::Relaxed) {
                peak = peak.max(proc_status_kib(pid, "VmRSS"));
                samples += 1;
                std::thread::sleep(RSS_SAMPLE_EVERY);
            }
            (peak, samples)
        });
        RssMonitor {
            pid,
            baseline_kib,
            hwm_reset,
            stop,
            sampler: Some(sampler),
        }
    }

    fn finish(mut self) -> RssReport {
        self.stop.store(true, Ordering::Relaxed);
        let (sampled_peak_kib, samples) = self
            .sampler
            .take()
            .expect("finish is called once")
            .join()
            .expect("the RSS sampler does not panic");
        RssReport {
            baseline_kib: self.baseline_kib,
            sampled_peak_kib,
            samples,
            hwm_kib: proc_status_kib(self.pid, "VmHWM"),
            hwm_reset: self.hwm_reset,
        }
    }
}

impl Drop for RssMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl RssReport {
    /// The peak resident size during the transfer: `VmHWM` when it was reset at the start
    /// (it then also catches peaks between samples), else the highest sample.
    fn peak_kib(&self) -> u64 {
        if self.hwm_reset {
            self.hwm_kib.max(self.sampled_peak_kib)
        } else {
            self.sampled_peak_kib
        }
    }

    fn growth_kib(&self) -> u64 {
        self.peak_kib().saturating_sub(self.baseline_kib)
    }

    fn describe(&self) -> String {
        format!(
            "berth RSS: idle {} KiB, peak {} KiB (VmHWM {} KiB{}, highest of {} samples {} KiB): \
             growth {} KiB (limit {RSS_GROWTH_LIMIT_KIB} KiB)",
            self.baseline_kib,
            self.peak_kib(),
            self.hwm_kib,
            if self.hwm_reset {
                ", reset at the start"
            } else {
                ", not resettable: includes startup, ignored"
            },
            self.samples,
            self.sampled_peak_kib,
            self.growth_kib(),
        )
    }

    fn assert_bounded(&self) {
        assert!(
            self.growth_kib() < RSS_GROWTH_LIMIT_KIB,
            "berth's memory grew too much: {}",
            self.describe()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// upload
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn upload_counts_and_hashes_over_http1_and_http2() {
    let berth = Berth::with_apps(&["upload"]);
    let url = berth.url("/upload");
    for proto in [Proto::Http1, Proto::Http2] {
        let reply = send(Req {
            proto,
            method: Method::PUT,
            url: &url,
            headers: &[],
            body: b"abc",
        })
        .await;
        assert_eq!(reply.status, 200, "{proto:?}: {}", reply.text());
        assert_eq!(reply.content_type(), "application/json", "{proto:?}");
        let got = reply.json();
        assert_eq!(got["bytes"], 3, "{proto:?}: {got}");
        assert_eq!(
            got["sha256"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "{proto:?}: {got}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_chunked_upload_is_hashed_in_constant_memory() {
    // The default request body limit is far below 1 GiB.
    let berth = Berth::builder()
        .app("upload")
        .args(&["--max-body-size", &BIG.to_string()])
        .start();
    let (digest_tx, mut digest_rx) = mpsc::unbounded_channel();
    // No length is known in advance: hyper sends the body with `transfer-encoding: chunked`.
    let request = Request::builder()
        .method(Method::POST)
        .uri(berth.url("/upload"))
        .body(generated_body(BIG, digest_tx))
        .expect("valid request");
    let client = Client::builder(TokioExecutor::new()).build_http();

    let monitor = RssMonitor::start(berth.pid());
    let started = Instant::now();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|err| format!("request failed: {err:?}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|err| format!("response body failed: {err:?}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(BIG_TRANSFER_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer within {BIG_TRANSFER_TIMEOUT:?}"))
        .unwrap_or_else(|err| panic!("upload of {BIG} bytes: {err}"));
    let took = started.elapsed();
    let rss = monitor.finish();

    eprintln!(
        "upload: {BIG} bytes in {took:?} ({:.0} MiB/s); {}",
        mib(BIG) / took.as_secs_f64(),
        rss.describe()
    );
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::OK, "{text}");
    let got: Value = serde_json::from_slice(&body).unwrap_or_else(|err| panic!("{err}: {text}"));
    assert_eq!(got["bytes"], BIG, "{got}");
    assert_eq!(
        got["sha256"],
        generator_digest(&mut digest_rx).await,
        "{got}"
    );
    rss.assert_bounded();
}

// ---------------------------------------------------------------------------------------------
// proxy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn proxy_passes_status_and_body_through_and_forwards_posts() {
    let upstream = Upstream::start();
    let berth = berth_with_outbound(&["proxy", "echo"]);

    let url = berth.url(&format!("/proxy?url={}", encode(&upstream.url("/small"))));
    let reply = get(&url).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.body, crate::upstream::small_body());

    let url = berth.url(&format!(
        "/proxy?url={}",
        encode(&upstream.url("/status?code=418"))
    ));
    let reply = get(&url).await;
    assert_eq!(reply.status, 418, "{}", reply.text());
    assert_eq!(reply.text(), "status 418\n");

    // Through the proxy to berth's own echo app: method, content type and body are forwarded.
    let url = berth.url(&format!(
        "/proxy?url={}",
        encode(&berth.url("/echo/items?x=1"))
    ));
    let reply = send(Req {
        proto: Proto::Http1,
        method: Method::POST,
        url: &url,
        headers: &[("content-type", "text/plain")],
        body: b"posted through the proxy",
    })
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type(), "application/json");
    let got = reply.json();
    assert_eq!(got["method"], "POST", "{got}");
    assert_eq!(got["path"], "/items", "{got}");
    assert_eq!(got["body"], "posted through the proxy", "{got}");
    let headers = got["headers"].as_array().expect("headers array");
    assert!(
        headers.contains(&serde_json::json!(["content-type", "text/plain"])),
        "{got}"
    );
}

#[tokio::test]
async fn proxy_answers_502_when_the_upstream_fails() {
    let berth = berth_with_outbound(&["proxy"]);
    let url = berth.url(&format!("/proxy?url={}", encode(&closed_port_url("/"))));
    let reply = get(&url).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply.text().starts_with("upstream failed: "),
        "{}",
        reply.text()
    );
    let reply = get(&berth.url("/proxy")).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upstream_response_streams_through_proxy_in_constant_memory() {
    let (digest_tx, mut digest_rx) = mpsc::unbounded_channel();
    let upstream = StreamingUpstream::start(BIG, move || generated(BIG, digest_tx.clone()));
    let berth = berth_with_outbound(&["proxy"]);
    let url = berth.url(&format!("/proxy?url={}", encode(&upstream.url("/big"))));
    let request = Request::get(url)
        .body(Empty::<Bytes>::new())
        .expect("valid request");
    let client = Client::builder(TokioExecutor::new()).build_http();

    let monitor = RssMonitor::start(berth.pid());
    let started = Instant::now();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|err| format!("request failed: {err:?}"))?;
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::OK {
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            return Err(format!("status {}: {text}", parts.status));
        }
        let (count, sha256) = count_and_hash(body).await?;
        Ok((parts.headers, count, sha256))
    };
    let (headers, count, sha256) = tokio::time::timeout(BIG_TRANSFER_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("no complete response within {BIG_TRANSFER_TIMEOUT:?}"))
        .unwrap_or_else(|err| panic!("GET of {BIG} bytes through the proxy: {err}"));
    let took = started.elapsed();
    let rss = monitor.finish();

    eprintln!(
        "proxy: {count} bytes in {took:?} ({:.0} MiB/s); {}",
        mib(count) / took.as_secs_f64(),
        rss.describe()
    );
    assert_eq!(count, BIG);
    assert_eq!(sha256, generator_digest(&mut digest_rx).await);
    assert_eq!(headers[header::CONTENT_LENGTH], BIG.to_string().as_str());
    assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
    rss.assert_bounded();
}

// ---------------------------------------------------------------------------------------------
// clock
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn clock_with_a_count_sends_that_many_events_and_ends() {
    let berth = Berth::with_apps(&["clock"]);
    let reply = get(&berth.url("/clock?interval_ms=50&count=3")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.content_type(), "text/event-stream");
    assert_eq!(reply.headers[header::CACHE_CONTROL], "no-cache");
    assert_eq!(
        reply.text(),
        "data: tick 1\n\ndata: tick 2\n\ndata: tick 3\n\n"
    );
    wait_for_clock_closed(
        &berth,
        "clock stream closed after 3 events",
        Duration::from_secs(5),
    )
    .await;
}

/// Waits for a stderr line with `message` that also names the app (`clock` elsewhere on the
/// line); returns it.
async fn wait_for_clock_closed(berth: &Berth, message: &str, timeout: Duration) -> String {
    let what = format!("contains {message:?} and the app name");
    let message = message.to_owned();
    berth
        .wait_for_line(&what, timeout, move |line| {
            line.contains(&message) && line.replace(&message, "").contains("clock")
        })
        .await
}

/// Reads `body` until `n` complete server-sent events (`...\n\n`) have arrived; returns each
/// event's text (without the blank line) and when it arrived.
async fn read_events(body: &mut Incoming, n: usize) -> Vec<(String, Instant)> {
    let mut events = Vec::new();
    let mut pending = Vec::new();
    while events.len() < n {
        let frame = body
            .frame()
            .await
            .unwrap_or_else(|| panic!("the event stream ended after {events:?}"))
            .unwrap_or_else(|err| panic!("the event stream failed after {events:?}: {err:?}"));
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let arrived = Instant::now();
        pending.extend_from_slice(&data);
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 2);
            events.push((event, arrived));
        }
    }
    events
}

#[tokio::test]
async fn clock_events_arrive_over_time_and_stop_when_the_client_leaves() {
    let berth = Berth::with_apps(&["clock"]);
    // One connection of our own, so that leaving means closing this socket.
    let stream = TcpStream::connect(berth.addr()).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    let connection = tokio::spawn(connection);
    let request = Request::get("/clock?interval_ms=1000")
        .header(header::HOST, berth.addr().to_string())
        .body(Empty::<Bytes>::new())
        .expect("valid request");
    let asked = Instant::now();
    let response = tokio::time::timeout(EVENTS_TIMEOUT, sender.send_request(request))
        .await
        .expect("response head in time")
        .expect("response head");
    let head_after = asked.elapsed();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    let events = tokio::time::timeout(EVENTS_TIMEOUT, read_events(&mut body, 3))
        .await
        .unwrap_or_else(|_| panic!("3 events within {EVENTS_TIMEOUT:?}"));

    let texts: Vec<&str> = events.iter().map(|(text, _)| text.as_str()).collect();
    assert_eq!(texts, ["data: tick 1", "data: tick 2", "data: tick 3"]);
    let offsets: Vec<Duration> = events.iter().map(|(_, at)| *at - asked).collect();
    eprintln!("clock: head after {head_after:?}, events after {offsets:?}");
    // One event a second, each as it happens: not all at once at the end.
    let spread = events[2].1 - events[0].1;
    assert!(
        spread >= Duration::from_millis(1500),
        "the 3rd event came {spread:?} after the 1st (events at {offsets:?})"
    );
    assert!(
        events[1].1 - events[0].1 >= Duration::from_millis(500),
        "events at {offsets:?}"
    );
    assert!(
        head_after < offsets[0],
        "the head ({head_after:?}) should come before the first event ({offsets:?})"
    );

    // Leave: close the connection in the middle of the stream.
    drop(body);
    drop(sender);
    connection.abort();
    let _ = connection.await;
    let left = Instant::now();
    let line = wait_for_clock_closed(
        &berth,
        "clock stream closed after",
        Duration::from_millis(1500),
    )
    .await;
    let noticed = left.elapsed();
    eprintln!("clock: the app noticed {noticed:?} after the client left: {line}");
    assert!(
        noticed <= Duration::from_millis(1100),
        "the app noticed {noticed:?} after the client left"
    );
    // Berth still serves.
    assert_eq!(get(&berth.url("/")).await.status, 200);
}

/// Reading an upstream response whole is capped by `outbound_max_buffered` (16 MiB by default,
/// per app in `berth.toml`), while streaming the same body through is not: `proxy` streams
/// 20 MiB, `testkit`'s `/fetch` (which reads the body whole) is refused past its cap and
/// succeeds once its cap is raised.
#[tokio::test]
async fn buffering_an_upstream_body_is_capped_but_streaming_it_is_not() {
    const SIZE: u64 = 20 << 20;
    let upstream = StreamingUpstream::start(SIZE, || {
        stream::iter((0..SIZE / CHUNK as u64).map(|_| Bytes::from(vec![b'x'; CHUNK])))
    });
    let url = encode(&upstream.url("/big"));

    let berth = berth_with_outbound(&["fixture_testkit", "proxy"]);
    let capped = get(&berth.url(&format!("/testkit/fetch?url={url}"))).await;
    assert_eq!(capped.status, 502, "{}", capped.text());
    assert!(
        capped
            .text()
            .contains("larger than the limit of 16777216 bytes"),
        "{}",
        capped.text()
    );
    let streamed = get(&berth.url(&format!("/proxy?url={url}"))).await;
    assert_eq!(streamed.status, 200);
    assert_eq!(streamed.body.len() as u64, SIZE);
    drop(berth);

    let raised = Berth::builder()
        .app("fixture_testkit")
        .config(
            "[apps.testkit]\noutbound_max_buffered = \"32MiB\"\nallowed_outbound_hosts = [\"*\"]\n",
        )
        .start();
    let reply = get(&raised.url(&format!("/testkit/fetch?url={url}"))).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "status 200\n")
    );
}
