//! The host's capabilities: outbound HTTP, timers, logging, sockets, tasks and the app's
//! state.
//!
//! A plugin links its own copy of any async runtime it depends on, and that copy has no reactor:
//! `tokio::time::sleep`, `tokio::spawn` or a tokio socket called from app code panics with
//! "there is no reactor running", even though Berth's runtime is polling the app. Everything that
//! waits on the outside world therefore goes through [`Host`], whose futures run on the host's
//! runtime. Pure computation, `futures` combinators (`join`, `select`) and channels from
//! runtime-agnostic crates work as usual.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode};

use crate::abi::{
    FETCH_CONNECT, FETCH_DENIED, FETCH_INVALID_REQUEST, FETCH_TIMEOUT, FfiFuture, LOG_DEBUG,
    LOG_ERROR, LOG_INFO, LOG_TRACE, LOG_WARN,
};
use crate::body::Body;
use crate::error::{BodyError, HeaderError};
use crate::ffi::host_handle::{ConnectArgs, FetchParts, HostFetch, HostHandle, SharedState};
use crate::headers::{Add, Headers};
use crate::net::{Connect, ConnectOptions};
use crate::task::JoinHandle;

/// The host, handed to every request: outbound HTTP, timers, logging, sockets, background
/// tasks and the app's state.
///
/// Cloning is cheap (a reference count in the host). The futures it returns own what they need,
/// so they can be stored, raced and joined freely; dropping one cancels the work on the host
/// (an outbound request in flight is aborted and its connection closed).
#[derive(Clone, Debug)]
pub struct Host {
    pub(crate) inner: Inner,
    /// The app's state, once [`Host::state`] has asked for it: a reference of this handle's
    /// own (shared by its clones).
    state: OnceLock<Option<SharedState>>,
}

#[derive(Clone, Debug)]
pub(crate) enum Inner {
    Real(HostHandle),
    #[cfg(feature = "testing")]
    Mock(std::sync::Arc<dyn MockBackend>),
}

/// What a [`Host`] backed by a mock needs of it: the `testing` feature's
/// [`MockHost`](crate::testing::MockHost) implements it, so that this module need not know it.
#[cfg(feature = "testing")]
pub(crate) trait MockBackend: fmt::Debug + Send + Sync {
    /// Records a log line.
    fn log(&self, level: Level, message: &str);
    /// The time left before the request's deadline, if it has one.
    fn time_left(&self) -> Option<Duration>;
    /// Records a sleep, which completes at once.
    fn sleep(&self, duration: Duration);
    /// Answers a fetch.
    fn fetch(&self, request: OutboundRequest) -> Result<FetchResponse, FetchError>;
    /// The app's state, if the mock was given one.
    fn state(&self) -> Option<SharedState>;
    /// Takes a WebSocket session the app accepted: a `WS_ACCEPT_*` tag.
    fn ws_accept(&self, accept: crate::websocket::MockAccept) -> u32;
    /// Subscribes to a channel of the mock's broker.
    fn subscribe(
        &self,
        channel: &str,
    ) -> Result<crate::pubsub::Subscription, crate::pubsub::PubSubError>;
    /// Publishes on a channel of the mock's broker.
    fn publish(&self, channel: &str, payload: Bytes) -> Result<usize, crate::pubsub::PubSubError>;
}

/// The mock as a spawned task sees it: the same, without a deadline.
#[cfg(feature = "testing")]
#[derive(Debug)]
struct MockTask(std::sync::Arc<dyn MockBackend>);

#[cfg(feature = "testing")]
impl MockBackend for MockTask {
    fn log(&self, level: Level, message: &str) {
        self.0.log(level, message);
    }
    fn time_left(&self) -> Option<Duration> {
        None
    }
    fn sleep(&self, duration: Duration) {
        self.0.sleep(duration);
    }
    fn fetch(&self, request: OutboundRequest) -> Result<FetchResponse, FetchError> {
        self.0.fetch(request)
    }
    fn state(&self) -> Option<SharedState> {
        self.0.state()
    }
    fn ws_accept(&self, _accept: crate::websocket::MockAccept) -> u32 {
        // As the real host's: a task serves no request to upgrade.
        crate::abi::WS_ACCEPT_NOT_UPGRADE
    }
    fn subscribe(
        &self,
        channel: &str,
    ) -> Result<crate::pubsub::Subscription, crate::pubsub::PubSubError> {
        self.0.subscribe(channel)
    }
    fn publish(&self, channel: &str, payload: Bytes) -> Result<usize, crate::pubsub::PubSubError> {
        self.0.publish(channel, payload)
    }
}

/// Log levels for [`Host::log`] and the logging macros.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something looks wrong.
    Warn,
    /// Normal operation.
    Info,
    /// Detail for debugging.
    Debug,
    /// Very fine detail.
    Trace,
}

impl Level {
    fn to_abi(self) -> u32 {
        match self {
            Level::Error => LOG_ERROR,
            Level::Warn => LOG_WARN,
            Level::Info => LOG_INFO,
            Level::Debug => LOG_DEBUG,
            Level::Trace => LOG_TRACE,
        }
    }
}

impl Host {
    pub(crate) fn from_handle(handle: HostHandle) -> Self {
        Host {
            state: OnceLock::new(),
            inner: Inner::Real(handle),
        }
    }

    #[cfg(feature = "testing")]
    pub(crate) fn from_mock(mock: std::sync::Arc<dyn MockBackend>) -> Self {
        Host {
            state: OnceLock::new(),
            inner: Inner::Mock(mock),
        }
    }

    /// Writes `message` to the host's log at `level`, tagged with the app's name. The
    /// [`info!`](crate::info) family of macros formats and calls this.
    pub fn log(&self, level: Level, message: &str) {
        match &self.inner {
            Inner::Real(handle) => handle.log(level.to_abi(), message),
            #[cfg(feature = "testing")]
            Inner::Mock(mock) => mock.log(level, message),
        }
    }

    /// Time left before the host gives up on this request (its `request_timeout`), if it has
    /// a deadline. Every outbound call is bounded by it too, so no call outlives its request;
    /// an app can use it to skip work it cannot finish in time.
    pub fn time_left(&self) -> Option<Duration> {
        match &self.inner {
            Inner::Real(handle) => handle.time_left(),
            #[cfg(feature = "testing")]
            Inner::Mock(mock) => mock.time_left(),
        }
    }

    /// Waits for `duration` on the host's timer.
    pub fn sleep(&self, duration: Duration) -> Sleep {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        match &self.inner {
            Inner::Real(handle) => Sleep(Some(handle.sleep(nanos))),
            #[cfg(feature = "testing")]
            Inner::Mock(mock) => {
                mock.sleep(duration);
                Sleep(None)
            }
        }
    }

    /// Runs `future`, giving up after `duration` (asyncio's `wait_for`), counted from this call.
    /// On time-out the future is dropped, cancelling whatever it was waiting on.
    pub fn timeout<F: Future>(&self, duration: Duration, future: F) -> Timeout<F> {
        Timeout {
            future,
            timer: self.sleep(duration),
            duration,
        }
    }

    /// Sends an outbound HTTP request through the host's pooled client.
    ///
    /// Failures (bad URL, a header [`OutboundRequest::header`] could not set, unreachable
    /// upstream, time-out) are returned as [`FetchError`] values, never panics. Any status the upstream answers with, 5xx included, is an `Ok`.
    pub fn fetch(&self, request: OutboundRequest) -> Fetch {
        if let Some(err) = request.header_error() {
            let error = FetchError::new(FetchErrorKind::InvalidRequest, err.to_string());
            return Fetch(FetchInner::Ready(Some(Box::new(Err(error)))));
        }
        match &self.inner {
            Inner::Real(handle) => {
                let timeout_ms = request.timeout.map_or(0, |t| {
                    u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
                });
                let limit = handle.max_buffered_response();
                let future = handle.fetch(
                    request.method.as_str(),
                    &request.url,
                    &request.headers,
                    request.body.into_abi(),
                    timeout_ms,
                );
                Fetch(FetchInner::Real(future, limit))
            }
            #[cfg(feature = "testing")]
            Inner::Mock(mock) => Fetch(FetchInner::Ready(Some(Box::new(mock.fetch(request))))),
        }
    }

    /// `GET url`: shorthand for `fetch(OutboundRequest::get(url))`.
    pub fn get(&self, url: impl Into<String>) -> Fetch {
        self.fetch(OutboundRequest::get(url))
    }

    /// Opens a plain TCP connection to `host:port` through the host: shorthand for
    /// `connect_with(ConnectOptions::new(host, port))`.
    pub fn connect(&self, host: &str, port: u16) -> Connect {
        self.connect_with(ConnectOptions::new(host, port))
    }

    /// Opens a TCP connection, with TLS if asked, through the host: it resolves the name,
    /// checks the app's allowlist (`allowed_outbound_hosts` in `berth.toml`, e.g.
    /// `"tcp://db:5432"`; nothing is allowed by default), and limits the time and the number
    /// of sockets the app holds. The stream then
    /// reads and writes through the host's reactor; see [`HostStream`](crate::HostStream).
    ///
    /// Failures are [`std::io::Error`]s whose kind says why (see [`Connect`]). A mock host
    /// opens no sockets: it fails with `Unsupported`.
    pub fn connect_with(&self, options: ConnectOptions) -> Connect {
        match &self.inner {
            Inner::Real(handle) => {
                let timeout_ms = options.timeout.map_or(0, |t| {
                    u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
                });
                Connect(handle.connect(&ConnectArgs {
                    host: &options.host,
                    port: options.port,
                    tls: options.tls,
                    server_name: options.server_name.as_deref().unwrap_or(""),
                    timeout_ms,
                }))
            }
            #[cfg(feature = "testing")]
            Inner::Mock(_) => Connect(crate::ffi::socket::SocketConnect::failed(
                crate::net::UNSUPPORTED,
                "sockets need a real host: the mock host opens none",
            )),
        }
    }

    /// Runs `future` as a task of its own on the host's runtime, beside the request (a
    /// plugin cannot use `tokio::spawn`): for connection drivers, background refreshes, work
    /// that should go on while the handler waits for something else.
    ///
    /// The task belongs to the app version, not to the request: no request deadline bounds
    /// it, and the host cancels it after the version's `shutdown` hook. **Dropping the
    /// [`JoinHandle`] cancels the task** (unlike tokio's), so keep the handle for as long as
    /// the task should run. A panic in the task is caught, logged ("task panicked: ...") and
    /// returned as a [`JoinError`](crate::JoinError).
    ///
    /// A task that uses the host (timers, fetches, sockets) should use a host of its own,
    /// [`task_host`](Host::task_host), rather than a clone of the request's: that one's
    /// deadline is the request's, and it keeps the request's data alive. [`spawn_with`](Host::spawn_with)
    /// hands it one. With a mock host, the task runs on a thread of its own.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.inner {
            Inner::Real(handle) => {
                let task = handle.task_handle().unwrap_or_else(|| handle.clone());
                JoinHandle::spawn_real(handle, task, future)
            }
            #[cfg(feature = "testing")]
            Inner::Mock(_) => JoinHandle::spawn_mock(self.task_host(), future),
        }
    }

    /// [`spawn`](Host::spawn)s the future `make` builds from a [`task_host`](Host::task_host):
    ///
    /// ```
    /// # async fn app(host: berth_app::Host) {
    /// let refresh = host.spawn_with(|host| async move {
    ///     host.sleep(std::time::Duration::from_secs(1)).await;
    ///     host.get("http://config.internal/flags").await.is_ok()
    /// });
    /// let refreshed: bool = refresh.await.unwrap_or(false);
    /// # }
    /// ```
    pub fn spawn_with<M, F>(&self, make: M) -> JoinHandle<F::Output>
    where
        M: FnOnce(Host) -> F,
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn(make(self.task_host()))
    }

    /// A host for work that outlives the request: the same app version, but no request
    /// deadline ([`time_left`](Host::time_left) is `None`) and none of the request's data
    /// kept alive. For spawned tasks, and for what `init` builds to use later (a connection
    /// pool connects through it, so its connections are not bound to whichever request
    /// happened to open them).
    pub fn task_host(&self) -> Host {
        match &self.inner {
            Inner::Real(handle) => match handle.task_handle() {
                Some(task) => Host::from_handle(task),
                None => self.clone(),
            },
            #[cfg(feature = "testing")]
            Inner::Mock(mock) => {
                Host::from_mock(std::sync::Arc::new(MockTask(std::sync::Arc::clone(mock))))
            }
        }
    }

    /// The app's state: what the `init` hook returned (see [`export_app!`](crate::export_app)),
    /// if it is of type `S`. `None` when `init` returned nothing, or something else (the type
    /// is checked, never assumed), or when the app version has been retired.
    ///
    /// The first call on a `Host` takes a reference to the state, which the `Host` keeps: the
    /// state lives at least as long as this `&Host` (Berth releases its own reference when the
    /// version is retired, so a state that holds a `Host` itself is still freed then). To keep
    /// it across `.await`s in a `'static` future, clone the host, or use
    /// [`state_handle`](Host::state_handle).
    pub fn state<S: Any + Send + Sync>(&self) -> Option<&S> {
        let shared = self.state.get_or_init(|| match &self.inner {
            Inner::Real(handle) => handle.app_state(),
            #[cfg(feature = "testing")]
            Inner::Mock(mock) => mock.state(),
        });
        shared.as_deref()?.downcast_ref()
    }

    /// The app's state as an owned handle ([`State`]) that derefs to `S`, for code that wants
    /// the state without a `&Host` beside it. `None` as for [`state`](Host::state).
    pub fn state_handle<S: Any + Send + Sync>(&self) -> Option<State<S>> {
        self.state::<S>()?;
        let shared = self.state.get()?.clone()?;
        Some(State {
            shared,
            _state: PhantomData,
        })
    }

    /// Hands `init`'s result to the host as the app version's state.
    pub(crate) fn set_state(&self, state: Box<dyn Any + Send + Sync>) -> Result<(), String> {
        match &self.inner {
            Inner::Real(handle) => handle.set_app_state(state),
            #[cfg(feature = "testing")]
            Inner::Mock(_) => {
                Err("a mock host's state is given with MockHost::with_state".to_owned())
            }
        }
    }
}

/// The app's state, owned: a reference to it (which keeps it alive) that derefs to `S`.
/// From [`Host::state_handle`].
pub struct State<S> {
    shared: SharedState,
    _state: PhantomData<fn() -> S>,
}

impl<S: Any + Send + Sync> Deref for State<S> {
    type Target = S;

    fn deref(&self) -> &S {
        match self.shared.downcast_ref::<S>() {
            Some(state) => state,
            // `state_handle` checked the type, and a state never changes its type.
            None => unreachable!("a State handle's state is not an S"),
        }
    }
}

impl<S> Clone for State<S> {
    fn clone(&self) -> Self {
        State {
            shared: SharedState::clone(&self.shared),
            _state: PhantomData,
        }
    }
}

impl<S: Any + Send + Sync + fmt::Debug> fmt::Debug for State<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("State").field(&**self).finish()
    }
}

/// The future of [`Host::sleep`].
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep(Option<FfiFuture<u32>>);

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.get_mut().0 {
            Some(timer) => Pin::new(timer).poll(cx).map(|_| ()),
            None => Poll::Ready(()),
        }
    }
}

impl fmt::Debug for Sleep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sleep")
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Host::timeout`]. A struct rather than an `async fn`: an async fn would
    /// hold `future` twice (as its argument and pinned for polling), and an app's whole future
    /// is moved into a box once per request.
    #[must_use = "futures do nothing unless awaited"]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        timer: Sleep,
        duration: Duration,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let duration = *this.duration;
        Pin::new(this.timer)
            .poll(cx)
            .map(|()| Err(Elapsed(duration)))
    }
}

impl<F> fmt::Debug for Timeout<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

/// [`Host::timeout`] ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(pub Duration);

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

impl std::error::Error for Elapsed {}

/// The future of [`Host::fetch`]. Dropping it aborts the request on the host.
#[must_use = "futures do nothing unless awaited"]
pub struct Fetch(FetchInner);

enum FetchInner {
    Real(HostFetch, Option<u64>),
    /// Boxed: rare (a header the app could not set, or a mock host), and inline it would size
    /// every fetch's future for a whole response.
    Ready(Option<Box<Result<FetchResponse, FetchError>>>),
}

impl Future for Fetch {
    type Output = Result<FetchResponse, FetchError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            FetchInner::Real(future, limit) => {
                let limit = *limit;
                Pin::new(future)
                    .poll(cx)
                    .map(|parts| fetch_result(parts, limit))
            }
            FetchInner::Ready(result) => Poll::Ready(result.take().map_or_else(
                || {
                    Err(FetchError::new(
                        FetchErrorKind::Other,
                        "fetch polled after completion",
                    ))
                },
                |result| *result,
            )),
        }
    }
}

impl fmt::Debug for Fetch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Fetch")
    }
}

/// An outbound HTTP request, built for [`Host::fetch`].
///
/// ```
/// use berth_app::{Method, OutboundRequest, header};
/// use std::time::Duration;
/// let req = OutboundRequest::new(Method::POST, "http://127.0.0.1:8080/items")
///     .header(header::CONTENT_TYPE, "application/json")
///     .body(r#"{"id": 7}"#)
///     .timeout(Duration::from_secs(5));
/// assert_eq!(req.url(), "http://127.0.0.1:8080/items");
/// ```
#[derive(Debug)]
pub struct OutboundRequest {
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Body,
    timeout: Option<Duration>,
    /// The first header that could not be set.
    header_error: Option<Box<HeaderError>>,
}

impl OutboundRequest {
    /// A request with `method` to absolute `url` (`http://host:port/path?query`).
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        OutboundRequest {
            method,
            url: url.into(),
            headers: HeaderMap::new(),
            body: Body::empty(),
            timeout: None,
            header_error: None,
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        OutboundRequest::new(Method::GET, url)
    }

    /// Appends a header. `name` and `value` may be anything the `http` crate's builders
    /// accept, as for [`Response::with_header`](crate::Response::with_header).
    ///
    /// An invalid name or value does not panic: the request keeps the first such
    /// [`HeaderError`], and [`Host::fetch`] fails with [`FetchErrorKind::InvalidRequest`] and
    /// its message, without sending anything.
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: Into<http::Error>,
        V: TryInto<HeaderValue>,
        V::Error: Into<http::Error>,
    {
        let (headers, error) = (&mut self.headers, &mut self.header_error);
        crate::headers::set(headers, error, Add::Append, name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// Limits the time until the response head arrives (default: the host's outbound timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Takes the body out (mock hosts read it).
    pub fn take_body(&mut self) -> Body {
        std::mem::take(&mut self.body)
    }

    /// The time limit, if one was set.
    pub fn timeout_value(&self) -> Option<Duration> {
        self.timeout
    }

    /// The first header that could not be set, if any: [`Host::fetch`] fails with it.
    pub fn header_error(&self) -> Option<&HeaderError> {
        self.header_error.as_deref()
    }
}

/// An upstream's answer to [`Host::fetch`]; the body streams from the upstream as it is read.
#[derive(Debug)]
pub struct FetchResponse {
    status: StatusCode,
    headers: Headers,
    body: Body,
    buffer_limit: Option<u64>,
}

impl FetchResponse {
    pub(crate) fn new(status: StatusCode, headers: Headers, body: Body) -> Self {
        FetchResponse {
            status,
            headers,
            body,
            buffer_limit: None,
        }
    }

    pub(crate) fn with_buffer_limit(mut self, limit: Option<u64>) -> Self {
        self.buffer_limit = limit;
        self
    }

    /// The upstream's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The upstream's headers.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.map()
    }

    /// The body, to read chunk by chunk.
    pub fn body_mut(&mut self) -> &mut Body {
        &mut self.body
    }

    /// Consumes the response, returning its body (e.g. to stream it into the app's response).
    pub fn into_body(self) -> Body {
        self.body
    }

    /// Reads the whole body into memory, up to the host's limit for buffered responses
    /// (`outbound_max_buffered`; a larger body is an error: stream it with
    /// [`into_body`](FetchResponse::into_body) instead).
    pub async fn bytes(self) -> Result<Bytes, BodyError> {
        let limit = self
            .buffer_limit
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        self.body.bytes_limited(limit).await
    }

    /// Reads the whole body as text (invalid UTF-8 replaced), within the same limit as
    /// [`bytes`](FetchResponse::bytes).
    pub async fn text(self) -> Result<String, BodyError> {
        let bytes = self.bytes().await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Reads the whole body as JSON, within the same limit as [`bytes`](FetchResponse::bytes).
    #[cfg(feature = "json")]
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, BodyError> {
        crate::body::from_json(&self.bytes().await?)
    }
}

/// The SDK's result of a host's answer to an outbound request.
pub(crate) fn fetch_result(
    parts: FetchParts,
    buffer_limit: Option<u64>,
) -> Result<FetchResponse, FetchError> {
    use FetchErrorKind as Kind;
    match parts {
        Ok((status, headers, body)) => {
            Ok(
                FetchResponse::new(status, Headers::lent(headers), Body::from_foreign(body))
                    .with_buffer_limit(buffer_limit),
            )
        }
        Err((tag, message)) => {
            let kind = match tag {
                FETCH_INVALID_REQUEST => Kind::InvalidRequest,
                FETCH_CONNECT => Kind::Connect,
                FETCH_TIMEOUT => Kind::Timeout,
                FETCH_DENIED => Kind::Denied,
                _ => Kind::Other,
            };
            Err(FetchError::new(kind, message))
        }
    }
}

/// Why an outbound request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FetchErrorKind {
    /// The request was malformed: bad method, URL, header or scheme.
    InvalidRequest,
    /// No connection could be made.
    Connect,
    /// The time limit passed before the response head arrived.
    Timeout,
    /// The host's policy does not allow this request.
    Denied,
    /// Anything else (connection reset, protocol error, ...).
    Other,
}

/// An outbound request failed; [`kind`](FetchError::kind) says how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    kind: FetchErrorKind,
    message: String,
}

impl FetchError {
    /// An error of `kind` with a message.
    pub fn new(kind: FetchErrorKind, message: impl Into<String>) -> Self {
        FetchError {
            kind,
            message: message.into(),
        }
    }

    /// How the request failed.
    pub fn kind(&self) -> FetchErrorKind {
        self.kind
    }

    /// Whether the time limit ran out.
    pub fn is_timeout(&self) -> bool {
        self.kind == FetchErrorKind::Timeout
    }

    /// The host's description.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            FetchErrorKind::InvalidRequest => "invalid request",
            FetchErrorKind::Connect => "connect error",
            FetchErrorKind::Timeout => "timed out",
            FetchErrorKind::Denied => "denied",
            FetchErrorKind::Other => "upstream error",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for FetchError {}

/// Logs at error level through a [`Host`]: `error!(host, "upstream {} failed", url)`.
#[macro_export]
macro_rules! error {
    ($host:expr, $($arg:tt)+) => { $host.log($crate::Level::Error, &::std::format!($($arg)+)) };
}

/// Logs at warn level through a [`Host`]: `warn!(host, "retrying {}", url)`.
#[macro_export]
macro_rules! warn {
    ($host:expr, $($arg:tt)+) => { $host.log($crate::Level::Warn, &::std::format!($($arg)+)) };
}

/// Logs at info level through a [`Host`]: `info!(host, "fetched {} bytes", n)`.
#[macro_export]
macro_rules! info {
    ($host:expr, $($arg:tt)+) => { $host.log($crate::Level::Info, &::std::format!($($arg)+)) };
}

/// Logs at debug level through a [`Host`].
#[macro_export]
macro_rules! debug {
    ($host:expr, $($arg:tt)+) => { $host.log($crate::Level::Debug, &::std::format!($($arg)+)) };
}

/// Logs at trace level through a [`Host`].
#[macro_export]
macro_rules! trace {
    ($host:expr, $($arg:tt)+) => { $host.log($crate::Level::Trace, &::std::format!($($arg)+)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_header_name_or_value_is_kept_as_an_error_not_a_panic() {
        let req = OutboundRequest::get("http://upstream.test/")
            .header("x-ok", "1")
            .header("bad name", "x")
            .header("x-note", "line\nbreak");
        let err = req.header_error().expect("kept");
        assert_eq!(err.to_string(), "invalid header name");
        assert_eq!(req.headers()["x-ok"], "1");
        let req = OutboundRequest::get("http://upstream.test/")
            .header(http::header::CONTENT_TYPE, String::from("text/plain"))
            .header("x-note", "line\nbreak");
        let err = req.header_error().expect("kept");
        assert_eq!(err.to_string(), "invalid value for header x-note");
        assert_eq!(req.headers()["content-type"], "text/plain");
    }

    #[cfg(feature = "testing")]
    #[test]
    fn a_fetch_with_a_bad_header_fails_as_an_invalid_request() {
        use crate::testing::{MockHost, block_on};
        let mock = std::sync::Arc::new(
            MockHost::new().on_fetch(|_| panic!("a request with a bad header is never sent")),
        );
        let bad = OutboundRequest::get("http://upstream.test/").header("x-note", "a\rb");
        let err = block_on(mock.host().fetch(bad)).expect_err("invalid");
        assert_eq!(err.kind(), FetchErrorKind::InvalidRequest);
        assert_eq!(
            err.to_string(),
            "invalid request: invalid value for header x-note"
        );
    }

    #[cfg(all(feature = "testing", feature = "json"))]
    #[test]
    fn a_fetch_response_reads_json() {
        use crate::testing::{MockHost, block_on};
        let mock = std::sync::Arc::new(
            MockHost::new().on_fetch(|_| Ok(crate::Response::json(&[1, 2, 3]))),
        );
        let response = block_on(mock.host().get("http://upstream.test/")).expect("mocked");
        let numbers: Vec<u32> = block_on(response.json()).expect("json");
        assert_eq!(numbers, [1, 2, 3]);
    }

    #[cfg(feature = "testing")]
    #[test]
    fn a_mock_host_keeps_state_runs_tasks_and_opens_no_sockets() {
        use crate::testing::{MockHost, block_on};
        let mock = std::sync::Arc::new(
            MockHost::new()
                .with_state(41_u32)
                .with_time_left(Duration::from_secs(1)),
        );
        let host = mock.host();
        assert_eq!(host.state::<u32>(), Some(&41));
        assert_eq!(host.state::<i64>(), None, "a wrong type is None");
        assert_eq!(
            host.task_host().time_left(),
            None,
            "a task host has no deadline"
        );
        let state = host.state_handle::<u32>().expect("state");
        let sum = host.spawn(async move { *state + 1 });
        assert_eq!(block_on(sum), Ok(42));
        let err = block_on(host.spawn(async { panic!("boom in a mock task") })).expect_err("panic");
        assert!(
            err.is_panic() && err.message().starts_with("boom in a mock task"),
            "{err}"
        );
        assert_eq!(mock.logs()[0].0, Level::Error);
        // Dropping the handle cancels a task that would never end.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let forever = host.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await
        });
        forever.abort();
        assert!(rx.recv().is_err(), "the task (and its sender) was dropped");
        let err = block_on(host.connect("db.test", 5432)).expect_err("no sockets");
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported);
    }

    #[cfg(feature = "testing")]
    #[test]
    fn a_mock_response_with_a_bad_header_is_a_fetch_error() {
        use crate::testing::{MockHost, block_on};
        let mock = std::sync::Arc::new(
            MockHost::new()
                .on_fetch(|_| Ok(crate::Response::text("x").with_header("bad name", "x"))),
        );
        let err = block_on(mock.host().get("http://upstream.test/")).expect_err("bad header");
        assert_eq!(err.message(), "the mock's response: invalid header name");
    }
}
