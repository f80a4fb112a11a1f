//! The talk's chat demo: a WebSocket per browser, all of them on one pub/sub channel.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /chat/` | a small HTML page: the messages, an input box (plain JS, no build step, no CDN) |
//! | `/chat/ws` | a WebSocket: every message published on the channel goes to it as text, and every text message it sends is published (its sender receives it too) |
//! | `GET /chat/events` | the same feed as server-sent events (`data: ...`), for clients without WebSockets |
//! | `POST /chat/publish` | publishes the body; `200` with the number of receivers |
//!
//! Setting (`[apps.chat.settings]`): `channel`, default `messages`. With Berth's in-process
//! broker every socket of this instance shares the channel; with `pubsub = "redis://..."` in
//! Berth's config, so do other instances and `redis-cli PUBLISH messages hi`.
//!
//! Run with: `make run`, open <http://localhost:8080/chat/> in two windows, or
//! `curl -N localhost:8080/chat/events` and `curl -d hi localhost:8080/chat/publish`.

use std::future::{Future as _, poll_fn};
use std::pin::pin;
use std::task::Poll;

use berth_app::futures::{StreamExt as _, stream};
use berth_app::header::{CACHE_CONTROL, CONTENT_TYPE, UPGRADE};
use berth_app::{
    AppConfig, Body, BodyError, Bytes, Host, Message, Method, PubSubErrorKind, Request, Response,
    StatusCode, Utf8Bytes, WebSocket,
};

/// The channel when the `channel` setting is absent.
const DEFAULT_CHANNEL: &str = "messages";

/// The page, embedded in the library.
const PAGE: &str = include_str!("page.html");

/// What every request of this version shares: the channel, from the settings.
struct Chat {
    channel: String,
}

async fn init(config: AppConfig, _host: Host) -> Result<Chat, String> {
    let channel = config.get_or("channel", DEFAULT_CHANNEL);
    if channel.is_empty() {
        return Err("the setting channel is empty: name a channel, or leave it out".to_owned());
    }
    Ok(Chat {
        channel: channel.to_owned(),
    })
}

async fn app(req: Request, host: Host) -> Response {
    let channel = host
        .state::<Chat>()
        .map_or(DEFAULT_CHANNEL, |chat| chat.channel.as_str())
        .to_owned();
    match (req.method(), req.path()) {
        (_, "/ws") => match req.websocket() {
            Some(upgrade) => {
                upgrade.accept(&host, move |socket, host| session(socket, host, channel))
            }
            None => failure(StatusCode::UPGRADE_REQUIRED, "/ws is a WebSocket")
                .with_header(UPGRADE, "websocket"),
        },
        (&Method::GET, "/" | "") => Response::text(PAGE)
            .with_header(CONTENT_TYPE, "text/html; charset=utf-8")
            .with_header(CACHE_CONTROL, "no-cache"),
        (&Method::GET, "/events") => events(&host, &channel).await,
        (&Method::POST, "/publish") => publish(req, &host, &channel).await,
        (_, "/" | "" | "/events" | "/publish") => failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET /, GET /events, POST /publish",
        ),
        _ => failure(
            StatusCode::NOT_FOUND,
            "no such route: try /, /ws, /events or /publish",
        ),
    }
}

/// What woke the session up.
enum Event {
    /// A message on the channel, or its end.
    Published(Option<Bytes>),
    /// A message from the client, or its end.
    Client(Option<Message>),
}

/// One browser's socket: forwards the channel to it and publishes what it sends, until either
/// side ends. It subscribes with the session's own host, so a subscription that falls behind
/// under the host's close policy closes this socket (with 1008).
async fn session(mut socket: WebSocket, host: Host, channel: String) {
    let mut feed = match host.subscribe(&channel).await {
        Ok(feed) => feed,
        Err(err) => {
            berth_app::warn!(host, "chat: cannot subscribe to {channel:?}: {err}");
            let _ = socket.close(1011, "cannot subscribe to the channel").await;
            return;
        }
    };
    // Which side is polled first, alternating, so that neither a busy channel nor a chatty
    // client starves the other.
    let mut client_first = false;
    loop {
        // Both futures are cancel-safe: the one that loses the race loses nothing.
        let event = {
            let mut published = pin!(feed.next());
            let mut received = pin!(socket.recv());
            poll_fn(|cx| {
                client_first = !client_first;
                if client_first {
                    if let Poll::Ready(message) = received.as_mut().poll(cx) {
                        return Poll::Ready(Event::Client(message));
                    }
                    published.as_mut().poll(cx).map(Event::Published)
                } else {
                    if let Poll::Ready(payload) = published.as_mut().poll(cx) {
                        return Poll::Ready(Event::Published(payload));
                    }
                    received.as_mut().poll(cx).map(Event::Client)
                }
            })
            .await
        };
        match event {
            Event::Published(Some(payload)) => {
                let text = Utf8Bytes::from_bytes_lossy(payload);
                if socket.send(Message::Text(text)).await.is_err() {
                    break;
                }
            }
            Event::Published(None) => {
                let _ = socket.close(1001, &close_reason(feed.end_reason())).await;
                break;
            }
            Event::Client(Some(Message::Text(text))) => {
                if let Err(err) = host.publish(&channel, text.into_bytes()).await {
                    berth_app::warn!(host, "chat: cannot publish on {channel:?}: {err}");
                }
            }
            // Chat is text; binary messages are ignored.
            Event::Client(Some(Message::Binary(_))) => {}
            Event::Client(Some(Message::Close(frame))) => {
                let _ = socket.send(Message::Close(frame)).await;
                break;
            }
            Event::Client(None) => break,
        }
    }
}

/// The close reason for a feed the host ended (for `why`), within the 123 bytes a close
/// frame carries.
fn close_reason(why: Option<&str>) -> String {
    let mut reason = format!(
        "the channel's subscription ended: {}",
        why.unwrap_or("no reason given")
    );
    if reason.len() > 123 {
        let mut end = 123;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// The channel as server-sent events. The stream starts with a comment once the subscription
/// is in place (so a client knows what it will receive from then on), and ends when the host
/// ends the subscription (the version retired, the server stopping) or the client goes away.
async fn events(host: &Host, channel: &str) -> Response {
    // A host of its own: the stream outlives the request's deadline.
    let feed = match host.task_host().subscribe(channel).await {
        Ok(feed) => feed,
        Err(err) => return failure(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    };
    let subscribed = format!(": subscribed to {channel}\n\n");
    let first = stream::iter([Ok::<_, BodyError>(Bytes::from(subscribed))]);
    let messages = stream::unfold(feed, |mut feed| async move {
        let payload = feed.next().await?;
        Some((Ok(server_sent_event(&payload)), feed))
    });
    Response::stream(Body::from_stream(first.chain(messages)))
        .with_header(CONTENT_TYPE, "text/event-stream")
        .with_header(CACHE_CONTROL, "no-cache")
}

/// `payload` as one event: a `data:` line per line of it (any line break), then a blank line.
fn server_sent_event(payload: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(payload).replace("\r\n", "\n");
    let mut event = String::with_capacity(text.len() + 8);
    for line in text.split(['\n', '\r']) {
        event.push_str("data: ");
        event.push_str(line);
        event.push('\n');
    }
    event.push('\n');
    Bytes::from(event)
}

/// Publishes the request's body on the channel.
async fn publish(req: Request, host: &Host, channel: &str) -> Response {
    let body = match req.bytes().await {
        Ok(body) => body,
        Err(err) => return failure(StatusCode::BAD_REQUEST, &format!("reading the body: {err}")),
    };
    match host.publish(channel, body).await {
        Ok(receivers) => Response::text(format!("{receivers}\n")),
        Err(err) if err.kind() == PubSubErrorKind::Invalid => {
            failure(StatusCode::BAD_REQUEST, &err.to_string())
        }
        Err(err) => failure(StatusCode::SERVICE_UNAVAILABLE, &err.to_string()),
    }
}

fn failure(status: StatusCode, why: &str) -> Response {
    Response::text(format!("{why}\n")).with_status(status)
}

berth_app::export_app!(name = "chat", handler = app, init = init);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use berth_app::testing::{MockHost, MockWebSocket, block_on, websocket_request};
    use berth_app::{AppConfig, Bytes, Message, Method, Request, Response, StatusCode, header};

    fn chat(channel: &str) -> Arc<MockHost> {
        let config = AppConfig::new([("channel".to_owned(), channel.to_owned())].into());
        let state = block_on(super::init(config, Arc::new(MockHost::new()).host()));
        Arc::new(MockHost::new().with_state(state.expect("init")))
    }

    fn get(mock: &Arc<MockHost>, method: Method, path: &str, body: &'static str) -> Response {
        let request = Request::builder(method, path)
            .body(body)
            .build()
            .expect("valid");
        mock.call_shared(super::app, request)
    }

    fn text(response: Response) -> String {
        block_on(response.into_body().text()).expect("body")
    }

    /// Opens `/ws` and waits until its session has subscribed (`subscribers` in all).
    fn connect(mock: &Arc<MockHost>, channel: &str, subscribers: usize) -> MockWebSocket {
        let request = websocket_request("/ws").build().expect("valid");
        let response = mock.call_shared(super::app, request);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let client = mock.websocket().expect("accepted");
        mock.wait_for_subscribers(channel, subscribers);
        client
    }

    #[test]
    fn the_page_has_the_ids_the_browser_test_uses_and_no_cdn() {
        let mock = chat("messages");
        for prefix in ["/chat", "/elsewhere"] {
            let request = Request::builder(Method::GET, "/").mount_prefix(prefix);
            let response = mock.call_shared(super::app, request.build().expect("valid"));
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "text/html; charset=utf-8"
            );
            let page = text(response);
            for id in ["id=\"messages\"", "id=\"message\"", "id=\"send\""] {
                assert!(page.contains(id), "{id}");
            }
            assert!(page.contains("+ '/ws'"));
            assert!(!page.contains("http://") && !page.contains("https://"));
        }
    }

    #[test]
    fn every_socket_gets_what_any_publishes_its_sender_included() {
        let mock = chat("room");
        let alice = connect(&mock, "room", 1);
        let bob = connect(&mock, "room", 2);
        alice.send(Message::text("hi from alice"));
        assert_eq!(alice.recv(), Some(Message::text("hi from alice")));
        assert_eq!(bob.recv(), Some(Message::text("hi from alice")));
        // Binary is not chat.
        bob.send(Message::binary(vec![1, 2]));
        // As `redis-cli PUBLISH room hi` would.
        assert_eq!(mock.publish("room", "hi"), 2);
        assert_eq!(alice.recv(), Some(Message::text("hi")));
        assert_eq!(bob.recv(), Some(Message::text("hi")));
        assert_eq!(
            mock.published(),
            [
                ("room".to_owned(), Bytes::from("hi from alice")),
                ("room".to_owned(), Bytes::from("hi")),
            ]
        );
        // A close is answered, and that socket unsubscribes.
        bob.close(1000, "bye");
        assert_eq!(bob.recv(), Some(Message::close(1000, "bye")));
        assert_eq!(bob.join(), Ok(()));
        assert_eq!(mock.subscribers("room"), 1);
        alice.end();
        assert_eq!(alice.join(), Ok(()));
        assert_eq!(mock.subscribers("room"), 0);
    }

    #[test]
    fn a_subscription_the_host_ends_closes_the_socket() {
        let mock = chat("messages");
        let client = connect(&mock, "messages", 1);
        mock.end_subscriptions("messages", "the app version was retired");
        assert_eq!(
            client.recv(),
            Some(Message::close(
                1001,
                "the channel's subscription ended: the app version was retired"
            ))
        );
        assert_eq!(client.join(), Ok(()));
        let long = super::close_reason(Some(&"é".repeat(100)));
        assert!(
            long.len() <= 123 && long.starts_with("the channel's"),
            "{long}"
        );
    }

    #[test]
    fn events_stream_the_channel_as_server_sent_events() {
        let mock = chat("messages");
        let response = get(&mock, Method::GET, "/events", "");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut body = response.into_body();
        let first = block_on(body.chunk()).expect("a chunk").expect("no error");
        assert_eq!(first, ": subscribed to messages\n\n");
        assert_eq!(mock.publish("messages", "one"), 1);
        assert_eq!(mock.publish("messages", "two\r\nlines"), 1);
        let mut chunk = || block_on(body.chunk()).expect("a chunk").expect("no error");
        assert_eq!(chunk(), "data: one\n\n");
        assert_eq!(chunk(), "data: two\ndata: lines\n\n");
        mock.end_subscriptions("messages", "stopping");
        assert_eq!(
            block_on(body.chunk()),
            None,
            "the stream ends with the subscription"
        );
    }

    #[test]
    fn post_publish_answers_the_receiver_count() {
        let mock = chat("messages");
        let client = connect(&mock, "messages", 1);
        let response = get(&mock, Method::POST, "/publish", "from curl");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response), "1\n");
        assert_eq!(client.recv(), Some(Message::text("from curl")));
        client.end();
        assert_eq!(client.join(), Ok(()));
        assert_eq!(text(get(&mock, Method::POST, "/publish", "nobody")), "0\n");
    }

    #[test]
    fn wrong_methods_and_paths_say_so() {
        let mock = chat("messages");
        let cases = [
            (Method::GET, "/ws", StatusCode::UPGRADE_REQUIRED),
            (Method::GET, "/publish", StatusCode::METHOD_NOT_ALLOWED),
            (Method::POST, "/", StatusCode::METHOD_NOT_ALLOWED),
            (Method::GET, "/nope", StatusCode::NOT_FOUND),
        ];
        for (method, path, status) in cases {
            assert_eq!(
                get(&mock, method.clone(), path, "").status(),
                status,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn init_reads_the_channel_and_refuses_an_empty_one() {
        let host = Arc::new(MockHost::new()).host();
        let config = AppConfig::new([("channel".to_owned(), String::new())].into());
        assert!(block_on(super::init(config, host.clone())).is_err());
        let state = block_on(super::init(AppConfig::new(Default::default()), host));
        assert_eq!(
            state.map(|chat| chat.channel).ok().as_deref(),
            Some("messages")
        );
    }
}
