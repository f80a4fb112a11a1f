//! The broker on its own: fan-out, limits, the overflow policies, unsubscribing, retirement,
//! and a Redis that was never reachable.

#![allow(clippy::unwrap_used)]

use std::future::poll_fn;
use std::sync::Mutex;
use std::time::Duration;

use super::*;

fn config(queue: usize, overflow: Overflow) -> PubSubConfig {
    PubSubConfig {
        queue,
        overflow,
        ..PubSubConfig::default()
    }
}

/// What a subscription reads next, or `None` if nothing is queued.
fn try_next(subscription: &Subscription) -> Option<Next> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match subscription.poll_next(&mut cx) {
        Poll::Ready(next) => Some(next),
        Poll::Pending => None,
    }
}

fn text(next: Option<Next>) -> (String, u64) {
    match next {
        Some(Next::Message { data, dropped }) => {
            (String::from_utf8(data.to_vec()).unwrap(), dropped)
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

fn channel_status(broker: &Broker, name: &str) -> Option<Value> {
    broker.status()["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// A session socket that records how it was closed.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<(u16, String)>>);

impl SessionSocket for Recorder {
    fn close(&self, code: u16, reason: &str) {
        self.0.lock().unwrap().push((code, reason.to_owned()));
    }
}

#[tokio::test]
async fn every_subscriber_gets_every_message_and_publish_counts_them() {
    let broker = Broker::memory(&PubSubConfig::default());
    let app = AppPubSub::new(&broker);
    let other_app = AppPubSub::new(&broker);
    let runtime = tokio::runtime::Handle::current();
    let a = app.subscribe("news", None).await.unwrap();
    let b = other_app.subscribe("news", None).await.unwrap();
    let _elsewhere = app.subscribe("sports", None).await.unwrap();

    let reached = app
        .publish("news", Bytes::from_static(b"hi"), &runtime)
        .await;
    assert_eq!(reached, Ok(2));
    assert_eq!(text(try_next(&a)), ("hi".to_owned(), 0));
    assert_eq!(text(try_next(&b)), ("hi".to_owned(), 0));
    assert_eq!(try_next(&a), None);
    let nobody = app
        .publish("nobody", Bytes::from_static(b"x"), &runtime)
        .await;
    assert_eq!(nobody, Ok(0));

    let status = broker.status();
    assert_eq!(status["backend"], "memory");
    assert_eq!(status["connected"], true);
    assert_eq!(status["reconnects"], 0);
    let news = channel_status(&broker, "news").unwrap();
    assert_eq!(news["subscribers"], 2);
    assert_eq!(news["published"], 1);
    assert_eq!(news["delivered"], 2);
    assert_eq!(news["dropped"], 0);
}

#[tokio::test]
async fn a_subscription_waits_to_be_polled_with_its_waker() {
    let broker = Broker::memory(&PubSubConfig::default());
    let app = AppPubSub::new(&broker);
    let subscription = app.subscribe("later", None).await.unwrap();
    let runtime = tokio::runtime::Handle::current();
    let reader = tokio::spawn(async move { poll_fn(|cx| subscription.poll_next(cx)).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.publish("later", Bytes::from_static(b"now"), &runtime)
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text(Some(next)), ("now".to_owned(), 0));
}

#[tokio::test]
async fn bad_channels_and_oversized_messages_are_invalid_and_name_the_limit() {
    let broker = Broker::memory(&PubSubConfig {
        max_message: 8,
        ..PubSubConfig::default()
    });
    let app = AppPubSub::new(&broker);
    let runtime = tokio::runtime::Handle::current();
    let Err(PubSubError::Invalid(message)) = app.subscribe("", None).await else {
        panic!("an empty channel was accepted");
    };
    assert!(message.contains("empty"), "{message}");
    let long = "x".repeat(MAX_CHANNEL_LEN + 1);
    let Err(PubSubError::Invalid(message)) = app.subscribe(&long, None).await else {
        panic!("a long channel was accepted");
    };
    assert!(message.contains("limit of 256"), "{message}");
    assert!(app.subscribe(&long[1..], None).await.is_ok());

    let published = app
        .publish("c", Bytes::from_static(b"123456789"), &runtime)
        .await;
    let Err(PubSubError::Invalid(message)) = published else {
        panic!("an oversized message was accepted: {published:?}");
    };
    assert!(message.contains("limit of 8"), "{message}");
    assert!(message.contains("pubsub_max_message"), "{message}");
    assert_eq!(
        app.publish("c", Bytes::from_static(b"12345678"), &runtime)
            .await,
        Ok(0)
    );
    let published = app.publish("", Bytes::new(), &runtime).await;
    assert!(
        matches!(published, Err(PubSubError::Invalid(_))),
        "{published:?}"
    );
}

#[tokio::test]
async fn drop_oldest_loses_the_slow_ones_oldest_and_no_one_elses() {
    let broker = Broker::memory(&config(4, Overflow::DropOldest));
    let app = AppPubSub::new(&broker);
    let runtime = tokio::runtime::Handle::current();
    let slow = app.subscribe("feed", None).await.unwrap();
    let fast = app.subscribe("feed", None).await.unwrap();
    for i in 0..10 {
        let reached = app
            .publish("feed", Bytes::from(format!("{i}")), &runtime)
            .await;
        assert_eq!(reached, Ok(2));
        assert_eq!(text(try_next(&fast)), (format!("{i}"), 0));
    }
    // The slow one kept the newest four, and hears how many it missed.
    assert_eq!(text(try_next(&slow)), ("6".to_owned(), 6));
    for i in 7..10 {
        assert_eq!(text(try_next(&slow)), (format!("{i}"), 0));
    }
    assert_eq!(try_next(&slow), None);
    let feed = channel_status(&broker, "feed").unwrap();
    assert_eq!(feed["dropped"], 6);
    assert_eq!(feed["delivered"], 14);
    assert_eq!(feed["subscribers"], 2);
}

#[tokio::test]
async fn close_ends_the_slow_one_and_closes_its_socket_with_1008() {
    let broker = Broker::memory(&config(2, Overflow::Close));
    let app = AppPubSub::new(&broker);
    let runtime = tokio::runtime::Handle::current();
    let socket = Arc::new(Recorder::default());
    let session: Arc<dyn SessionSocket> = socket.clone();
    let slow = app.subscribe("feed", Some(session)).await.unwrap();
    let fast = app.subscribe("feed", None).await.unwrap();
    for i in 0..5 {
        app.publish("feed", Bytes::from(format!("{i}")), &runtime)
            .await
            .unwrap();
        assert_eq!(text(try_next(&fast)), (format!("{i}"), 0));
    }
    assert_eq!(
        *socket.0.lock().unwrap(),
        vec![(1008, FELL_BEHIND_REASON.to_owned())]
    );
    match try_next(&slow) {
        Some(Next::End { reason, dropped }) => {
            assert!(reason.contains("fell behind"), "{reason}");
            assert!(reason.contains("queue of 2"), "{reason}");
            assert_eq!(dropped, 3);
        }
        other => panic!("expected the end, got {other:?}"),
    }
    let feed = channel_status(&broker, "feed").unwrap();
    assert_eq!(feed["subscribers"], 1, "the slow one was removed: {feed}");
    assert_eq!(feed["dropped"], 3);
    // Dropping the ended subscription later is harmless.
    drop(slow);
    assert_eq!(channel_status(&broker, "feed").unwrap()["subscribers"], 1);
}

#[tokio::test]
async fn the_last_unsubscribe_forgets_the_channel() {
    let broker = Broker::memory(&PubSubConfig::default());
    let app = AppPubSub::new(&broker);
    let a = app.subscribe("room", None).await.unwrap();
    let b = app.subscribe("room", None).await.unwrap();
    assert_eq!(a.channel(), "room");
    drop(a);
    assert_eq!(channel_status(&broker, "room").unwrap()["subscribers"], 1);
    drop(b);
    assert_eq!(channel_status(&broker, "room"), None);
}

#[tokio::test]
async fn retiring_a_version_ends_its_subscriptions_only() {
    let broker = Broker::memory(&PubSubConfig::default());
    let old = AppPubSub::new(&broker);
    let new = AppPubSub::new(&broker);
    let runtime = tokio::runtime::Handle::current();
    let old_subscription = old.subscribe("c", None).await.unwrap();
    let new_subscription = new.subscribe("c", None).await.unwrap();
    new.publish("c", Bytes::from_static(b"before"), &runtime)
        .await
        .unwrap();
    old.retire();
    // What was queued is still read, then the end.
    assert_eq!(text(try_next(&old_subscription)), ("before".to_owned(), 0));
    assert!(matches!(
        try_next(&old_subscription),
        Some(Next::End { .. })
    ));
    assert!(matches!(
        old.subscribe("c", None).await,
        Err(PubSubError::Failed(_))
    ));
    assert_eq!(text(try_next(&new_subscription)), ("before".to_owned(), 0));
    assert_eq!(try_next(&new_subscription), None);
}

#[test]
fn backends_and_policies_parse_with_clear_errors() {
    assert_eq!("memory".parse::<Backend>(), Ok(Backend::Memory));
    assert_eq!(
        "redis://127.0.0.1:6379/".parse::<Backend>(),
        Ok(Backend::Redis("redis://127.0.0.1:6379/".to_owned()))
    );
    let error = "http://x".parse::<Backend>().unwrap_err();
    assert!(error.contains("\"http://x\""), "{error}");
    assert!(error.contains(Backend::EXPECTED), "{error}");
    let error = "rediss://cache".parse::<Backend>().unwrap_err();
    assert!(error.contains("TLS"), "{error}");
    assert_eq!("close".parse::<Overflow>(), Ok(Overflow::Close));
    assert_eq!("drop-oldest".parse::<Overflow>(), Ok(Overflow::DropOldest));
    let error = "drop".parse::<Overflow>().unwrap_err();
    assert!(error.contains(Overflow::EXPECTED), "{error}");
    assert_eq!(
        format!(
            "{:?}",
            Backend::Redis("redis://user:secret@cache:6379/".to_owned())
        ),
        "Redis(\"redis://***@cache:6379/\")"
    );
}

#[tokio::test]
async fn a_redis_never_reached_fails_subscribe_and_publish_naming_it() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let broker = Broker::start(&PubSubConfig {
        backend: Backend::Redis(url.clone()),
        ..PubSubConfig::default()
    })
    .await;
    let status = broker.status();
    assert_eq!(status["backend"], "redis");
    assert_eq!(status["connected"], false);
    let app = AppPubSub::new(&broker);
    let runtime = tokio::runtime::Handle::current();
    let Err(PubSubError::Failed(message)) = app.subscribe("c", None).await else {
        panic!("subscribed without Redis");
    };
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("not connected"), "{message}");
    // The failed channel is forgotten, so a later subscribe tries again.
    assert_eq!(channel_status(&broker, "c"), None);
    let published = app.publish("c", Bytes::from_static(b"x"), &runtime).await;
    let Err(PubSubError::Failed(message)) = published else {
        panic!("published without Redis: {published:?}");
    };
    assert!(message.contains(&url), "{message}");
}

/// A `redis-server` of the test's own on a free port, killed when dropped; `None` when Redis
/// is not installed (the integration tests require it; these only use it when it is there).
struct RedisServer {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl RedisServer {
    fn start(name: &str) -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir =
            std::env::temp_dir().join(format!("berth-pubsub-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let mut server = RedisServer {
            port,
            dir,
            child: None,
        };
        server.resume().then_some(server)
    }

    fn resume(&mut self) -> bool {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            eprintln!("redis-server is not installed: skipping");
            return false;
        };
        self.child = Some(child);
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `subscription` until its next message, within five seconds.
async fn next_message(subscription: &Subscription) -> String {
    let next = tokio::time::timeout(
        Duration::from_secs(5),
        poll_fn(|cx| subscription.poll_next(cx)),
    )
    .await
    .expect("a message within 5 s");
    text(Some(next)).0
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !condition() {
        assert!(started.elapsed() < Duration::from_secs(20), "never {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fans_out_one_subscription_and_survives_a_restart() {
    let Some(mut redis) = RedisServer::start("restart") else {
        return;
    };
    let broker = Broker::start(&PubSubConfig {
        backend: Backend::Redis(redis.url()),
        max_message: 64,
        ..PubSubConfig::default()
    })
    .await;
    assert_eq!(broker.status()["connected"], true);
    let app = AppPubSub::new(&broker);
    let runtime = tokio::runtime::Handle::current();
    let a = app.subscribe("messages", None).await.unwrap();
    let b = app.subscribe("messages", None).await.unwrap();
    // One upstream subscription for both.
    assert_eq!(redis.cli(&["PUBSUB", "NUMSUB", "messages"]), "messages\n1");
    assert_eq!(redis.cli(&["PUBLISH", "messages", "from cli"]), "1");
    assert_eq!(next_message(&a).await, "from cli");
    assert_eq!(next_message(&b).await, "from cli");
    // A message over pubsub_max_message from someone else is not fanned out.
    assert_eq!(redis.cli(&["PUBLISH", "messages", &"x".repeat(65)]), "1");
    assert_eq!(redis.cli(&["PUBLISH", "messages", "small"]), "1");
    assert_eq!(next_message(&a).await, "small");
    assert_eq!(next_message(&b).await, "small");
    // Publishing goes through Redis too, which counts Berth instances, not subscribers.
    let reached = app
        .publish("messages", Bytes::from_static(b"from app"), &runtime)
        .await;
    assert_eq!(reached, Ok(1));
    assert_eq!(next_message(&a).await, "from app");
    assert_eq!(next_message(&b).await, "from app");

    redis.stop();
    wait_until("disconnected", || broker.status()["connected"] == false).await;
    let published = app
        .publish("messages", Bytes::from_static(b"lost"), &runtime)
        .await;
    assert!(
        matches!(published, Err(PubSubError::Failed(_))),
        "{published:?}"
    );
    // Registered during the gap: it receives once Redis is back.
    let c = app.subscribe("messages", None).await.unwrap();
    assert!(redis.resume());
    wait_until("reconnected", || broker.status()["connected"] == true).await;
    assert_eq!(broker.status()["reconnects"], 1);
    assert_eq!(redis.cli(&["PUBSUB", "NUMSUB", "messages"]), "messages\n1");
    assert_eq!(redis.cli(&["PUBLISH", "messages", "after"]), "1");
    for subscription in [&a, &b, &c] {
        assert_eq!(next_message(subscription).await, "after");
    }
    let reached = app
        .publish("messages", Bytes::from_static(b"again"), &runtime)
        .await;
    assert_eq!(reached, Ok(1));

    // The last one to go unsubscribes upstream.
    drop((a, b, c));
    let numsub = || redis.cli(&["PUBSUB", "NUMSUB", "messages"]);
    let started = std::time::Instant::now();
    while numsub() != "messages\n0" {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still subscribed upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn stopping_ends_streams_but_leaves_sessions_to_their_sockets() {
    let broker = Broker::memory(&PubSubConfig::default());
    let app = AppPubSub::new(&broker);
    let session: Arc<dyn SessionSocket> = Arc::new(Recorder::default());
    let stream = app.subscribe("c", None).await.unwrap();
    let socket = app.subscribe("c", Some(session)).await.unwrap();
    broker.end_streams("the server is stopping");
    match try_next(&stream) {
        Some(Next::End { reason, .. }) => assert_eq!(&*reason, "the server is stopping"),
        other => panic!("expected the end, got {other:?}"),
    }
    assert_eq!(try_next(&socket), None);
}

#[tokio::test]
async fn a_worker_broker_relays_what_it_publishes_and_delivers_what_is_relayed() {
    let broker = Broker::memory(&PubSubConfig::default());
    let relayed = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&relayed);
    broker.relay_to(Relay(Box::new(move |channel, payload| {
        sink.lock()
            .unwrap()
            .push((channel.to_owned(), payload.clone()));
    })));
    let app = AppPubSub::new(&broker);
    let runtime = tokio::runtime::Handle::current();
    let local = app.subscribe("news", None).await.unwrap();

    // Published here: delivered here, and relayed for the other workers.
    let reached = app
        .publish("news", Bytes::from_static(b"mine"), &runtime)
        .await;
    assert_eq!(reached, Ok(1));
    assert_eq!(text(try_next(&local)), ("mine".to_owned(), 0));
    assert_eq!(
        *relayed.lock().unwrap(),
        vec![("news".to_owned(), Bytes::from_static(b"mine"))]
    );

    // Published in another worker: delivered here, not relayed again.
    let reached = broker.deliver_relayed("news", Bytes::from_static(b"theirs"));
    assert_eq!(reached, 1);
    assert_eq!(text(try_next(&local)), ("theirs".to_owned(), 0));
    assert_eq!(relayed.lock().unwrap().len(), 1);
}
