//! Failure handling and lifecycles, mostly through the `testkit` fixture: panics, app logs,
//! per-request logs, cancellation when the client goes away, and graceful shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Berth, Req, encode, get, try_send};
use crate::upstream::{HangEvent, HangServer, Upstream};

/// Asserts some stderr line contains `needle` and, elsewhere on the line, `also` (so that
/// `also` is not merely part of `needle`), and is not the panic hook's own
/// `thread '…' panicked at …` line.
async fn wait_for_log_with(berth: &Berth, needle: &str, also: &str) -> String {
    let what = format!("contains {needle:?} together with {also:?}");
    let (needle, also) = (needle.to_owned(), also.to_owned());
    berth
        .wait_for_line(&what, Duration::from_secs(5), move |line| {
            line.contains(&needle)
                && line.replace(&needle, "").contains(&also)
                && !line.contains("panicked at")
        })
        .await
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_and_the_host_keeps_serving() {
    let berth = Berth::with_apps(&["fixture_testkit"]);
    let ok = get(&berth.url("/testkit/ok")).await;
    assert_eq!((ok.status.as_u16(), ok.text().as_str()), (200, "ok\n"));

    let reply = get(&berth.url("/testkit/panic")).await;
    assert_eq!(reply.status, 500, "{}", reply.text());
    wait_for_log_with(&berth, "boom from testkit", "testkit").await;

    for _ in 0..3 {
        let ok = get(&berth.url("/testkit/ok")).await;
        assert_eq!((ok.status.as_u16(), ok.text().as_str()), (200, "ok\n"));
    }
}

#[tokio::test]
async fn a_panic_while_streaming_the_body_fails_only_that_response() {
    let berth = Berth::with_apps(&["fixture_testkit"]);
    match try_send(Req::get(&berth.url("/testkit/panic-body"))).await {
        // The usual outcome: the head was sent, then the body was aborted.
        Err(err) => eprintln!("panic-body: client saw an error, as expected: {err}"),
        // Also acceptable: a body cut short after the first chunk.
        Ok(reply) => {
            eprintln!("panic-body: client saw a complete response: {reply:?}");
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(reply.text(), "partial", "the body should stop at the panic");
        }
    }
    let ok = get(&berth.url("/testkit/ok")).await;
    assert_eq!((ok.status.as_u16(), ok.text().as_str()), (200, "ok\n"));
}

/// The SDK documents that a panic while streaming the body is logged by the host with the
/// app's name, like a panic in the handler.
#[tokio::test]
async fn a_panic_while_streaming_the_body_is_logged_with_the_app_name() {
    let berth = Berth::with_apps(&["fixture_testkit"]);
    let _ = try_send(Req::get(&berth.url("/testkit/panic-body"))).await;
    wait_for_log_with(&berth, "boom from testkit body", "testkit").await;
}

#[tokio::test]
async fn app_logs_reach_stderr_with_the_app_name() {
    let berth = Berth::with_apps(&["fixture_testkit"]);
    let reply = get(&berth.url("/testkit/log")).await;
    assert_eq!(reply.status, 200);
    wait_for_log_with(&berth, "hello from testkit log", "testkit").await;
}

#[tokio::test]
async fn testkit_fetch_reports_the_upstream_status() {
    let upstream = Upstream::start();
    let berth = Berth::with_apps(&["fixture_testkit"]);
    for (path, expected) in [
        ("/small", "status 200\n"),
        ("/status?code=418", "status 418\n"),
    ] {
        let url = berth.url(&format!(
            "/testkit/fetch?url={}",
            encode(&upstream.url(path))
        ));
        let reply = get(&url).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), expected);
    }
}

/// Sends `GET path` by hand on a raw connection to `addr`, waits until the app's outbound
/// request reaches `hang`, closes the connection, and asserts that `hang` sees its connection
/// closed soon after (the app's future was dropped, cancelling the outbound call).
async fn disconnect_cancels_the_outbound_call(berth: &Berth, hang: &mut HangServer, path: &str) {
    let mut client = TcpStream::connect(berth.addr()).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", berth.addr());
    client
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    assert_eq!(
        hang.next_event(Duration::from_secs(5)).await,
        Some(HangEvent::Request(0)),
        "the app's outbound request should reach the hang server"
    );
    let closed_at = Instant::now();
    drop(client);
    assert_eq!(
        hang.next_event(Duration::from_secs(5)).await,
        Some(HangEvent::Closed(0)),
        "closing the client connection should cancel the outbound request"
    );
    eprintln!(
        "upstream connection closed {:?} after the client left",
        closed_at.elapsed()
    );
    // The server is still fine.
    assert_eq!(get(&berth.url("/")).await.status, 200);
}

#[tokio::test]
async fn client_disconnect_cancels_the_apps_outbound_call() {
    let mut hang = HangServer::start();
    let berth = Berth::with_apps(&["fixture_testkit"]);
    let path = format!("/testkit/fetch?url={}", encode(&hang.url("/")));
    disconnect_cancels_the_outbound_call(&berth, &mut hang, &path).await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_fetch_apps_outbound_call() {
    let mut hang = HangServer::start();
    let berth = Berth::with_apps(&["fetch"]);
    let path = format!("/fetch/?url={}", encode(&hang.url("/")));
    disconnect_cancels_the_outbound_call(&berth, &mut hang, &path).await;
}

/// Opens a new connection and asks for `/hello`; waits at most `timeout` for anything back.
///
/// `Ok` carries the start of a response; `Err` says why none came (refused, closed, reset,
/// silent).
async fn probe(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|err| format!("connect: {err}"))?;
    let request = format!("GET /hello HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| format!("write: {err}"))?;
    let mut buf = vec![0; 1024];
    match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
        Err(_) => Err(format!("connected, nothing back within {timeout:?}")),
        Ok(Ok(0)) => Err("connected, then closed without a response".to_owned()),
        Ok(Ok(n)) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Ok(Err(err)) => Err(format!("connected, then {err}")),
    }
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let mut berth = Berth::with_apps(&["fixture_testkit", "hello"]);
    let addr = berth.addr();
    let url = berth.url("/testkit/sleep?ms=2000");
    let started = Instant::now();
    let in_flight = tokio::spawn(async move { try_send(Req::get(&url)).await });

    tokio::time::sleep(Duration::from_millis(300)).await;
    berth.sigterm();
    let sigterm_at = Instant::now();

    // New connections after SIGTERM are refused or left unserved.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = tokio::spawn(probe(addr, Duration::from_secs(5)));

    let reply = in_flight
        .await
        .expect("request task")
        .expect("the in-flight request should complete");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text().trim_end(), "slept 2000 ms");
    assert!(started.elapsed() >= Duration::from_millis(2000));

    let status = berth.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    eprintln!("exited {:?} after SIGTERM", sigterm_at.elapsed());

    let late = late.await.expect("probe task");
    eprintln!("connection attempt after SIGTERM: {late:?}");
    if let Ok(head) = &late {
        assert!(
            !head.starts_with("HTTP/1.1 2"),
            "a connection opened after SIGTERM was served: {head:?}"
        );
    }
}

#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let mut berth = Berth::with_apps(&["hello"]);
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(berth.addr()).await.expect("connect");
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nhost: berth\r\n\r\n")
            .await
            .expect("send");
        let mut head = vec![0; 1024];
        let n = stream.read(&mut head).await.expect("response");
        assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
        idle.push(stream);
    }
    berth.sigterm();
    let sigterm_at = Instant::now();
    for mut stream in idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest));
        closed
            .await
            .expect("an idle connection is closed when draining starts, not at its keep-alive end")
            .expect("clean close");
        assert!(rest.is_empty(), "nothing more was sent: {rest:?}");
    }
    let status = berth.wait_exit(Duration::from_secs(3)).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    eprintln!(
        "idle connections closed, exit {:?} after SIGTERM",
        sigterm_at.elapsed()
    );
}

#[tokio::test]
async fn drain_timeout_bounds_the_shutdown() {
    let mut berth = Berth::builder()
        .app("fixture_testkit")
        .args(&["--drain-timeout", "1"])
        .start();
    let url = berth.url("/testkit/sleep?ms=10000");
    let in_flight = tokio::spawn(async move { try_send(Req::get(&url)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    berth.sigterm();
    let sigterm_at = Instant::now();
    let status = berth.wait_exit(Duration::from_secs(5)).await;
    let took = sigterm_at.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "berth should wait up to the drain timeout for the in-flight request, exited after \
         {took:?}"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(5), in_flight).await;
    eprintln!("drain timeout: exited {took:?} after SIGTERM with {status}; request: {outcome:?}");
    let reply = outcome
        .expect("the request ends when berth exits")
        .expect("task");
    assert!(
        reply.is_err(),
        "a request cut off by the drain timeout cannot have completed: {reply:?}"
    );
}
