//! The `chat` sample at scale, the talk's "driving WebSockets with Redis": a thousand browsers'
//! worth of sockets fed by `redis-cli PUBLISH` (and the same on the in-process broker),
//! server-sent events, a reader that never reads, which must not hold up the others or grow
//! the server's memory (under both overflow policies), and a Redis restart while subscribed.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::harness::{Berth, Req, proc_status_kib, send};
use crate::pubsub::wait_for_pubsub;
use crate::services::Redis;

pub(crate) type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a published message may take to reach every client.
const DELIVERY: Duration = Duration::from_secs(20);

/// Opens a WebSocket on `chat`.
pub(crate) async fn connect(berth: &Berth) -> Client {
    let url = berth.url("/chat/ws").replacen("http://", "ws://", 1);
    let (socket, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .unwrap_or_else(|_| panic!("no handshake from {url} within 10 s"))
    .unwrap_or_else(|err| panic!("WebSocket handshake with {url}: {err}"));
    assert_eq!(response.status(), 101);
    socket
}

/// Opens `n` WebSockets on `chat`, a few at a time.
async fn connect_many(berth: &Berth, n: usize) -> Vec<Client> {
    futures_util::stream::iter(0..n)
        .map(|_| connect(berth))
        .buffered(32)
        .collect()
        .await
}

/// Waits until the admin `/pubsub` document shows `n` subscribers on `channel`.
async fn wait_for_subscribers(berth: &Berth, channel: &str, n: u64, timeout: Duration) -> Value {
    wait_for_pubsub(
        berth,
        &format!("showing {n} subscribers on {channel:?}"),
        timeout,
        |document| channel_of(document, channel)["subscribers"] == n,
    )
    .await
}

/// The entry of `channel` in an admin `/pubsub` document (`null` if it has none).
fn channel_of<'a>(document: &'a Value, channel: &str) -> &'a Value {
    document["channels"]
        .as_array()
        .and_then(|channels| channels.iter().find(|c| c["name"] == channel))
        .unwrap_or(&Value::Null)
}

/// The next text message on `socket`, skipping nothing: anything else fails.
pub(crate) async fn next_text(socket: &mut Client, within: Duration) -> String {
    match tokio::time::timeout(within, socket.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => text.as_str().to_owned(),
        other => panic!("expected a text message within {within:?}, got {other:?}"),
    }
}

/// Every socket's next message, which must be `expected`.
async fn all_receive(sockets: &mut [Client], expected: &str) {
    let count = sockets.len();
    let started = Instant::now();
    let mut arrivals = futures_util::stream::iter(sockets.iter_mut())
        .map(|socket| async move { next_text(socket, DELIVERY).await })
        .buffer_unordered(count);
    let mut received = 0;
    while let Some(text) = arrivals.next().await {
        assert_eq!(text, expected);
        received += 1;
    }
    assert_eq!(received, count);
    eprintln!(
        "{count} sockets had {expected:?} after {:?}",
        started.elapsed()
    );
}

/// `POST /chat/publish` with `text`; returns the receiver count the app answers with.
pub(crate) async fn publish(berth: &Berth, text: &str) -> u64 {
    let url = berth.url("/chat/publish");
    let reply = send(Req {
        method: hyper::Method::POST,
        body: text.as_bytes(),
        ..Req::get(&url)
    })
    .await;
    assert_eq!(reply.status, 200, "POST /chat/publish: {}", reply.text());
    reply
        .text()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a receiver count: {:?}", reply.text()))
}

/// A client of `/chat/events`, on a connection of its own.
struct Events {
    body: Incoming,
    pending: Vec<u8>,
    connection: tokio::task::JoinHandle<()>,
}

impl Events {
    /// Opens the stream and reads its first event, the comment that says the subscription is
    /// in place.
    async fn open(berth: &Berth) -> Events {
        let stream = TcpStream::connect(berth.addr()).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::get("/chat/events")
            .header(header::HOST, berth.addr().to_string())
            .body(Empty::<Bytes>::new())
            .expect("valid request");
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("response head in time")
            .expect("response head");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut events = Events {
            body: response.into_body(),
            pending: Vec::new(),
            connection,
        };
        let first = events.next(Duration::from_secs(10)).await;
        assert!(first.starts_with(": subscribed"), "{first:?}");
        events
    }

    /// The next event (without its blank line).
    async fn next(&mut self, within: Duration) -> String {
        let read = async {
            loop {
                if let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
                    let event = String::from_utf8_lossy(&self.pending[..end]).into_owned();
                    self.pending.drain(..end + 2);
                    return event;
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("the event stream ended")
                    .expect("the event stream failed");
                if let Ok(data) = frame.into_data() {
                    self.pending.extend_from_slice(&data);
                }
            }
        };
        tokio::time::timeout(within, read)
            .await
            .unwrap_or_else(|_| panic!("no event within {within:?}"))
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sockets_each_receive_a_redis_publish() {
    const SOCKETS: usize = 1000;
    // The test's own end of a thousand sockets, and berth's, need more than the usual 1024 files.
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-file limit");
    let redis = Redis::start();
    let berth = Berth::builder()
        .app("chat")
        .config(&format!("pubsub = \"{}\"\n", redis.url()))
        .start();
    let mut sockets = connect_many(&berth, SOCKETS).await;
    // Each session subscribes once its handshake is done: wait until all have.
    let document = wait_for_subscribers(&berth, "messages", SOCKETS as u64, DELIVERY).await;
    assert_eq!(document["backend"], "redis");
    assert_eq!(document["connected"], true);
    // One subscription per process, however many sockets: Redis sees one subscriber.
    assert_eq!(redis.cli(&["PUBSUB", "NUMSUB", "messages"]), "messages\n1");

    assert_eq!(
        redis.cli(&["PUBLISH", "messages", "hi from redis-cli"]),
        "1"
    );
    all_receive(&mut sockets, "hi from redis-cli").await;
    let document = wait_for_pubsub(&berth, "counting the delivery", DELIVERY, |d| {
        channel_of(d, "messages")["delivered"] == SOCKETS as u64
    })
    .await;
    assert_eq!(channel_of(&document, "messages")["published"], 1);
    assert_eq!(channel_of(&document, "messages")["dropped"], 0);

    // What a socket sends goes through Redis to every socket, its sender too.
    sockets[0]
        .send(Message::text("hi from a browser"))
        .await
        .expect("send");
    all_receive(&mut sockets, "hi from a browser").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sockets_each_receive_a_publish_on_the_memory_broker() {
    const SOCKETS: usize = 1000;
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the open-file limit");
    let berth = Berth::builder().app("chat").start();
    let mut sockets = connect_many(&berth, SOCKETS).await;
    let document = wait_for_subscribers(&berth, "messages", SOCKETS as u64, DELIVERY).await;
    assert_eq!(document["backend"], "memory");

    // The in-process broker counts the subscriptions it reached.
    assert_eq!(publish(&berth, "hi from POST").await, SOCKETS as u64);
    all_receive(&mut sockets, "hi from POST").await;
    sockets[SOCKETS - 1]
        .send(Message::text("hi from a browser"))
        .await
        .expect("send");
    all_receive(&mut sockets, "hi from a browser").await;

    // Sockets that leave unsubscribe; the channel goes with the last.
    drop(sockets);
    wait_for_pubsub(&berth, "without the channel", DELIVERY, |d| {
        channel_of(d, "messages").is_null()
    })
    .await;
    assert_eq!(publish(&berth, "no one").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_receive_what_is_published() {
    // In memory: a POST reaches every event stream.
    let berth = Berth::builder().app("chat").start();
    let mut first = Events::open(&berth).await;
    let mut second = Events::open(&berth).await;
    assert_eq!(publish(&berth, "one").await, 2);
    assert_eq!(first.next(DELIVERY).await, "data: one");
    assert_eq!(second.next(DELIVERY).await, "data: one");
    assert_eq!(publish(&berth, "two\nlines").await, 2);
    assert_eq!(first.next(DELIVERY).await, "data: two\ndata: lines");
    // A client that leaves unsubscribes.
    drop(second);
    wait_for_subscribers(&berth, "messages", 1, DELIVERY).await;

    // On Redis: redis-cli and POST both reach the stream.
    let redis = Redis::start();
    let berth = Berth::builder()
        .app("chat")
        .config(&format!("pubsub = \"{}\"\n", redis.url()))
        .start();
    let mut events = Events::open(&berth).await;
    assert_eq!(redis.cli(&["PUBLISH", "messages", "from redis-cli"]), "1");
    assert_eq!(events.next(DELIVERY).await, "data: from redis-cli");
    // Redis counts connections: one per Berth instance.
    assert_eq!(publish(&berth, "from POST").await, 1);
    assert_eq!(events.next(DELIVERY).await, "data: from POST");
}

/// A reader that never reads, while `READERS` others and the publisher read 400 messages of
/// 40 KiB (16 MiB in all, more than loopback's socket buffers hold for the stalled reader, so
/// its backlog has to end up in Berth's queues, which are bounded): the others get every
/// message in order within the time limit, and Berth's memory stays bounded. Returns the
/// stalled reader's socket, the berth and its admin `/pubsub` document after the flood.
async fn flood_past_a_stalled_reader(overflow: &str) -> (Client, Berth, Value) {
    const READERS: usize = 8;
    const MESSAGES: usize = 400;
    const WINDOW: usize = 4;
    let payload = "x".repeat(40 * 1024);
    let berth = Berth::builder()
        .app("chat")
        .config(&format!(
            "pubsub_queue = 16\npubsub_overflow = \"{overflow}\"\nws_send_queue = 8\n"
        ))
        .start();
    let stalled = connect(&berth).await;
    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(connect(&berth).await);
    }
    // The publisher is subscribed too: it drains its own feed so as not to stall as well.
    let (mut publisher, mut feed) = connect(&berth).await.split();
    let drain = tokio::spawn(async move { while let Some(Ok(_)) = feed.next().await {} });
    wait_for_subscribers(
        &berth,
        "messages",
        READERS as u64 + 2,
        Duration::from_secs(10),
    )
    .await;
    let rss_before = proc_status_kib(berth.pid(), "VmRSS");

    let started = Instant::now();
    // Published in windows of `WINDOW`, each read by every reader before the next: nothing
    // pushes back on a publisher (a slow subscriber must not slow it either), so an unpaced
    // burst would overflow a reader's queue of 16 as well, however fast it reads. The window
    // keeps the readers within their queues; the stalled reader falls further behind with
    // each one, and no one waits for it.
    for window in (0..MESSAGES).step_by(WINDOW) {
        for i in window..window + WINDOW {
            let text = format!("{i:05} {payload}");
            publisher
                .send(Message::text(text))
                .await
                .expect("publish through the publisher's socket");
        }
        // Every reader gets every message, in order, while the stalled one reads nothing.
        futures_util::future::join_all(readers.iter_mut().map(|reader| async move {
            for i in window..window + WINDOW {
                let text = next_text(reader, DELIVERY).await;
                assert_eq!(
                    &text[..5],
                    format!("{i:05}"),
                    "messages out of order or lost"
                );
            }
        }))
        .await;
    }
    let elapsed = started.elapsed();
    drain.abort();
    let rss_after = proc_status_kib(berth.pid(), "VmRSS");
    eprintln!(
        "{overflow}: {READERS} readers had {MESSAGES} messages of 40 KiB in {elapsed:?}; \
         berth's RSS {rss_before} KiB -> {rss_after} KiB"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "the readers were held up: {elapsed:?}"
    );
    // 16 MiB went to each of ten sockets; the stalled one's backlog is capped by its queues.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "berth's memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    let document = crate::pubsub::pubsub_status(&berth).await;
    (stalled, berth, document)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_loses_its_oldest_and_delays_no_one() {
    let (mut stalled, berth, document) = flood_past_a_stalled_reader("drop-oldest").await;
    let messages = channel_of(&document, "messages");
    assert!(
        messages["dropped"].as_u64().unwrap_or(0) > 0,
        "the stalled reader's queue never overflowed: {document:#}"
    );
    // It is still subscribed, and what it reads now ends with the newest message: its oldest
    // were dropped, not its newest.
    assert_eq!(messages["subscribers"], 10, "{document:#}");
    let mut read = 0;
    loop {
        let text = next_text(&mut stalled, DELIVERY).await;
        read += 1;
        if text.starts_with("00399") {
            break;
        }
    }
    eprintln!("the stalled reader read {read} of 400 messages");
    assert!(read < 400, "nothing was dropped");
    // And it still gets what comes next.
    // The readers and the publisher have left: the stalled reader and a new publisher remain.
    let mut publisher = connect(&berth).await;
    wait_for_subscribers(&berth, "messages", 2, DELIVERY).await;
    publisher.send(Message::text("after")).await.expect("send");
    assert_eq!(next_text(&mut stalled, DELIVERY).await, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_closed_with_1008_and_delays_no_one() {
    let (mut stalled, berth, document) = flood_past_a_stalled_reader("close").await;
    // Under the close policy it was removed from the channel once it fell behind.
    assert_eq!(
        channel_of(&document, "messages")["subscribers"],
        9,
        "{document:#}"
    );
    berth
        .wait_for_log(&["WARN", "fell behind", "messages"], DELIVERY)
        .await;
    // It finds the close after whatever the kernel buffered for it.
    let closed = tokio::time::timeout(DELIVERY, async {
        while let Some(message) = stalled.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| f.code),
                Ok(_) => continue,
                Err(err) => panic!("the stalled reader's socket failed: {err}"),
            }
        }
        None
    })
    .await
    .expect("the stalled reader was never closed");
    assert_eq!(closed, Some(CloseCode::Policy));
}

/// Redis goes away under a subscribed Berth (twenty sockets and two event streams) and comes
/// back on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_while_subscribed_is_logged_and_delivery_resumes() {
    let mut redis = Redis::start();
    let url = redis.url();
    let berth = Berth::builder()
        .app("chat")
        .config(&format!("pubsub = \"{url}\"\n"))
        .start();
    let mut first = Events::open(&berth).await;
    let mut second = Events::open(&berth).await;
    let mut sockets = connect_many(&berth, 20).await;
    wait_for_subscribers(&berth, "messages", 22, DELIVERY).await;
    assert_eq!(redis.cli(&["PUBLISH", "messages", "before"]), "1");
    assert_eq!(first.next(DELIVERY).await, "data: before");
    assert_eq!(second.next(DELIVERY).await, "data: before");
    all_receive(&mut sockets, "before").await;

    redis.stop();
    berth
        .wait_for_log(&["WARN", "lost the Redis connection", &url], DELIVERY)
        .await;
    let document = wait_for_pubsub(&berth, "disconnected", DELIVERY, |d| {
        d["connected"] == false
    })
    .await;
    // The subscriptions stay registered through the gap; publishing fails meanwhile.
    assert_eq!(channel_of(&document, "messages")["subscribers"], 22);
    let url_publish = berth.url("/chat/publish");
    let refused = send(Req {
        method: hyper::Method::POST,
        body: b"lost",
        ..Req::get(&url_publish)
    })
    .await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains(&url), "{}", refused.text());
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.resume();
    let line = berth
        .wait_for_log(&["INFO", "reconnected to Redis after", &url], DELIVERY)
        .await;
    eprintln!("{line}");
    let document =
        wait_for_pubsub(&berth, "reconnected", DELIVERY, |d| d["connected"] == true).await;
    assert_eq!(document["reconnects"], 1);
    // Resubscribed on its own: one subscription, as before.
    assert_eq!(redis.cli(&["PUBSUB", "NUMSUB", "messages"]), "messages\n1");
    assert_eq!(redis.cli(&["PUBLISH", "messages", "after"]), "1");
    assert_eq!(first.next(DELIVERY).await, "data: after");
    assert_eq!(second.next(DELIVERY).await, "data: after");
    all_receive(&mut sockets, "after").await;
    // Publishing from the app works again too.
    assert_eq!(publish(&berth, "and again").await, 1);
    assert_eq!(first.next(DELIVERY).await, "data: and again");
    assert_eq!(second.next(DELIVERY).await, "data: and again");
    all_receive(&mut sockets, "and again").await;
}

#[tokio::test]
async fn event_streams_end_when_the_server_stops_instead_of_holding_the_drain() {
    let mut berth = Berth::builder().app("chat").start();
    let mut events = Events::open(&berth).await;
    berth.sigterm();
    // The stream ends (the drain timeout is 30 s: waiting for it would fail the limit below).
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(frame) = events.body.frame().await {
            if frame.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the event stream outlived the shutdown");
    let status = berth.wait_exit(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}; stderr:\n{}", berth.stderr());
}
