//! A mock host, to unit-test a handler with `cargo test` and no server (feature `testing`).
//!
//! ```
//! use berth_app::testing::MockHost;
//! use berth_app::{Host, Method, Request, Response};
//!
//! async fn app(req: Request, host: Host) -> Response {
//!     let upstream = host.get("http://example.test/").await.expect("mocked");
//!     let body = upstream.text().await.expect("mocked");
//!     Response::text(format!("{} says {body}", req.path()))
//! }
//!
//! let mock = MockHost::new().on_fetch(|req| {
//!     assert_eq!(req.url(), "http://example.test/");
//!     Ok(Response::text("hi"))
//! });
//! let response = mock.call(app, Request::builder(Method::GET, "/x").build().expect("valid request"));
//! assert_eq!(berth_app::testing::block_on(response.into_body().text()).unwrap(), "/x says hi");
//! ```

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use futures_executor::block_on;
use http::{HeaderMap, Method};

use crate::abi::{WS_ACCEPT_OK, WS_ACCEPT_TWICE};
use crate::ffi::host_handle::SharedState;
use crate::ffi::pubsub::SubEvent;
use crate::headers::Headers;
use crate::host::{
    FetchError, FetchErrorKind, FetchResponse, Host, Level, MockBackend, OutboundRequest,
};
use crate::pubsub::{MockFeed, PubSubError, PubSubErrorKind, Subscription};
use crate::request::{Request, RequestBuilder};
use crate::response::{IntoResponse, Response};
use crate::websocket::{Message, MockAccept, MockSocket, SendError, WebSocket};

type FetchFn = dyn Fn(OutboundRequest) -> Result<Response, FetchError> + Send + Sync;

/// A host that answers fetches with a closure, completes sleeps at once (adding them to a
/// virtual clock), records log lines, holds the app's state if given one, and runs spawned
/// tasks on threads of their own. It opens no sockets: [`Host::connect`](crate::Host::connect)
/// fails with `Unsupported`.
///
/// It also keeps the WebSocket sessions the app accepts, for the test to start as the client
/// ([`MockHost::websocket`]), and has an in-memory pub/sub broker that the app and the test
/// share ([`MockHost::publish`], [`MockHost::published`]).
pub struct MockHost {
    fetch: Option<Box<FetchFn>>,
    time_left: Option<Duration>,
    logs: Mutex<Vec<(Level, String)>>,
    slept: Mutex<Duration>,
    state: Option<SharedState>,
    /// Sessions accepted and not started yet, oldest first.
    accepted: Mutex<VecDeque<MockAccept>>,
    broker: Mutex<Broker>,
}

impl MockHost {
    /// A host whose fetches fail with [`FetchErrorKind::Connect`].
    pub fn new() -> Self {
        MockHost {
            fetch: None,
            time_left: None,
            logs: Mutex::new(Vec::new()),
            slept: Mutex::new(Duration::ZERO),
            state: None,
            accepted: Mutex::new(VecDeque::new()),
            broker: Mutex::new(Broker::default()),
        }
    }

    /// Gives the app's state, as `init` would have: [`Host::state`](crate::Host::state)
    /// returns it. Build it with the app's own `init` (`block_on(init(config, host))`) or by
    /// hand.
    pub fn with_state<S: Any + Send + Sync>(mut self, state: S) -> Self {
        self.state = Some(Arc::new(Box::new(state)));
        self
    }

    /// Answers every fetch with `handler`.
    pub fn on_fetch<F>(mut self, handler: F) -> Self
    where
        F: Fn(OutboundRequest) -> Result<Response, FetchError> + Send + Sync + 'static,
    {
        self.fetch = Some(Box::new(handler));
        self
    }

    /// Reports `time_left` from [`Host::time_left`](crate::Host::time_left) (default: no
    /// deadline).
    pub fn with_time_left(mut self, time_left: Duration) -> Self {
        self.time_left = Some(time_left);
        self
    }

    /// Runs `handler` on `request` to completion with this host.
    pub fn call<H, F, R>(self, handler: H, request: Request) -> Response
    where
        H: FnOnce(Request, Host) -> F,
        F: Future<Output = R>,
        R: IntoResponse,
    {
        Arc::new(self).call_shared(handler, request)
    }

    /// Like [`MockHost::call`], keeping the host to inspect its logs afterwards.
    pub fn call_shared<H, F, R>(self: &Arc<Self>, handler: H, request: Request) -> Response
    where
        H: FnOnce(Request, Host) -> F,
        F: Future<Output = R>,
        R: IntoResponse,
    {
        block_on(handler(request, self.host())).into_response()
    }

    /// A [`Host`] backed by this mock.
    pub fn host(self: &Arc<Self>) -> Host {
        Host::from_mock(Arc::clone(self) as Arc<dyn MockBackend>)
    }

    /// The log lines so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The total time handlers slept (virtual: sleeps complete at once).
    pub fn slept(&self) -> Duration {
        *self.slept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MockBackend for MockHost {
    fn log(&self, level: Level, message: &str) {
        let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        logs.push((level, message.to_owned()));
    }

    fn time_left(&self) -> Option<Duration> {
        self.time_left
    }

    fn sleep(&self, duration: Duration) {
        *self.slept.lock().unwrap_or_else(PoisonError::into_inner) += duration;
    }

    fn fetch(&self, request: OutboundRequest) -> Result<FetchResponse, FetchError> {
        let handler = self.fetch.as_ref().ok_or_else(|| {
            FetchError::new(
                FetchErrorKind::Connect,
                "the mock host has no fetch handler",
            )
        })?;
        let (status, headers, body) = handler(request)?.into_parts().map_err(|err| {
            FetchError::new(FetchErrorKind::Other, format!("the mock's response: {err}"))
        })?;
        Ok(FetchResponse::new(status, Headers::from_map(headers), body))
    }

    fn state(&self) -> Option<SharedState> {
        self.state.clone()
    }

    fn ws_accept(&self, accept: MockAccept) -> u32 {
        let mut accepted = lock(&self.accepted);
        // One pending session at a time: a second accept before the test started the first
        // is most likely one request accepting twice.
        if !accepted.is_empty() {
            return WS_ACCEPT_TWICE;
        }
        accepted.push_back(accept);
        WS_ACCEPT_OK
    }

    fn subscribe(&self, channel: &str) -> Result<Subscription, PubSubError> {
        if channel.is_empty() {
            let message = "the channel name is empty";
            return Err(PubSubError::new(PubSubErrorKind::Invalid, message));
        }
        let queue = Arc::new(Mutex::new(SubQueue::default()));
        let mut broker = lock(&self.broker);
        let subscribers = broker.channels.entry(channel.to_owned()).or_default();
        subscribers.push(Arc::downgrade(&queue));
        Ok(Subscription::from_mock(
            Box::new(MockSubscriber(queue)),
            channel,
        ))
    }

    fn publish(&self, channel: &str, payload: Bytes) -> Result<usize, PubSubError> {
        if channel.is_empty() {
            let message = "the channel name is empty";
            return Err(PubSubError::new(PubSubErrorKind::Invalid, message));
        }
        Ok(lock(&self.broker).publish(channel, payload))
    }
}

impl Default for MockHost {
    fn default() -> Self {
        MockHost::new()
    }
}

impl fmt::Debug for MockHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockHost")
            .field("has_fetch", &self.fetch.is_some())
            .field("slept", &self.slept())
            .field("has_state", &self.state.is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long a [`MockWebSocket`] waits for the app before the test fails.
const WAIT: Duration = Duration::from_secs(5);

/// The mock's send queue length per socket, and queue length per subscriber.
const QUEUE: usize = 64;

// --- WebSockets ---

impl MockHost {
    /// Starts the oldest WebSocket session the app accepted (with
    /// [`WebSocketUpgrade::accept`](crate::WebSocketUpgrade::accept)) and not started yet, as
    /// the host does once the connection is upgraded, and returns the client's end of it.
    /// The session runs on a thread of its own, with a host of its own (no deadline), until
    /// it returns. `None` when no session is waiting. The mock keeps one accepted session at a
    /// time, so start each before the next request accepts another (a second accept is
    /// refused as the host refuses a request accepted twice). Call the handler with
    /// [`call_shared`](MockHost::call_shared), which keeps the mock.
    ///
    /// ```
    /// use berth_app::testing::{MockHost, websocket_request};
    /// use berth_app::{Host, Message, Request, Response, StatusCode};
    /// use std::sync::Arc;
    ///
    /// async fn app(req: Request, host: Host) -> Response {
    ///     let Some(upgrade) = req.websocket() else {
    ///         return Response::text("WebSockets only\n").with_status(StatusCode::UPGRADE_REQUIRED);
    ///     };
    ///     upgrade.accept(&host, |mut socket, _host| async move {
    ///         while let Some(Message::Text(text)) = socket.recv().await {
    ///             let shout = text.to_uppercase();
    ///             if socket.send(Message::text(shout)).await.is_err() {
    ///                 break;
    ///             }
    ///         }
    ///     })
    /// }
    ///
    /// let mock = Arc::new(MockHost::new());
    /// let request = websocket_request("/").build().expect("valid request");
    /// assert_eq!(mock.call_shared(app, request).status(), StatusCode::SWITCHING_PROTOCOLS);
    /// let client = mock.websocket().expect("accepted");
    /// client.send(Message::text("hi"));
    /// assert_eq!(client.recv(), Some(Message::text("HI")));
    /// client.close(1000, "bye");
    /// // The session ends on the client's close without answering it: the host closes.
    /// assert_eq!(client.recv(), Some(Message::close(1000, "")));
    /// assert_eq!(client.join(), Ok(()));
    /// ```
    pub fn websocket(self: &Arc<Self>) -> Option<MockWebSocket> {
        let accept = lock(&self.accepted).pop_front()?;
        let shared = Arc::new(WsShared::default());
        let socket = WebSocket::from_mock(Arc::new(MockSocketEnd(Arc::clone(&shared))));
        let host = self.host().task_host();
        let logger = host.clone();
        let session = (accept.session)(socket, host);
        let ended = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("berth-mock-websocket".to_owned())
            .spawn(move || {
                let result = crate::ffi::catch(|| block_on(session));
                if let Err(message) = &result {
                    crate::error!(logger, "websocket session panicked: {message}");
                }
                ended.session_ended(result);
            });
        if let Err(err) = thread {
            shared.session_ended(Err(format!("the mock could not start a thread: {err}")));
        }
        Some(MockWebSocket {
            shared,
            protocol: accept.protocol,
            headers: accept.headers,
        })
    }
}

/// A WebSocket handshake request for `uri` (`GET` with the handshake's headers), to add to and
/// [`build`](RequestBuilder::build).
pub fn websocket_request(uri: &str) -> RequestBuilder {
    Request::builder(Method::GET, uri)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
}

/// The client's end of a WebSocket session a [`MockHost`] started: send it messages, read
/// what the app sent, and wait for the session to end. It behaves as the host does: a close
/// from either side ends what the app receives, a send after the app's close or after the
/// client went away fails with [`SendError::Closed`], and when the session ends without
/// having closed the socket the client gets a close with 1000 (1011 if it panicked).
#[derive(Debug)]
pub struct MockWebSocket {
    shared: Arc<WsShared>,
    protocol: Option<String>,
    headers: HeaderMap,
}

impl MockWebSocket {
    /// Sends `message` to the app, as the client. A [`Message::Close`] starts the closing
    /// handshake: the app receives it, then the end. Ignored once the client has closed or
    /// gone.
    pub fn send(&self, message: Message) {
        let mut state = self.shared.lock();
        if state.client_closed || state.client_gone {
            return;
        }
        state.client_closed = message.is_close();
        state.incoming.push_back(message);
        if let Some(waker) = state.recv_waker.take() {
            waker.wake();
        }
    }

    /// Closes from the client's side with `code` and `reason`.
    pub fn close(&self, code: u16, reason: &str) {
        self.send(Message::close(code, reason));
    }

    /// The client goes away without a close (the connection drops): the app receives what was
    /// sent before, then the end, and its sends fail.
    pub fn end(&self) {
        let mut state = self.shared.lock();
        state.client_gone = true;
        for waker in [state.recv_waker.take(), state.send_waker.take()]
            .into_iter()
            .flatten()
        {
            waker.wake();
        }
    }

    /// The next message the app sent, waiting for it; `None` once the session has ended and
    /// everything it sent was read.
    ///
    /// # Panics
    /// When nothing comes within 5 s (the app is stuck, or waits for the client).
    pub fn recv(&self) -> Option<Message> {
        let deadline = Instant::now() + WAIT;
        let mut state = self.shared.lock();
        loop {
            if let Some(message) = state.outgoing.pop_front() {
                if let Some(waker) = state.send_waker.take() {
                    waker.wake();
                }
                return Some(message);
            }
            if state.session.is_some() {
                return None;
            }
            state = self
                .shared
                .wait_until(state, deadline, "a message from the app");
        }
    }

    /// The next message the app sent, if there is one now.
    pub fn try_recv(&self) -> Option<Message> {
        let mut state = self.shared.lock();
        let message = state.outgoing.pop_front();
        if let Some(waker) = state.send_waker.take() {
            waker.wake();
        }
        message
    }

    /// Waits for the session to end: `Err` with the panic's message if it panicked.
    ///
    /// # Panics
    /// When the session has not ended within 5 s.
    pub fn join(&self) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        let mut state = self.shared.lock();
        loop {
            if let Some(result) = &state.session {
                return result.clone();
            }
            state = self
                .shared
                .wait_until(state, deadline, "the end of the session");
        }
    }

    /// The subprotocol the app chose.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The extra headers the app gave the `101`.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// What the app's socket and the test's client share.
#[derive(Debug, Default)]
struct WsShared {
    state: Mutex<WsState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct WsState {
    /// From the client, not received by the app yet.
    incoming: VecDeque<Message>,
    /// The client sent a close.
    client_closed: bool,
    /// The client went away.
    client_gone: bool,
    /// The app received the client's close: it receives nothing more.
    close_received: bool,
    /// From the app, not read by the client yet (at most [`QUEUE`]).
    outgoing: VecDeque<Message>,
    /// The app sent a close, or the session ended: it can send nothing more.
    app_closed: bool,
    /// The session's result, once it ended.
    session: Option<Result<(), String>>,
    recv_waker: Option<Waker>,
    send_waker: Option<Waker>,
}

impl WsShared {
    fn lock(&self) -> MutexGuard<'_, WsState> {
        lock(&self.state)
    }

    /// Waits for a change, failing the test at `deadline`.
    fn wait_until<'a>(
        &self,
        state: MutexGuard<'a, WsState>,
        deadline: Instant,
        what: &str,
    ) -> MutexGuard<'a, WsState> {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the mock WebSocket waited {WAIT:?} for {what}"
        );
        self.changed
            .wait_timeout(state, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// The session returned (or panicked): as the host, close the socket if the app did not.
    fn session_ended(&self, result: Result<(), String>) {
        let mut state = self.lock();
        if !state.app_closed && !state.client_gone {
            let code = if result.is_ok() { 1000 } else { 1011 };
            state.outgoing.push_back(Message::close(code, ""));
        }
        state.app_closed = true;
        state.session = Some(result);
        drop(state);
        self.changed.notify_all();
    }
}

/// The app's end of a mock socket.
#[derive(Debug)]
struct MockSocketEnd(Arc<WsShared>);

impl MockSocket for MockSocketEnd {
    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let mut state = self.0.lock();
        if state.close_received {
            return Poll::Ready(None);
        }
        if let Some(message) = state.incoming.pop_front() {
            state.close_received = message.is_close();
            return Poll::Ready(Some(message));
        }
        if state.client_gone {
            return Poll::Ready(None);
        }
        state.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        message: &mut Option<Message>,
    ) -> Poll<Result<(), SendError>> {
        let mut state = self.0.lock();
        if state.app_closed || state.client_gone {
            return Poll::Ready(Err(SendError::Closed));
        }
        if state.outgoing.len() >= QUEUE {
            state.send_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let Some(message) = message.take() else {
            return Poll::Ready(Ok(()));
        };
        if let Message::Text(text) = &message {
            debug_assert!(std::str::from_utf8(text.as_bytes()).is_ok());
        }
        state.app_closed = message.is_close();
        state.outgoing.push_back(message);
        drop(state);
        self.0.changed.notify_all();
        Poll::Ready(Ok(()))
    }
}

// --- Pub/sub ---

impl MockHost {
    /// Publishes `payload` on `channel` as another publisher would (`redis-cli PUBLISH`, say):
    /// every subscription of the app on it receives it. Returns how many did.
    pub fn publish(&self, channel: &str, payload: impl Into<Bytes>) -> usize {
        lock(&self.broker).publish(channel, payload.into())
    }

    /// Everything published through this mock, by the app or the test, in order.
    pub fn published(&self) -> Vec<(String, Bytes)> {
        lock(&self.broker).published.clone()
    }

    /// How many subscriptions to `channel` are open: wait for the app to have subscribed
    /// before publishing what it should receive.
    pub fn subscribers(&self, channel: &str) -> usize {
        let mut broker = lock(&self.broker);
        broker.live(channel).len()
    }

    /// Waits (up to 5 s) until `channel` has at least `count` subscriptions.
    ///
    /// # Panics
    /// When it does not.
    pub fn wait_for_subscribers(&self, channel: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.subscribers(channel) < count {
            assert!(
                Instant::now() < deadline,
                "{channel:?} had fewer than {count} subscribers for {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Ends every subscription to `channel` with `reason`, as the host does when the app
    /// version is retired or the server stops.
    pub fn end_subscriptions(&self, channel: &str, reason: &str) {
        let mut broker = lock(&self.broker);
        for queue in broker.live(channel) {
            let waker = {
                let mut queue = lock(&queue);
                queue.end = Some(reason.to_owned());
                queue.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

/// The mock's in-memory broker.
#[derive(Debug, Default)]
struct Broker {
    /// The subscriber queues of each channel (a dropped subscription's is gone).
    channels: HashMap<String, Vec<Weak<Mutex<SubQueue>>>>,
    published: Vec<(String, Bytes)>,
}

impl Broker {
    /// The open subscriptions to `channel`, forgetting the dropped ones.
    fn live(&mut self, channel: &str) -> Vec<Arc<Mutex<SubQueue>>> {
        let Some(subscribers) = self.channels.get_mut(channel) else {
            return Vec::new();
        };
        subscribers.retain(|queue| queue.strong_count() > 0);
        subscribers.iter().filter_map(Weak::upgrade).collect()
    }

    /// Queues `payload` for every subscriber of `channel`, dropping the oldest of a full
    /// queue (the host's default policy).
    fn publish(&mut self, channel: &str, payload: Bytes) -> usize {
        self.published.push((channel.to_owned(), payload.clone()));
        let receivers = self.live(channel);
        for queue in &receivers {
            let waker = {
                let mut queue = lock(queue);
                if queue.end.is_some() {
                    continue;
                }
                if queue.messages.len() >= QUEUE {
                    queue.messages.pop_front();
                    queue.dropped += 1;
                }
                queue.messages.push_back(payload.clone());
                queue.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
        receivers.len()
    }
}

/// One subscriber's queue.
#[derive(Debug, Default)]
struct SubQueue {
    messages: VecDeque<Bytes>,
    /// Dropped since the last message delivered.
    dropped: u64,
    end: Option<String>,
    waker: Option<Waker>,
}

/// A subscription's end of its queue; dropping it unsubscribes.
#[derive(Debug)]
struct MockSubscriber(Arc<Mutex<SubQueue>>);

impl MockFeed for MockSubscriber {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<(u64, SubEvent)> {
        let mut queue = lock(&self.0);
        let dropped = queue.dropped;
        if let Some(message) = queue.messages.pop_front() {
            queue.dropped = 0;
            return Poll::Ready((dropped, SubEvent::Message(message)));
        }
        if let Some(reason) = &queue.end {
            let reason = reason.clone();
            queue.dropped = 0;
            return Poll::Ready((dropped, SubEvent::End(reason)));
        }
        queue.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;
    use crate::Message;

    #[test]
    fn the_broker_drops_a_slow_subscribers_oldest_and_counts_them() {
        let mock = Arc::new(MockHost::new());
        let host = mock.host();
        let mut slow = block_on(host.subscribe("c")).expect("subscribed");
        for n in 0..QUEUE + 3 {
            assert_eq!(mock.publish("c", n.to_string()), 1);
        }
        assert_eq!(
            block_on(slow.next()),
            Some(Bytes::from("3")),
            "0, 1, 2 dropped"
        );
        assert_eq!(slow.dropped(), 3);
        let rest: Vec<_> = block_on(slow.by_ref().take(QUEUE - 1).collect());
        assert_eq!(rest.last(), Some(&Bytes::from((QUEUE + 2).to_string())));
        mock.end_subscriptions("c", "retired");
        assert_eq!(block_on(slow.next()), None);
        assert_eq!(slow.end_reason(), Some("retired"));
        assert_eq!(slow.channel(), "c");
        drop(slow);
        assert_eq!(block_on(host.publish("c", "nobody")), Ok(0));

        let invalid = block_on(host.subscribe("")).expect_err("invalid");
        assert_eq!(invalid.kind(), PubSubErrorKind::Invalid);
        assert_eq!(
            invalid.to_string(),
            "invalid channel: the channel name is empty"
        );
        assert_eq!(mock.published().len(), QUEUE + 4);
    }

    #[test]
    fn a_split_socket_reads_and_writes_at_once() {
        async fn app(req: Request, host: Host) -> Response {
            let Some(upgrade) = req.websocket() else {
                return Response::text("no");
            };
            upgrade.protocol("v1").header("x-note", "hi").accept(
                &host,
                |socket, _host| async move {
                    let (mut sender, receiver) = socket.split();
                    // Numbers every message while the client keeps sending.
                    let mut numbered = receiver.enumerate();
                    while let Some((n, message)) = numbered.next().await {
                        if message.is_close()
                            || sender.send(Message::text(n.to_string())).await.is_err()
                        {
                            break;
                        }
                    }
                    assert_eq!(sender.send(Message::text("late")).await, Ok(()));
                    assert_eq!(sender.close(1005, "").await, Err(SendError::Invalid));
                    sender.close(4000, "done").await.expect("closed");
                    assert_eq!(
                        sender.send(Message::text("later")).await,
                        Err(SendError::Closed)
                    );
                },
            )
        }
        let mock = Arc::new(MockHost::new());
        let request = websocket_request("/")
            .header("sec-websocket-protocol", "v0, v1")
            .build()
            .expect("valid");
        assert_eq!(
            mock.call_shared(app, request).status(),
            http::StatusCode::SWITCHING_PROTOCOLS
        );
        let client = mock.websocket().expect("accepted");
        assert_eq!(client.protocol(), Some("v1"));
        assert_eq!(client.headers()["x-note"], "hi");
        client.send(Message::text("a"));
        client.send(Message::binary(vec![1]));
        assert_eq!(client.recv(), Some(Message::text("0")));
        assert_eq!(client.recv(), Some(Message::text("1")));
        client.close(1000, "");
        client.send(Message::text("ignored after the close"));
        assert_eq!(client.recv(), Some(Message::text("late")));
        assert_eq!(client.recv(), Some(Message::close(4000, "done")));
        assert_eq!(client.recv(), None);
        assert_eq!(client.join(), Ok(()));
    }

    #[test]
    fn a_session_that_panics_is_closed_with_1011_and_logged() {
        async fn app(req: Request, host: Host) -> Response {
            match req.websocket() {
                Some(upgrade) => upgrade.accept(&host, |_socket, _host| async { panic!("boom") }),
                None => Response::text("no"),
            }
        }
        let mock = Arc::new(MockHost::new());
        let request = websocket_request("/").build().expect("valid");
        mock.call_shared(app, request);
        let client = mock.websocket().expect("accepted");
        assert_eq!(client.recv(), Some(Message::close(1011, "")));
        let message = client.join().expect_err("panicked");
        assert!(message.starts_with("boom"), "{message}");
        let logs = mock.logs();
        assert!(
            logs.iter().any(|(level, line)| *level == Level::Error
                && line.starts_with("websocket session panicked: boom")),
            "{logs:?}"
        );
        assert!(mock.websocket().is_none(), "started once");
    }
}
