//! WebSockets: the upgrade an app accepts ([`WebSocketUpgrade`], from
//! [`Request::websocket`]), the socket its session gets ([`WebSocket`], which splits into a
//! [`WsSender`] and a [`WsReceiver`]), and what goes over it ([`Message`]).
//!
//! The host runs the protocol on its reactor: the handshake's `101`, framing, fragmentation,
//! UTF-8 checks of text, ping and pong, size limits, idle time-outs. The app sees whole
//! messages. It cannot run a WebSocket codec itself: a plugin's copy of tokio has no reactor.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    CONNECTION, HeaderName, HeaderValue, ORIGIN, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, Method, StatusCode};

use crate::abi::{
    WS_ACCEPT_INVALID, WS_ACCEPT_NOT_UPGRADE, WS_ACCEPT_OK, WS_ACCEPT_TWICE, WS_BINARY, WS_CLOSE,
    WS_SEND_CLOSED, WS_SEND_OK, WS_TEXT,
};
use crate::error::HeaderError;
use crate::ffi::buf::Utf8Bytes;
use crate::ffi::websocket::{Outgoing, WsRecvHalf, WsSendHalf};
use crate::headers::Add;
use crate::host::{Host, Inner};
use crate::request::Request;
use crate::response::Response;

/// The close code a peer that sent none is reported with, and that asks the host to send a
/// close frame without a code (RFC 6455, 7.1.5).
const NO_STATUS: u16 = 1005;

/// A WebSocket message: whole, however the client fragmented it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Text (the host checked it is UTF-8).
    Text(Utf8Bytes),
    /// Binary data.
    Binary(Bytes),
    /// A close frame: the peer's code and reason, or `None` when it sent no code. Received
    /// once, as the last message; sending one starts the closing handshake (`None` sends a
    /// close frame without a code).
    Close(Option<CloseFrame>),
}

impl Message {
    /// A text message: a `String`, a `&str` (copied), or [`Utf8Bytes`].
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Message::Text(text.into())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Message::Binary(data.into())
    }

    /// A close frame with `code` and `reason`.
    pub fn close(code: u16, reason: impl Into<String>) -> Self {
        Message::Close(Some(CloseFrame::new(code, reason)))
    }

    /// Whether it is a close frame.
    pub fn is_close(&self) -> bool {
        matches!(self, Message::Close(_))
    }

    /// The text of a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Message::Text(text) => Some(text),
            _ => None,
        }
    }

    /// A message the host handed over as `(kind, code, data)`; `None` for a kind this SDK
    /// does not know (the host sends none to a plugin of this ABI minor).
    fn from_parts((kind, code, data): (u32, u32, Bytes)) -> Option<Self> {
        match kind {
            WS_TEXT => Some(Message::Text(Utf8Bytes::from_bytes_lossy(data))),
            WS_BINARY => Some(Message::Binary(data)),
            WS_CLOSE => {
                let frame = u16::try_from(code)
                    .ok()
                    .filter(|&code| code != NO_STATUS)
                    .map(|code| CloseFrame {
                        code,
                        reason: String::from_utf8_lossy(&data).into_owned(),
                    });
                Some(Message::Close(frame))
            }
            _ => None,
        }
    }

    /// The message as the host takes it: `(kind, code, data)`.
    fn into_parts(self) -> (u32, u32, Bytes) {
        match self {
            Message::Text(text) => (WS_TEXT, 0, text.into_bytes()),
            Message::Binary(data) => (WS_BINARY, 0, data),
            Message::Close(Some(frame)) => {
                (WS_CLOSE, u32::from(frame.code), Bytes::from(frame.reason))
            }
            Message::Close(None) => (WS_CLOSE, u32::from(NO_STATUS), Bytes::new()),
        }
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::text(text)
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::text(text)
    }
}

impl From<Bytes> for Message {
    fn from(data: Bytes) -> Self {
        Message::Binary(data)
    }
}

impl From<Vec<u8>> for Message {
    fn from(data: Vec<u8>) -> Self {
        Message::binary(data)
    }
}

/// The code and reason of a close frame (RFC 6455, 7.4): 1000 is a normal closure, 1001 going
/// away, 1008 a policy violation, 1011 an internal error; 3000–4999 are for applications.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CloseFrame {
    /// The close code.
    pub code: u16,
    /// Why, for people (UTF-8, at most 123 bytes to send).
    pub reason: String,
}

impl CloseFrame {
    /// A close frame.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        CloseFrame {
            code,
            reason: reason.into(),
        }
    }

    /// Whether an endpoint may send it: a code RFC 6455 allows on the wire (1000–1003,
    /// 1007–1014, 3000–4999) and a reason of at most 123 bytes.
    fn sendable(&self) -> bool {
        let code_ok = matches!(self.code, 1000..=1003 | 1007..=1014 | 3000..=4999);
        code_ok && self.reason.len() <= 123
    }
}

/// Why a message could not be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The socket is closing or closed (a close was sent or received, the client went away,
    /// or the host closed it): nothing more can be sent. Stop sending.
    #[error("the WebSocket is closed: nothing more can be sent")]
    Closed,
    /// The message cannot be sent: a close code that may not go on the wire (1004–1006,
    /// 1015, below 1000, 1016–2999, 5000 and up) or a close reason over 123 bytes.
    #[error(
        "not a valid message to send (a close code that may not be sent, or a reason over 123 bytes)"
    )]
    Invalid,
}

/// A WebSocket handshake the app may accept: from [`Request::websocket`].
///
/// Accept it with [`accept`](WebSocketUpgrade::accept), after choosing a
/// [`protocol`](WebSocketUpgrade::protocol) and adding [`header`](WebSocketUpgrade::header)s if
/// needed; to refuse, return any other response (a `403` for an origin you do not serve, say).
#[derive(Debug)]
pub struct WebSocketUpgrade {
    protocols: Vec<String>,
    origin: Option<String>,
    chosen: Option<String>,
    headers: HeaderMap,
    /// The first header [`header`](WebSocketUpgrade::header) could not set.
    header_error: Option<Box<HeaderError>>,
    /// Why the host would refuse what the app asked for, found here first so that the app's
    /// answer says it plainly.
    problem: Option<String>,
}

impl Request {
    /// The WebSocket handshake this request asks for, if it is a valid one: `GET` with
    /// `Upgrade: websocket`, a `Connection` that lists `upgrade`, `Sec-WebSocket-Version: 13`
    /// and a `Sec-WebSocket-Key`. `None` for any other request (answer it as usual; a `426`
    /// tells a client that only WebSockets are served here).
    pub fn websocket(&self) -> Option<WebSocketUpgrade> {
        if self.method() != Method::GET {
            return None;
        }
        let headers = self.headers();
        let version_13 = headers
            .get(SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"13");
        let has_key = headers
            .get(SEC_WEBSOCKET_KEY)
            .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty());
        let upgrade = has_token(headers, &UPGRADE, "websocket");
        if !(version_13 && has_key && upgrade && has_token(headers, &CONNECTION, "upgrade")) {
            return None;
        }
        let protocols = headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|protocol| !protocol.is_empty())
            .map(str::to_owned)
            .collect();
        let origin = headers
            .get(ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Some(WebSocketUpgrade {
            protocols,
            origin,
            chosen: None,
            headers: HeaderMap::new(),
            header_error: None,
            problem: None,
        })
    }
}

/// Whether some value of header `name` lists `token` (comma-separated, any case).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// The headers of the `101` that are the host's to set. `Sec-WebSocket-Extensions` too: the
/// host negotiates no extension, and a `101` that names one the connection does not use breaks
/// the client.
const HANDSHAKE_HEADERS: [HeaderName; 5] = [
    UPGRADE,
    CONNECTION,
    SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_EXTENSIONS,
];

impl WebSocketUpgrade {
    /// The subprotocols the client offered (`Sec-WebSocket-Protocol`), in its order of
    /// preference.
    pub fn protocols(&self) -> &[String] {
        &self.protocols
    }

    /// The `Origin` the client sent (browsers always do): check it when the socket acts with
    /// the user's cookies, since any page may open a WebSocket to any server. The host
    /// applies its own `Origin` allowlist, when configured, before the app sees the request.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// Chooses subprotocol `protocol`, which must be one of [`protocols`](Self::protocols)
    /// (else [`accept`](Self::accept) answers `500` and says so).
    pub fn protocol(mut self, protocol: &str) -> Self {
        if self.protocols.iter().any(|offered| offered == protocol) {
            self.chosen = Some(protocol.to_owned());
        } else {
            let offered = self.protocols.join(", ");
            self.problem.get_or_insert(format!(
                "the subprotocol {protocol:?} was not offered (offered: {offered:?})"
            ));
        }
        self
    }

    /// Adds a header to the `101` response (a cookie, say). The handshake's own (`Upgrade`,
    /// `Connection`, `Sec-WebSocket-Accept`, `Sec-WebSocket-Protocol`,
    /// `Sec-WebSocket-Extensions`) are the host's to set.
    /// As with [`Response::with_header`], an invalid header does not panic: [`accept`](Self::accept)
    /// answers `500` and names it.
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

    /// Accepts the handshake: return the response this gives from the handler. Once the
    /// handler has returned it, the host answers `101 Switching Protocols` and runs `session`
    /// with the socket and a [`Host`] of its own (the request's deadline no longer applies; a
    /// session lasts as long as it likes). The socket is closed when `session` ends (with
    /// 1000, unless it was closed already), or with 1011 if it panics.
    ///
    /// The response is empty with status `101` when the host took the session; return it
    /// (the host answers the handshake itself, whatever the handler returns once it has
    /// accepted, unless the handler panics or runs out of time). When it
    /// refused (the request is not a handshake the host accepts, a subprotocol that was not
    /// offered, a header that is invalid or the host's), it is a `400` or `500` whose text says
    /// why, and `session` is dropped unstarted.
    pub fn accept<F, Fut>(self, host: &Host, session: F) -> Response
    where
        F: FnOnce(WebSocket, Host) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Some(err) = self.header_error {
            return refused(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err}"));
        }
        if let Some(name) = HANDSHAKE_HEADERS
            .iter()
            .find(|name| self.headers.contains_key(*name))
        {
            let problem = format!("the header {name} is the host's to set");
            return refused(StatusCode::INTERNAL_SERVER_ERROR, &problem);
        }
        if let Some(problem) = self.problem {
            return refused(StatusCode::INTERNAL_SERVER_ERROR, &problem);
        }
        let tag = match &host.inner {
            Inner::Real(handle) => {
                let start = move |sender, receiver, handle| {
                    let socket = WebSocket::from_halves(sender, receiver);
                    session(socket, Host::from_handle(handle))
                };
                let protocol = self.chosen.as_deref().unwrap_or("");
                let session = crate::ffi::websocket::session(start);
                handle.ws_accept(protocol, &self.headers, session)
            }
            #[cfg(feature = "testing")]
            Inner::Mock(mock) => Some(mock.ws_accept(MockAccept {
                protocol: self.chosen,
                headers: self.headers,
                session: Box::new(move |socket, host| Box::pin(session(socket, host))),
            })),
        };
        match tag {
            Some(WS_ACCEPT_OK) => Response::new(StatusCode::SWITCHING_PROTOCOLS),
            Some(WS_ACCEPT_NOT_UPGRADE) => refused(
                StatusCode::BAD_REQUEST,
                "not a WebSocket handshake the host accepts (method, Upgrade, Connection, \
                 Sec-WebSocket-Key or Sec-WebSocket-Version)",
            ),
            Some(WS_ACCEPT_TWICE) => refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this request's handshake was accepted already",
            ),
            Some(WS_ACCEPT_INVALID) => refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the host refused the subprotocol or a header of the app's answer",
            ),
            Some(other) => refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("the host answered the handshake with {other}"),
            ),
            None => refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "this host has no WebSockets (ABI < 1.5)",
            ),
        }
    }
}

/// The answer to a handshake that could not be accepted.
fn refused(status: StatusCode, why: &str) -> Response {
    Response::text(format!("WebSocket handshake refused: {why}\n")).with_status(status)
}

/// An accepted WebSocket, in a session [`WebSocketUpgrade::accept`] started.
///
/// Receive with [`recv`](WebSocket::recv) and send with [`send`](WebSocket::send); to do both at
/// once (forward messages from elsewhere while reading the client's), [`split`](WebSocket::split)
/// it. Dropping it (or both halves) closes the socket with 1000 unless it was closed already.
#[derive(Debug)]
pub struct WebSocket {
    sender: WsSender,
    receiver: WsReceiver,
}

impl WebSocket {
    fn from_halves(sender: WsSendHalf, receiver: WsRecvHalf) -> Self {
        WebSocket {
            sender: WsSender {
                inner: SenderInner::Real(sender),
            },
            receiver: WsReceiver {
                inner: ReceiverInner::Real(receiver),
            },
        }
    }

    /// A socket whose other end is a mock's.
    #[cfg(feature = "testing")]
    pub(crate) fn from_mock(mock: std::sync::Arc<dyn MockSocket>) -> Self {
        WebSocket {
            sender: WsSender {
                inner: SenderInner::Mock(MockHalf(std::sync::Arc::clone(&mock))),
            },
            receiver: WsReceiver {
                inner: ReceiverInner::Mock(MockHalf(mock)),
            },
        }
    }

    /// The client's next message, or `None` once the socket is closed and everything
    /// received was delivered. A close from the client arrives as [`Message::Close`], then
    /// `None`. Cancel-safe: dropping the future loses no message (so it can be raced with
    /// `select`).
    pub async fn recv(&mut self) -> Option<Message> {
        self.receiver.recv().await
    }

    /// Sends `message`. The host's send queue is bounded: while it is full this waits, so a
    /// slow client slows its sender down rather than filling memory. Once the socket is
    /// closing or closed, it fails with [`SendError::Closed`] (and keeps failing): a cue to
    /// stop, never a panic.
    pub async fn send(&mut self, message: Message) -> Result<(), SendError> {
        self.sender.send(message).await
    }

    /// Starts the closing handshake with `code` and `reason` (at most 123 bytes); nothing
    /// more can be sent after it. Keep receiving to see the client's close, or just return.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), SendError> {
        self.sender.close(code, reason).await
    }

    /// Splits the socket into its sending and its receiving half, which may be used at the
    /// same time from different futures or tasks. The socket closes when both are dropped.
    pub fn split(self) -> (WsSender, WsReceiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a [`WebSocket`].
#[derive(Debug)]
pub struct WsSender {
    inner: SenderInner,
}

enum SenderInner {
    Real(WsSendHalf),
    #[cfg(feature = "testing")]
    Mock(MockHalf),
}

impl WsSender {
    /// Sends `message`; see [`WebSocket::send`].
    pub async fn send(&mut self, message: Message) -> Result<(), SendError> {
        if let Message::Close(Some(frame)) = &message {
            if !frame.sendable() {
                return Err(SendError::Invalid);
            }
        }
        match &mut self.inner {
            SenderInner::Real(half) => {
                let (kind, code, data) = message.into_parts();
                let mut out = Outgoing::new(kind, code, data);
                match poll_fn(|cx| half.poll_send(cx, &mut out)).await {
                    WS_SEND_OK => Ok(()),
                    WS_SEND_CLOSED => Err(SendError::Closed),
                    _ => Err(SendError::Invalid),
                }
            }
            #[cfg(feature = "testing")]
            SenderInner::Mock(mock) => {
                let mut message = Some(message);
                poll_fn(|cx| mock.0.poll_send(cx, &mut message)).await
            }
        }
    }

    /// Starts the closing handshake; see [`WebSocket::close`].
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), SendError> {
        self.send(Message::close(code, reason)).await
    }
}

/// The receiving half of a [`WebSocket`]; also a [`Stream`](futures_core::Stream) of its
/// messages.
#[derive(Debug)]
pub struct WsReceiver {
    inner: ReceiverInner,
}

enum ReceiverInner {
    Real(WsRecvHalf),
    #[cfg(feature = "testing")]
    Mock(MockHalf),
}

impl WsReceiver {
    /// The client's next message; see [`WebSocket::recv`].
    pub async fn recv(&mut self) -> Option<Message> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match &mut self.inner {
            ReceiverInner::Real(half) => loop {
                let Some(parts) = std::task::ready!(half.poll_recv(cx)) else {
                    return Poll::Ready(None);
                };
                if let Some(message) = Message::from_parts(parts) {
                    return Poll::Ready(Some(message));
                }
            },
            #[cfg(feature = "testing")]
            ReceiverInner::Mock(mock) => mock.0.poll_recv(cx),
        }
    }
}

impl futures_core::Stream for WsReceiver {
    type Item = Message;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.get_mut().poll_recv(cx)
    }
}

impl fmt::Debug for SenderInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WsSender")
    }
}

impl fmt::Debug for ReceiverInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WsReceiver")
    }
}

/// The other end of a socket a mock host accepted ([`crate::testing`] implements it).
#[cfg(feature = "testing")]
pub(crate) trait MockSocket: Send + Sync + fmt::Debug {
    /// The client's next message.
    fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<Message>>;
    /// Queues the message in `message` (taking it) or waits for room.
    fn poll_send(
        &self,
        cx: &mut Context<'_>,
        message: &mut Option<Message>,
    ) -> Poll<Result<(), SendError>>;
}

/// One half's reference to a mock socket.
#[cfg(feature = "testing")]
struct MockHalf(std::sync::Arc<dyn MockSocket>);

/// A session as the mock host keeps it until the test starts it.
#[cfg(feature = "testing")]
pub(crate) type MockSession =
    Box<dyn FnOnce(WebSocket, Host) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What an app handed a mock host's `ws_accept`.
#[cfg(feature = "testing")]
pub(crate) struct MockAccept {
    pub(crate) protocol: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) session: MockSession,
}

#[cfg(feature = "testing")]
impl fmt::Debug for MockAccept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockAccept")
            .field("protocol", &self.protocol)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDSHAKE: [(&str, &str); 4] = [
        ("upgrade", "WebSocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    /// A handshake, with header `name` replaced by `value` (if given).
    fn handshake_with(name: &str, value: &str) -> crate::RequestBuilder {
        HANDSHAKE
            .iter()
            .fold(Request::builder(Method::GET, "/ws"), |req, (n, v)| {
                req.header(*n, if *n == name { value } else { v })
            })
    }

    fn handshake() -> crate::RequestBuilder {
        handshake_with("", "")
    }

    #[test]
    fn only_a_valid_handshake_is_an_upgrade() {
        let upgrade = handshake()
            .header("sec-websocket-protocol", "chat.v2 , chat.v1")
            .header("sec-websocket-protocol", "json")
            .header("origin", "https://example.test")
            .build()
            .expect("valid")
            .websocket()
            .expect("an upgrade");
        assert_eq!(upgrade.protocols(), ["chat.v2", "chat.v1", "json"]);
        assert_eq!(upgrade.origin(), Some("https://example.test"));

        let plain = Request::builder(Method::GET, "/ws").build().expect("valid");
        assert!(plain.websocket().is_none());
        let post = Request::builder(Method::POST, "/ws")
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "x")
            .build()
            .expect("valid");
        assert!(post.websocket().is_none(), "not GET");
        for (name, value) in [
            ("sec-websocket-version", "8"),
            ("connection", "keep-alive"),
            ("upgrade", "h2c"),
            ("sec-websocket-key", " "),
        ] {
            let req = handshake_with(name, value).build().expect("valid");
            assert!(req.websocket().is_none(), "{name}: {value}");
        }
    }

    #[test]
    fn messages_cross_as_kinds_codes_and_data() {
        let cases = [
            (Message::text("hé"), (WS_TEXT, 0, Bytes::from("hé"))),
            (
                Message::binary(vec![0, 255]),
                (WS_BINARY, 0, Bytes::from_static(&[0, 255])),
            ),
            (
                Message::close(4000, "bye"),
                (WS_CLOSE, 4000, Bytes::from("bye")),
            ),
            (Message::Close(None), (WS_CLOSE, 1005, Bytes::new())),
        ];
        for (message, parts) in cases {
            assert_eq!(message.clone().into_parts(), parts);
            assert_eq!(Message::from_parts(parts), Some(message));
        }
        assert_eq!(Message::from_parts((99, 0, Bytes::new())), None);
        assert!(Message::close(1000, "").is_close());
        assert_eq!(Message::from("x").as_text(), Some("x"));
    }

    #[cfg(feature = "testing")]
    #[test]
    fn an_upgrade_the_host_would_refuse_is_answered_before_reaching_it() {
        use crate::testing::{MockHost, block_on};
        let host = std::sync::Arc::new(MockHost::new()).host();
        let upgrade = || {
            handshake()
                .header("sec-websocket-protocol", "a")
                .build()
                .expect("valid")
                .websocket()
                .expect("an upgrade")
        };
        let cases = [
            (
                upgrade().protocol("b"),
                "the subprotocol \"b\" was not offered (offered: \"a\")",
            ),
            (
                upgrade().header("upgrade", "websocket"),
                "the header upgrade is the host's to set",
            ),
            (
                upgrade().header("Sec-WebSocket-Extensions", "permessage-deflate"),
                "the header sec-websocket-extensions is the host's to set",
            ),
            (
                upgrade().header("x-bad", "a\nb"),
                "invalid value for header x-bad",
            ),
        ];
        for (upgrade, why) in cases {
            let response = upgrade.accept(&host, |_socket, _host| async {});
            assert_eq!(
                response.status(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "{why}"
            );
            let text = block_on(response.into_body().text()).expect("body");
            assert_eq!(text, format!("WebSocket handshake refused: {why}\n"));
        }
        // A task's host serves no request: the mock refuses as the host does.
        let response = upgrade().accept(&host.task_host(), |_socket, _host| async {});
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn only_closes_that_may_go_on_the_wire_are_sendable() {
        for code in [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(CloseFrame::new(code, "").sendable(), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert!(!CloseFrame::new(code, "").sendable(), "{code}");
        }
        assert!(!CloseFrame::new(1000, "x".repeat(124)).sendable());
    }
}
