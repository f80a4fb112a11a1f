//! Limits that protect the server from slow, large and numerous clients, checked over raw
//! sockets so that the test controls every byte and sees exactly when the server hangs up:
//! the header read timeout (slow loris), the header size (431), the body size (413, globally
//! and per app, declared or chunked), the request timeout (504), the keep-alive idle timeout,
//! and the connection limit (a flood is parked in the backlog; the process survives).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Berth, Req, assert_about, get, try_send};

/// Upper bound for one raw exchange with the server.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A response read off a raw socket.
#[derive(Debug)]
struct RawReply {
    /// The status code from the status line.
    status: u16,
    /// The head (status line and headers), lower-cased, for header checks.
    head: String,
    /// The body, as far as it was read.
    body: String,
}

impl RawReply {
    /// Whether the head has the header line `name: value` (both lower case).
    fn has_header(&self, name: &str, value: &str) -> bool {
        self.head
            .lines()
            .any(|line| line.trim_end() == format!("{name}: {value}"))
    }
}

/// Parses a complete response out of `bytes`, if it holds one: a head and, when it declares a
/// `content-length`, that many body bytes; a chunked body up to its last chunk; otherwise
/// whatever follows the head (read until the server closed).
fn parse_reply(bytes: &[u8], closed: bool) -> Option<RawReply> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let rest = &bytes[end..];
    let length = head.lines().find_map(|line| {
        line.strip_prefix("content-length:")
            .and_then(|value| value.trim().parse::<usize>().ok())
    });
    let body = match length {
        Some(length) if rest.len() >= length => &rest[..length],
        Some(_) => return None,
        None if head.contains("transfer-encoding: chunked") => {
            if !rest.ends_with(b"0\r\n\r\n") && !closed {
                return None;
            }
            rest
        }
        None if closed => rest,
        None => return None,
    };
    Some(RawReply {
        status,
        head,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// Reads one response from `stream` (the server may keep the connection open afterwards).
/// A reset after the response arrived counts as the end of the response: a server that refuses
/// a body without reading it closes with unread bytes, which the kernel turns into a reset.
async fn read_reply(stream: &mut TcpStream) -> Result<RawReply, String> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return parse_reply(&bytes, true).ok_or("closed"),
                Ok(n) => {
                    bytes.extend_from_slice(&buf[..n]);
                    if let Some(reply) = parse_reply(&bytes, false) {
                        return Ok(reply);
                    }
                }
                Err(_) => return parse_reply(&bytes, true).ok_or("reset"),
            }
        }
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, read).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(how)) => Err(format!(
            "connection {how} before a complete response; got {:?}",
            String::from_utf8_lossy(&bytes)
        )),
        Err(_) => Err(format!(
            "no complete response within {EXCHANGE_TIMEOUT:?}; got {:?}",
            String::from_utf8_lossy(&bytes)
        )),
    }
}

/// Connects, writes `request` (ignoring a write failure: the server may answer and close
/// before it has read everything), and reads one response.
async fn exchange(addr: SocketAddr, request: &[u8]) -> RawReply {
    let mut stream = TcpStream::connect(addr).await.expect("connect to berth");
    if let Err(err) = stream.write_all(request).await {
        eprintln!("writing the request failed (the server may have answered early): {err}");
    }
    read_reply(&mut stream)
        .await
        .unwrap_or_else(|err| panic!("{err}"))
}

/// Waits until the server closes `stream` (a read returns end-of-stream or fails); returns how
/// long that took, or `None` if it is still open after `limit`. Data the server sends first is
/// returned too.
async fn wait_closed(stream: &mut TcpStream, limit: Duration) -> (Option<Duration>, Vec<u8>) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (closed.ok().map(|()| started.elapsed()), seen)
}

/// A `POST` of `body` with `Content-Length`, asking the server to close afterwards.
fn post_with_length(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: berth\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A chunked `POST` of `chunks` chunks of `size` bytes each, asking the server to close.
fn post_chunked(path: &str, chunks: usize, size: usize) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: berth\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..chunks {
        request.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        request.extend(std::iter::repeat_n(b'x', size));
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request
}

/// How many stderr lines contain `needle`.
fn count_log_lines(berth: &Berth, needle: &str) -> usize {
    berth
        .stderr_lines()
        .iter()
        .filter(|line| line.contains(needle))
        .count()
}

/// Waits (at most 5 s) until `expected` stderr lines contain `needle`; returns the count.
async fn wait_log_count(berth: &Berth, needle: &str, expected: usize) -> usize {
    for _ in 0..100 {
        if count_log_lines(berth, needle) >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let count = count_log_lines(berth, needle);
    assert_eq!(count, expected, "stderr lines containing {needle:?}");
    count
}

/// The line testkit's `/echo-body` logs when the app starts reading a body.
const ECHO_BODY_RAN: &str = "echo-body: reading the request body";

#[tokio::test]
async fn a_slow_loris_is_cut_off_at_the_header_timeout_while_others_are_served() {
    let berth = Berth::builder()
        .app("fixture_testkit")
        .args(&["--header-read-timeout", "1"])
        .start();
    let addr = berth.addr();

    // One byte every 300 ms of a head that never ends (its blank line is never sent): bounded
    // by the head's length, 40 bytes, so at most 12 s.
    let loris = tokio::spawn(async move {
        let head = b"GET /testkit/ok HTTP/1.1\r\nHost: loris\r\nX-Slow: aaaaaaaa";
        let mut stream = TcpStream::connect(addr).await.expect("connect to berth");
        let started = Instant::now();
        let (mut reader, mut writer) = stream.split();
        let mut ticker = tokio::time::interval(Duration::from_millis(300));
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        let mut sent = 0;
        let closed = loop {
            tokio::select! {
                read = reader.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break Some(started.elapsed()),
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                _ = ticker.tick() => {
                    if sent == head.len() {
                        break None;
                    }
                    if writer.write_all(&head[sent..=sent]).await.is_err() {
                        break Some(started.elapsed());
                    }
                    sent += 1;
                }
            }
        };
        (closed, sent, String::from_utf8_lossy(&answer).into_owned())
    });

    // Meanwhile, a normal client keeps being served (at most 100 requests, 100 ms apart).
    let mut served = 0;
    for _ in 0..100 {
        if loris.is_finished() {
            break;
        }
        let started = Instant::now();
        let reply = get(&berth.url("/testkit/ok")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "a normal request took {:?} while the slow loris was connected",
            started.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (closed, sent, answer) = loris.await.expect("slow-loris task");
    eprintln!("slow loris: closed after {closed:?}, {sent} bytes sent, answer {answer:?}");
    let closed = closed.unwrap_or_else(|| {
        panic!("the slow loris sent its {sent} bytes over 12 s and was never disconnected")
    });
    assert_about("the slow loris was disconnected", closed, 0.8..=2.5);
    assert!(
        !answer.contains(" 200 "),
        "the slow loris' request must not have been served: {answer:?}"
    );
    assert!(
        served >= 3,
        "only {served} normal requests were served while the slow loris was connected"
    );
}

#[tokio::test]
async fn an_oversized_header_gets_431_and_a_large_one_under_the_limit_is_served() {
    let berth = Berth::with_apps(&["fixture_testkit"]);
    let request = |value_len: usize| {
        format!(
            "GET /testkit/ok HTTP/1.1\r\nHost: berth\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(value_len)
        )
    };

    // Under the default 64 KiB limit: served.
    let reply = exchange(berth.addr(), request(32 * 1024).as_bytes()).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "ok\n"),
        "{reply:?}"
    );

    // A 100 KiB header value: 431, from hyper, before the app is involved.
    let reply = exchange(berth.addr(), request(100 * 1024).as_bytes()).await;
    assert_eq!(reply.status, 431, "{reply:?}");

    // The same over HTTP/2 (the limit is the header list size there).
    let big = "a".repeat(100 * 1024);
    let url = berth.url("/testkit/ok");
    let headers = [("x-big", big.as_str())];
    let h2 = try_send(Req {
        headers: &headers,
        ..Req::get(&url).proto(crate::harness::Proto::Http2)
    })
    .await;
    match h2 {
        Ok(reply) => assert_eq!(reply.status, 431, "HTTP/2: {}", reply.text()),
        // h2 may also refuse the stream outright; the request must not succeed.
        Err(err) => eprintln!("HTTP/2 with a 100 KiB header: request refused: {err}"),
    }

    // The server keeps serving.
    let reply = get(&berth.url("/testkit/ok")).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_declared_or_chunked() {
    let berth = Berth::builder()
        .app("fixture_testkit")
        .args(&["--max-body-size", "1KiB", "--access-log"])
        .start();
    let addr = berth.addr();

    // At the limit: read whole by the app.
    let reply = exchange(addr, &post_with_length("/testkit/echo-body", &[b'x'; 1024])).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "read 1024 bytes\n"),
        "{reply:?}"
    );
    // Chunked, under the limit: likewise.
    let reply = exchange(addr, &post_chunked("/testkit/echo-body", 2, 500)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "read 1000 bytes\n"),
        "{reply:?}"
    );
    let ran_before = wait_log_count(&berth, ECHO_BODY_RAN, 2).await;

    // A declared length over the limit: 413 before the app runs.
    let reply = exchange(addr, &post_with_length("/testkit/echo-body", &[b'x'; 2048])).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(
        reply.body.contains("larger than the limit of 1024 bytes"),
        "{reply:?}"
    );
    // A declared length of 10 GiB with no body sent at all: answered at once, nothing is read.
    let head = "POST /testkit/echo-body HTTP/1.1\r\nHost: berth\r\n\
                Content-Length: 10737418240\r\n\r\n";
    let started = Instant::now();
    let reply = exchange(addr, head.as_bytes()).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the 413 took {:?}",
        started.elapsed()
    );
    // Neither reached the app (its request log lines are written at once; give a late line a
    // moment to show up anyway).
    berth
        .wait_for_log(&["status=413"], Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        count_log_lines(&berth, ECHO_BODY_RAN),
        ran_before,
        "the app must not run for a body whose declared length is over the limit"
    );

    // Chunked over the limit (4 x 512 bytes): the app's body stream fails past 1 KiB, and
    // the host answers 413 and closes, whatever the app made of the error (testkit says 400).
    let reply = exchange(addr, &post_chunked("/testkit/echo-body", 4, 512)).await;
    assert_eq!(reply.status, 413, "{reply:?}");
    assert!(reply.has_header("connection", "close"), "{reply:?}");

    // The server keeps serving.
    let reply = exchange(addr, &post_with_length("/testkit/echo-body", b"small")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "read 5 bytes\n"));
}

#[tokio::test]
async fn an_apps_own_max_body_size_overrides_the_global_one() {
    let berth = Berth::builder()
        .app("fixture_testkit")
        .app("echo")
        .config(
            "max_body_size = \"1KiB\"\n\
             [apps.testkit]\n\
             max_body_size = \"4KiB\"\n",
        )
        .start();
    let addr = berth.addr();

    let reply = exchange(addr, &post_with_length("/testkit/echo-body", &[b'x'; 3000])).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "read 3000 bytes\n"),
        "testkit's own 4 KiB limit applies: {reply:?}"
    );
    let reply = exchange(addr, &post_with_length("/testkit/echo-body", &[b'x'; 5000])).await;
    assert_eq!(reply.status, 413, "over testkit's 4 KiB: {reply:?}");
    assert!(reply.body.contains("4096 bytes"), "{reply:?}");

    // `echo` has no limit of its own: the global 1 KiB applies.
    let reply = exchange(addr, &post_with_length("/echo", &[b'x'; 3000])).await;
    assert_eq!(
        reply.status, 413,
        "echo has the global 1 KiB limit: {reply:?}"
    );
    assert!(reply.body.contains("1024 bytes"), "{reply:?}");
    let reply = exchange(addr, &post_with_length("/echo", &[b'x'; 1000])).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn an_app_slower_than_the_request_timeout_gets_504_at_the_timeout() {
    let berth = Berth::builder()
        .app("fixture_testkit")
        .args(&["--request-timeout", "1"])
        .start();
    let started = Instant::now();
    let reply = get(&berth.url("/testkit/sleep?ms=3000")).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_about("the 504 came", elapsed, 0.8..=2.5);
    berth
        .wait_for_log(
            &["testkit", "did not answer within 1s"],
            Duration::from_secs(5),
        )
        .await;
    // A quick request on the same server is unaffected.
    let reply = get(&berth.url("/testkit/sleep?ms=10")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_a_slow_request_is_not() {
    let berth = Berth::builder()
        .app("fixture_testkit")
        .args(&["--keepalive-timeout", "1"])
        .start();
    let addr = berth.addr();

    // A slow request on its own keep-alive connection, running while the other one idles.
    let slow = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect to berth");
        let started = Instant::now();
        stream
            .write_all(b"GET /testkit/sleep?ms=2000 HTTP/1.1\r\nHost: berth\r\n\r\n")
            .await
            .expect("write the slow request");
        let reply = read_reply(&mut stream).await;
        let elapsed = started.elapsed();
        // The connection is still usable afterwards.
        stream
            .write_all(b"GET /testkit/ok HTTP/1.1\r\nHost: berth\r\n\r\n")
            .await
            .expect("write the second request");
        let second = read_reply(&mut stream).await;
        (reply, elapsed, second)
    });

    let mut stream = TcpStream::connect(addr).await.expect("connect to berth");
    stream
        .write_all(b"GET /testkit/ok HTTP/1.1\r\nHost: berth\r\n\r\n")
        .await
        .expect("write the request");
    let reply = read_reply(&mut stream).await.expect("a response");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "ok\n"),
        "{reply:?}"
    );
    let (closed, seen) = wait_closed(&mut stream, Duration::from_secs(5)).await;
    let closed = closed.expect("the idle keep-alive connection was still open after 5 s");
    assert_about("the idle connection was closed", closed, 0.7..=2.5);
    assert!(seen.is_empty(), "unexpected bytes: {seen:?}");

    let (reply, elapsed, second) = slow.await.expect("slow request task");
    let reply = reply.expect("the slow request completes on its keep-alive connection");
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "slept 2000 ms\n"),
        "{reply:?}"
    );
    assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
    let second = second.expect("a second request on the same connection");
    assert_eq!((second.status, second.body.as_str()), (200, "ok\n"));
}

/// The header read timeout is for a request's head; between requests the keep-alive timeout
/// decides. (hyper starts its header timer as soon as it waits for the next head, so without
/// care an idle connection is cut at the header timeout, however long the keep-alive timeout.)
#[tokio::test]
async fn the_keep_alive_timeout_governs_idle_connections_not_the_header_timeout() {
    let berth = Berth::builder()
        .app("fixture_testkit")
        .args(&["--header-read-timeout", "1", "--keepalive-timeout", "4"])
        .start();
    let mut stream = TcpStream::connect(berth.addr())
        .await
        .expect("connect to berth");
    stream
        .write_all(b"GET /testkit/ok HTTP/1.1\r\nHost: berth\r\n\r\n")
        .await
        .expect("write the request");
    let reply = read_reply(&mut stream).await.expect("a response");
    assert_eq!(reply.status, 200, "{reply:?}");
    let (closed, _) = wait_closed(&mut stream, Duration::from_secs(7)).await;
    let closed = closed.expect("the idle keep-alive connection was still open after 7 s");
    assert_about(
        "the idle connection (keep-alive timeout 4 s, header timeout 1 s) was closed",
        closed,
        3.5..=6.0,
    );
}

#[tokio::test]
async fn a_connection_flood_waits_in_the_backlog_and_service_resumes() {
    let mut berth = Berth::builder()
        .app("fixture_testkit")
        // Long enough that held connections stay open for the whole test.
        .args(&[
            "--max-connections",
            "8",
            "--keepalive-timeout",
            "60",
            "--header-read-timeout",
            "60",
        ])
        .start();
    let addr = berth.addr();
    let ok = b"GET /testkit/ok HTTP/1.1\r\nHost: berth\r\n\r\n";

    // Eight kept-alive connections, each served once: all eight slots are taken.
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(addr).await.expect("connect to berth");
        stream.write_all(ok).await.expect("write");
        let reply = read_reply(&mut stream).await.expect("a response");
        assert_eq!(reply.status, 200, "{reply:?}");
        held.push(stream);
    }

    // A ninth client connects (the kernel completes the handshake) but is not served...
    let mut ninth = TcpStream::connect(addr).await.expect("connect to berth");
    ninth.write_all(ok).await.expect("write");
    let mut buf = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_secs(1), ninth.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "the ninth connection was served (or closed) while 8 were open: {early:?}"
    );
    // ...until one of the eight closes.
    drop(held.pop());
    let started = Instant::now();
    let reply = read_reply(&mut ninth)
        .await
        .expect("the ninth client is served once a slot is free");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the ninth client waited {:?} after a slot was freed",
        started.elapsed()
    );
    held.push(ninth);

    // A flood of 200 more connections, half of them starting a request: they wait in the
    // backlog; the process survives and its admin listener answers.
    let mut flood = Vec::new();
    for i in 0..200 {
        let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr));
        match connect.await {
            Ok(Ok(mut stream)) => {
                if i % 2 == 0 {
                    let _ = stream.write_all(b"GET /testkit/ok HTTP/1.1\r\n").await;
                }
                flood.push(stream);
            }
            Ok(Err(err)) => eprintln!("flood connection {i} failed: {err}"),
            Err(_) => eprintln!("flood connection {i} timed out"),
        }
    }
    eprintln!("flood: {} of 200 connections made", flood.len());
    assert!(flood.len() >= 100, "only {} connections made", flood.len());
    assert!(berth.is_running(), "berth exited during the flood");
    let health = get(&berth.admin_url("/healthz")).await;
    assert_eq!(health.status, 200, "{}", health.text());

    // Everyone leaves; normal service resumes.
    drop(flood);
    drop(held);
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(10), get(&berth.url("/testkit/ok")))
        .await
        .expect("served within 10 s of the flood ending");
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "ok\n")
    );
    eprintln!("served again {:?} after the flood ended", started.elapsed());
    // Several clients at once again.
    let replies = futures_util::future::join_all((0..16).map(|_| {
        let url = berth.url("/testkit/ok");
        async move { tokio::time::timeout(EXCHANGE_TIMEOUT, get(&url)).await }
    }))
    .await;
    for reply in replies {
        assert_eq!(reply.expect("served").status, 200);
    }
    assert!(berth.is_running(), "berth exited after the flood");
    let health = get(&berth.admin_url("/healthz")).await;
    assert_eq!(health.status, 200);
}
