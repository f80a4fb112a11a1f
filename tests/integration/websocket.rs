//! WebSockets on the real binary: the `ws-echo` sample (text, binary and the closing
//! handshake), the host's limits (an oversized message gets 1009, an idle socket 1001, a
//! half-open client is dropped after the ping interval and pong timeout), the `Origin`
//! allowlist (403), a panicking session (1011, nothing else affected), a swap while sockets
//! are open (old sockets keep their version, `ws_reload_grace` closes them with 1012), and
//! SIGTERM (every socket gets 1001 and the process exits within the drain timeout; a
//! server-sent events stream does not hold it), and the memory an idle socket costs.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::{Berth, Builds, Replace, SWAP_SO, app_entry, get, replace, wait_for_apps};

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long any one step of these tests may take.
const STEP: Duration = Duration::from_secs(10);

fn ws_url(berth: &Berth, path: &str) -> String {
    berth.url(path).replacen("http://", "ws://", 1)
}

/// Opens a WebSocket at `path`.
async fn connect(berth: &Berth, path: &str) -> Client {
    let url = ws_url(berth, path);
    let (socket, response) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(&url))
        .await
        .unwrap_or_else(|_| panic!("no handshake from {url} within {STEP:?}"))
        .unwrap_or_else(|err| panic!("WebSocket handshake with {url}: {err}\n{}", berth.stderr()));
    assert_eq!(response.status(), 101);
    socket
}

/// The next data or close message (pings are answered by the client's codec and skipped).
async fn next(socket: &mut Client) -> Message {
    loop {
        match tokio::time::timeout(STEP, socket.next()).await {
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(message))) => return message,
            other => panic!("expected a message, got {other:?}"),
        }
    }
}

/// The code of the close the server sends, after reading past any data messages.
async fn close_code(socket: &mut Client) -> Option<u16> {
    loop {
        match next(socket).await {
            Message::Close(frame) => return frame.map(|f| u16::from(f.code)),
            _ => continue,
        }
    }
}

/// Reads until the server closes the connection (which flushes the codec's answer to its
/// close).
async fn read_to_end(socket: &mut Client) {
    let end = async { while let Some(Ok(_)) = socket.next().await {} };
    tokio::time::timeout(STEP, end)
        .await
        .expect("the server closed the connection");
}

/// The open WebSockets of `app` in the admin `/apps` document.
async fn wait_for_websockets(berth: &Berth, app: &str, n: u64) {
    wait_for_apps(berth, &format!("{n} WebSockets on {app}"), STEP, |apps| {
        app_entry(apps, app).is_some_and(|entry| entry["websockets"] == n)
    })
    .await;
}

#[tokio::test]
async fn echoes_text_and_binary_and_answers_the_close_with_its_code() {
    let berth = Berth::with_apps(&["ws_echo"]);
    let mut socket = connect(&berth, "/ws-echo").await;
    socket.send(Message::text("héllo")).await.expect("sent");
    assert_eq!(next(&mut socket).await, Message::text("héllo"));
    let binary = vec![0u8, 159, 146, 150, 255];
    socket
        .send(Message::binary(binary.clone()))
        .await
        .expect("sent");
    assert_eq!(next(&mut socket).await, Message::binary(binary));
    // Larger than the codec's read buffer, in one message.
    let large = "x".repeat(200_000);
    socket
        .send(Message::text(large.clone()))
        .await
        .expect("sent");
    assert_eq!(next(&mut socket).await, Message::text(large));
    wait_for_websockets(&berth, "ws-echo", 1).await;

    let close = CloseFrame {
        code: CloseCode::from(4000),
        reason: "done".into(),
    };
    socket
        .send(Message::Close(Some(close)))
        .await
        .expect("sent");
    assert_eq!(close_code(&mut socket).await, Some(4000));
    read_to_end(&mut socket).await;
    wait_for_websockets(&berth, "ws-echo", 0).await;
}

#[tokio::test]
async fn plain_requests_see_no_websocket() {
    let berth = Berth::with_apps(&["ws_echo", "fixture_testkit"]);
    let reply = get(&berth.url("/ws-echo")).await;
    assert_eq!(reply.status, 426, "{}", reply.text());
    let reply = get(&berth.url("/testkit/ws-panic")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "no websocket\n");
}

#[tokio::test]
async fn an_oversized_message_gets_1009() {
    let berth = Berth::builder()
        .app("ws_echo")
        .config("ws_max_message = \"1KiB\"\n")
        .start();
    let mut socket = connect(&berth, "/ws-echo").await;
    socket.send(Message::text("small")).await.expect("sent");
    assert_eq!(next(&mut socket).await, Message::text("small"));
    socket
        .send(Message::binary(vec![1u8; 4096]))
        .await
        .expect("sent");
    assert_eq!(close_code(&mut socket).await, Some(1009));
}

#[tokio::test]
async fn an_idle_socket_is_closed_with_1001() {
    let berth = Berth::builder()
        .app("ws_echo")
        .config("[apps.ws-echo]\nws_idle_timeout = \"700ms\"\n")
        .start();
    let mut socket = connect(&berth, "/ws-echo").await;
    let opened = Instant::now();
    // Messages keep it open.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        socket
            .send(Message::text("still here"))
            .await
            .expect("sent");
        assert_eq!(next(&mut socket).await, Message::text("still here"));
    }
    let quiet = Instant::now();
    assert_eq!(close_code(&mut socket).await, Some(1001));
    let idle = quiet.elapsed();
    assert!(opened.elapsed() > Duration::from_millis(1200));
    assert!(
        (Duration::from_millis(600)..Duration::from_secs(5)).contains(&idle),
        "closed after {idle:?} of silence"
    );
    read_to_end(&mut socket).await;
}

#[tokio::test]
async fn a_half_open_client_is_dropped_after_the_ping_interval_and_pong_timeout() {
    let berth = Berth::builder()
        .app("ws_echo")
        .config("ws_ping_interval = \"300ms\"\nws_pong_timeout = \"400ms\"\n")
        .start();
    // A raw client: completes the handshake, then never answers anything.
    let mut stream = TcpStream::connect(berth.addr()).await.expect("connected");
    let request = format!(
        "GET /ws-echo HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        berth.addr()
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(STEP, stream.read(&mut byte))
            .await
            .expect("a head")
            .expect("read");
        assert_eq!(n, 1, "closed during the head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    wait_for_websockets(&berth, "ws-echo", 1).await;
    let silent = Instant::now();
    // Reading (without answering) sees the pings, then the end of the connection.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(STEP, stream.read_to_end(&mut rest)).await;
    let dropped = silent.elapsed();
    assert!(read.is_ok(), "still open after {STEP:?}");
    assert!(
        dropped >= Duration::from_millis(600),
        "dropped after {dropped:?}: before the ping interval and pong timeout"
    );
    assert_eq!(rest.first(), Some(&0x89), "a ping first: {rest:?}");
    wait_for_websockets(&berth, "ws-echo", 0).await;
}

#[tokio::test]
async fn an_origin_not_allowed_gets_403_before_the_app() {
    let berth = Berth::builder()
        .app("ws_echo")
        .config("ws_origins = [\"https://good.example\"]\n")
        .start();
    let url = ws_url(&berth, "/ws-echo");
    let handshake = |origin: &'static str| {
        let mut request = url.as_str().into_client_request().expect("request");
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("header"));
        tokio_tungstenite::connect_async(request)
    };
    match handshake("https://evil.example").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let (mut socket, _) = handshake("https://GOOD.example").await.expect("allowed");
    socket.send(Message::text("hi")).await.expect("sent");
    assert_eq!(next(&mut socket).await, Message::text("hi"));
}

#[tokio::test]
async fn a_panicking_session_closes_its_socket_with_1011_and_nothing_else() {
    let berth = Berth::with_apps(&["fixture_testkit"]);
    let mut doomed = connect(&berth, "/testkit/ws-panic").await;
    let mut other = connect(&berth, "/testkit/ws-panic").await;
    doomed.send(Message::text("panic")).await.expect("sent");
    assert_eq!(close_code(&mut doomed).await, Some(1011));
    berth
        .wait_for_log(&["testkit", "WebSocket session panicked"], STEP)
        .await;
    other.send(Message::text("fine")).await.expect("sent");
    assert_eq!(next(&mut other).await, Message::text("fine"));
    let reply = get(&berth.url("/testkit/ok")).await;
    assert_eq!(reply.status, 200);
    let mut again = connect(&berth, "/testkit/ws-panic").await;
    again.send(Message::text("again")).await.expect("sent");
    assert_eq!(next(&mut again).await, Message::text("again"));
}

/// Swaps the `swap` app from build A to build B and waits until B serves.
async fn swap_to_b(berth: &Berth, builds: &Builds) {
    replace(berth.apps_dir(), SWAP_SO, &builds.b, Replace::Rename);
    wait_for_apps(berth, "swap 2.0.0 mounted", STEP, |apps| {
        app_entry(apps, "swap").is_some_and(|entry| entry["version"] == "2.0.0")
    })
    .await;
}

#[tokio::test]
async fn after_a_swap_old_sockets_keep_their_version_and_new_ones_reach_the_new() {
    let builds = Builds::new();
    let berth = Berth::builder().app_as("fixture_swap_a", SWAP_SO).start();
    let mut old = connect(&berth, "/swap/ws").await;
    old.send(Message::text("hi")).await.expect("sent");
    assert_eq!(next(&mut old).await, Message::text("A hi"));

    swap_to_b(&berth, &builds).await;
    let mut new = connect(&berth, "/swap/ws").await;
    new.send(Message::text("hi")).await.expect("sent");
    assert_eq!(next(&mut new).await, Message::text("B hi"));
    old.send(Message::text("still")).await.expect("sent");
    assert_eq!(next(&mut old).await, Message::text("A still"));
    // The old version waits for its socket before it is retired.
    let apps = crate::harness::admin_apps(&berth).await;
    let retiring = apps["retiring"].as_array().expect("a retiring list");
    assert!(
        retiring
            .iter()
            .any(|v| v["name"] == "swap" && v["websockets"] == 1),
        "{apps:#}"
    );
    assert!(!berth.stderr().contains("swap A shutting down"));

    old.close(None).await.expect("closed");
    read_to_end(&mut old).await;
    berth.wait_for_log(&["swap A shutting down"], STEP).await;
    new.send(Message::text("on")).await.expect("sent");
    assert_eq!(next(&mut new).await, Message::text("B on"));
}

#[tokio::test]
async fn a_reload_grace_closes_old_sockets_with_1012() {
    let builds = Builds::new();
    let berth = Berth::builder()
        .app_as("fixture_swap_a", SWAP_SO)
        .config("[apps.swap]\nws_reload_grace = \"500ms\"\n")
        .start();
    let mut old = connect(&berth, "/swap/ws").await;
    old.send(Message::text("hi")).await.expect("sent");
    assert_eq!(next(&mut old).await, Message::text("A hi"));
    swap_to_b(&berth, &builds).await;
    let swapped = Instant::now();
    assert_eq!(close_code(&mut old).await, Some(1012));
    assert!(swapped.elapsed() >= Duration::from_millis(300));
    read_to_end(&mut old).await;
    berth.wait_for_log(&["swap A shutting down"], STEP).await;
    let mut new = connect(&berth, "/swap/ws").await;
    new.send(Message::text("again")).await.expect("sent");
    assert_eq!(next(&mut new).await, Message::text("B again"));
}

#[tokio::test]
async fn sigterm_closes_every_socket_with_1001_and_exits_within_the_drain_timeout() {
    let mut berth = Berth::builder()
        .app("ws_echo")
        .app("clock")
        .args(&["--drain-timeout", "8"])
        .start();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(connect(&berth, "/ws-echo").await);
    }
    // A server-sent events stream that would run for ever.
    let mut events = TcpStream::connect(berth.addr()).await.expect("connected");
    let request = format!(
        "GET /clock?interval_ms=100 HTTP/1.1\r\nHost: {}\r\n\r\n",
        berth.addr()
    );
    events.write_all(request.as_bytes()).await.expect("sent");
    let mut first = [0u8; 256];
    let n = tokio::time::timeout(STEP, events.read(&mut first))
        .await
        .expect("the stream's head")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    wait_for_websockets(&berth, "ws-echo", 3).await;

    berth.sigterm();
    let sigterm_at = Instant::now();
    for socket in &mut sockets {
        assert_eq!(close_code(socket).await, Some(1001));
    }
    for socket in &mut sockets {
        read_to_end(socket).await;
    }
    // The events stream ends too.
    let mut rest = Vec::new();
    tokio::time::timeout(STEP, events.read_to_end(&mut rest))
        .await
        .expect("the events stream ended")
        .expect("read");
    let status = berth.wait_exit(STEP).await;
    let took = sigterm_at.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM: the sockets or the stream held the drain"
    );
}

#[tokio::test]
async fn sigterm_gives_up_on_a_silent_client_at_the_drain_timeout() {
    let mut berth = Berth::builder()
        .app("ws_echo")
        .args(&["--drain-timeout", "2"])
        .start();
    let mut socket = connect(&berth, "/ws-echo").await;
    socket.send(Message::text("hi")).await.expect("sent");
    assert_eq!(next(&mut socket).await, Message::text("hi"));
    berth.sigterm();
    let sigterm_at = Instant::now();
    // The client never reads again, so never answers the close.
    let status = berth.wait_exit(STEP).await;
    let took = sigterm_at.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM"
    );
    drop(socket);
}

#[tokio::test]
async fn the_connections_keep_alive_and_head_timers_never_cut_a_socket() {
    let berth = Berth::builder()
        .app("ws_echo")
        .args(&["--keepalive-timeout", "0.5", "--header-read-timeout", "0.5"])
        .start();
    let mut socket = connect(&berth, "/ws-echo").await;
    // Silent for longer than both, then busy.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in 0..3 {
        socket
            .send(Message::text(n.to_string()))
            .await
            .expect("sent");
        assert_eq!(next(&mut socket).await, Message::text(n.to_string()));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    wait_for_websockets(&berth, "ws-echo", 1).await;
}

/// The codec's read buffer is 4 KiB (tungstenite's default of 128 KiB would cost that much per
/// socket): an idle socket costs a few KiB of the server's memory (7 KiB measured in a debug
/// build, the session of `ws-echo` included).
#[tokio::test]
async fn an_idle_socket_costs_a_few_kib() {
    let berth = Berth::with_apps(&["ws_echo"]);
    let mut sockets = Vec::new();
    for _ in 0..50 {
        sockets.push(connect(&berth, "/ws-echo").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = crate::harness::proc_status_kib(berth.pid(), "VmRSS");
    for _ in 0..1000 {
        sockets.push(connect(&berth, "/ws-echo").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = crate::harness::proc_status_kib(berth.pid(), "VmRSS");
    let each = after.saturating_sub(before) as f64 / 1000.0;
    eprintln!("RSS {before} KiB -> {after} KiB for 1000 idle sockets: {each} KiB each");
    assert!(each < 24.0, "{each} KiB per idle socket");
}

#[tokio::test]
async fn an_open_socket_keeps_its_place_under_the_connection_limit() {
    let berth = Berth::builder()
        .app("ws_echo")
        .args(&["--max-connections", "2"])
        .start();
    let mut first = connect(&berth, "/ws-echo").await;
    let mut second = connect(&berth, "/ws-echo").await;
    // A third connection waits in the listen backlog while both sockets are open.
    let url = berth.url("/ws-echo");
    let waiting = tokio::spawn(async move { get(&url).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "served past the connection limit");
    second.send(Message::text("still")).await.expect("sent");
    assert_eq!(next(&mut second).await, Message::text("still"));
    first.close(None).await.expect("closed");
    read_to_end(&mut first).await;
    let reply = tokio::time::timeout(STEP, waiting)
        .await
        .expect("served once a socket closed")
        .expect("joined");
    assert_eq!(reply.status, 426);
}
