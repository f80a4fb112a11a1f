//! The task behind one open WebSocket: tokio-tungstenite's codec on the upgraded connection,
//! and the app's session future, polled together (one task per socket).
//!
//! Each poll moves what can move: the app's future; a close the host asked for; the app's
//! queued messages out to the client; the client's messages into the app's receive queue while
//! it has room; the flush; and one timer for the next of the ping, the pong deadline, the idle
//! timeout and the closing handshake's deadline.
//!
//! * Pings are the host's: a client that answers none within the pong timeout (a half-open
//!   connection) is dropped, and the app receives a close with 1006. Any frame from the client
//!   counts as an answer; so does an app that is not reading (the host is not reading then
//!   either, so the pong may be waiting behind its messages). A client that takes in nothing
//!   for that long, so that the ping cannot even be written, counts as one that does not
//!   answer.
//! * A message or frame over its limit closes with 1009, text that is not UTF-8 with 1007,
//!   another protocol error with 1002 (the app receives the same close).
//! * The closing handshake: when the app (or the host) closes, what the app queued before goes
//!   out first, then the close, and the client has [`CLOSE_TIMEOUT`] to answer it. When the
//!   client closes, the app receives its close and the codec answers with the same code.
//! * An app whose session ends (or that releases its socket) without closing gets 1000; one
//!   that panics or fails, 1011.
//! * Once the connection is over, the app's future has [`APP_GRACE`] to end (it has received
//!   the close and its sends fail), then it is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use berth_app::abi::FfiFuture;
use berth_app::ffi::Panicked;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::sessions::Registration;
use super::{WsMessage, WsSettings, WsShared};

/// How long a client has to answer the server's close before the connection is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an app's session future may run on after its connection is over.
pub const APP_GRACE: Duration = Duration::from_secs(5);

/// The codec's read buffer: tungstenite's default of 128 KiB would cost that much memory per
/// idle socket.
const READ_BUFFER: usize = 4 * 1024;

/// How much the codec buffers before it writes to the connection (the session flushes after
/// every batch anyway).
const WRITE_BUFFER: usize = 16 * 1024;

/// How a session ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The closing handshake completed, or the client closed the connection after it.
    Closed,
    /// The connection was lost or dropped: no close, no pong, or the close went unanswered.
    Dropped,
}

/// The codec's configuration for `settings`.
pub fn codec_config(settings: &WsSettings) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(settings.max_message))
        .max_frame_size(Some(settings.max_frame))
}

/// Runs the socket on `io` (the upgraded connection, the handshake done) with the app's
/// session future `app`, until both are over. `registration` counts it among its version's
/// open sockets until the connection is over; `app_name` names it in the log.
pub async fn run<S>(
    io: S,
    shared: Arc<WsShared>,
    app: FfiFuture<u32>,
    settings: &WsSettings,
    registration: Registration,
    app_name: &str,
) -> SessionEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(codec_config(settings))).await;
    let now = Instant::now();
    let mut pump = Pump {
        ws: Some(ws),
        shared,
        app: Some(app),
        app_name,
        ping_interval: settings.ping_interval,
        pong_timeout: settings.pong_timeout,
        idle_timeout: settings.idle_timeout,
        timer: Box::pin(tokio::time::sleep_until(now + settings.ping_interval)),
        next_ping: now + settings.ping_interval,
        pong_due: None,
        last_message: now,
        pending_close: None,
        close_sent: false,
        close_deadline: None,
        recv_done: false,
        flushed: true,
        app_deadline: None,
        end: SessionEnd::Closed,
        registration: Some(registration),
        released: false,
    };
    std::future::poll_fn(|cx| pump.poll(cx)).await
}

struct Pump<'a, S> {
    /// The connection; `None` once it is over.
    ws: Option<WebSocketStream<S>>,
    shared: Arc<WsShared>,
    /// The app's session future; `None` once it ended.
    app: Option<FfiFuture<u32>>,
    app_name: &'a str,
    ping_interval: Duration,
    pong_timeout: Duration,
    idle_timeout: Option<Duration>,
    /// Set for the earliest of the deadlines below.
    timer: Pin<Box<Sleep>>,
    next_ping: Instant,
    /// When the last ping must have been answered.
    pong_due: Option<Instant>,
    /// The last text or binary message either way, for the idle timeout.
    last_message: Instant,
    /// A close to send once the app's queued messages are out.
    pending_close: Option<(u16, Utf8Bytes)>,
    /// A close frame was sent (or answered by the codec): nothing more goes out.
    close_sent: bool,
    /// When to give up on the closing handshake.
    close_deadline: Option<Instant>,
    /// Nothing more comes in.
    recv_done: bool,
    /// Everything written was flushed.
    flushed: bool,
    /// Once the connection is over: when the app's future is dropped.
    app_deadline: Option<Instant>,
    end: SessionEnd,
    registration: Option<Registration>,
    /// The app's release of its socket was seen.
    released: bool,
}

fn close_message(code: u16, reason: Utf8Bytes) -> Message {
    if code == 1005 {
        Message::Close(None)
    } else {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason,
        }))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Pump<'_, S> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<SessionEnd> {
        self.shared.register_pump(cx.waker());
        loop {
            let mut again = self.poll_app(cx);
            if self.ws.is_none() {
                if self.app.is_none() {
                    return Poll::Ready(self.end);
                }
                let deadline = *self
                    .app_deadline
                    .get_or_insert_with(|| Instant::now() + APP_GRACE);
                if Instant::now() >= deadline {
                    tracing::warn!(
                        app = self.app_name,
                        "WebSocket session did not end within {APP_GRACE:?} of its connection; dropped"
                    );
                    self.app = None;
                    return Poll::Ready(self.end);
                }
                if self.timer.deadline() != deadline {
                    self.timer.as_mut().reset(deadline);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
                if again {
                    continue;
                }
                return Poll::Pending;
            }
            again |= self.take_host_close();
            // After the app's future was polled: a session that panicked released its socket
            // while unwinding, and gets 1011, not this.
            if !self.released && self.shared.released() {
                self.released = true;
                self.begin_close(1000, Utf8Bytes::from_static(""));
                again = true;
            }
            again |= self.poll_outgoing(cx);
            again |= self.poll_incoming(cx);
            self.poll_flush(cx);
            if self.ws.is_some() && self.close_sent && self.recv_done && self.flushed {
                self.finish(SessionEnd::Closed);
                again = true;
            }
            if self.ws.is_some() {
                again |= self.poll_timers(cx);
            }
            if !again {
                return Poll::Pending;
            }
        }
    }

    /// Polls the app's future; true when it ended.
    fn poll_app(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(app) = &mut self.app else {
            return false;
        };
        let polled = {
            let _in_app = crate::host::calls::enter(self.app_name, &[b"WebSocket session"], None);
            app.poll_caught(cx)
        };
        let Poll::Ready(result) = polled else {
            return false;
        };
        self.app = None;
        // A close the host asked for comes first: an app whose subscription was ended for
        // falling behind (its socket closed with 1008) may end right after.
        self.take_host_close();
        match result {
            Ok(0) => self.begin_close(1000, Utf8Bytes::from_static("")),
            Ok(code) => {
                tracing::error!(
                    app = self.app_name,
                    "WebSocket session failed (result {code}); closing its socket with 1011"
                );
                self.begin_close(1011, Utf8Bytes::from_static("internal error"));
            }
            Err(Panicked) => {
                tracing::error!(
                    app = self.app_name,
                    "WebSocket session panicked; closing its socket with 1011"
                );
                self.begin_close(1011, Utf8Bytes::from_static("internal error"));
            }
        }
        true
    }

    /// Starts the close the host asked for, if it did; true when it had.
    fn take_host_close(&mut self) -> bool {
        match self.shared.take_host_close() {
            Some((code, reason)) => {
                self.begin_close(code, Utf8Bytes::from(reason));
                true
            }
            None => false,
        }
    }

    /// Starts closing with `code` (unless closing already): the app receives the close and
    /// may send nothing more; what it queued before goes out first.
    fn begin_close(&mut self, code: u16, reason: Utf8Bytes) {
        if self.close_sent || self.pending_close.is_some() || self.ws.is_none() {
            return;
        }
        self.shared.deliver(WsMessage::Close {
            code,
            reason: reason.clone(),
        });
        if self.shared.stop_sending() {
            // The app queued a close of its own: that one goes out.
            return;
        }
        self.pending_close = Some((code, reason));
        self.close_deadline
            .get_or_insert_with(|| Instant::now() + CLOSE_TIMEOUT);
    }

    /// Writes the app's queued messages, then a pending close; true when anything was written.
    fn poll_outgoing(&mut self, cx: &mut Context<'_>) -> bool {
        let mut wrote = false;
        while !self.close_sent {
            let Some(ws) = &mut self.ws else {
                break;
            };
            match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => {
                    self.connection_error(&error);
                    return true;
                }
                Poll::Pending => break,
            }
            let message = match self.shared.next_outgoing() {
                Some(WsMessage::Text(text)) => {
                    self.last_message = Instant::now();
                    Message::Text(text)
                }
                Some(WsMessage::Binary(data)) => {
                    self.last_message = Instant::now();
                    Message::Binary(data)
                }
                Some(WsMessage::Close { code, reason }) => {
                    self.close_sent = true;
                    self.pending_close = None;
                    self.close_deadline
                        .get_or_insert_with(|| Instant::now() + CLOSE_TIMEOUT);
                    close_message(code, reason)
                }
                None => match self.pending_close.take() {
                    Some((code, reason)) => {
                        self.close_sent = true;
                        close_message(code, reason)
                    }
                    None => break,
                },
            };
            wrote = true;
            self.flushed = false;
            if let Err(error) = Pin::new(&mut *ws).start_send(message) {
                self.connection_error(&error);
                return true;
            }
        }
        wrote
    }

    /// Reads the client's messages while the app has room for them (or, once closing, to
    /// find the client's close); true when anything was read.
    fn poll_incoming(&mut self, cx: &mut Context<'_>) -> bool {
        let mut read = false;
        while !self.recv_done && (self.close_sent || self.shared.has_room()) {
            let Some(ws) = &mut self.ws else {
                break;
            };
            let message = match Pin::new(&mut *ws).poll_next(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => {
                    self.recv_done = true;
                    if !self.close_sent {
                        // Gone without a close.
                        self.finish(SessionEnd::Dropped);
                    }
                    return true;
                }
                Poll::Ready(Some(Err(error))) => {
                    self.read_error(error);
                    return true;
                }
                Poll::Ready(Some(Ok(message))) => message,
            };
            read = true;
            // Any frame shows the client is there.
            self.pong_due = None;
            match message {
                Message::Text(text) if !self.close_sent => {
                    self.last_message = Instant::now();
                    self.shared.deliver(WsMessage::Text(text));
                }
                Message::Binary(data) if !self.close_sent => {
                    self.last_message = Instant::now();
                    self.shared.deliver(WsMessage::Binary(data));
                }
                // The codec queued the pong; the flush sends it.
                Message::Ping(_) => self.flushed = false,
                Message::Close(frame) => {
                    let (code, reason) = frame.map_or((1005, Utf8Bytes::from_static("")), |f| {
                        (u16::from(f.code), f.reason)
                    });
                    self.shared.deliver(WsMessage::Close { code, reason });
                    if !self.close_sent {
                        // The codec answered with the same code; what the app had queued
                        // cannot go out any more.
                        self.close_sent = true;
                        self.pending_close = None;
                        self.flushed = false;
                        self.shared.close_sending();
                        self.close_deadline
                            .get_or_insert_with(|| Instant::now() + CLOSE_TIMEOUT);
                    }
                }
                // Data after our close, pongs, raw frames.
                _ => {}
            }
        }
        read
    }

    fn read_error(&mut self, error: WsError) {
        self.recv_done = true;
        let (code, reason) = match &error {
            WsError::Capacity(_) => (1009, "message too big"),
            WsError::Utf8(_) => (1007, "invalid UTF-8"),
            WsError::Protocol(_) | WsError::AttackAttempt => (1002, "protocol error"),
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                if !self.close_sent {
                    self.finish(SessionEnd::Dropped);
                }
                return;
            }
            _ => {
                self.connection_error(&error);
                return;
            }
        };
        tracing::debug!(
            app = self.app_name,
            "closing a WebSocket with {code}: {error}"
        );
        self.shared.close_sending();
        self.begin_close(code, Utf8Bytes::from_static(reason));
    }

    fn connection_error(&mut self, error: &WsError) {
        tracing::debug!(app = self.app_name, "WebSocket connection failed: {error}");
        self.finish(SessionEnd::Dropped);
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) {
        if self.flushed {
            return;
        }
        let Some(ws) = &mut self.ws else {
            return;
        };
        match Pin::new(ws).poll_flush(cx) {
            Poll::Ready(Ok(())) => self.flushed = true,
            Poll::Ready(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))
                if self.close_sent =>
            {
                self.flushed = true;
                self.recv_done = true;
            }
            Poll::Ready(Err(error)) => self.connection_error(&error),
            Poll::Pending => {}
        }
    }

    /// Sends pings, and acts on the deadlines; true when anything happened.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> bool {
        let now = Instant::now();
        if self.close_deadline.is_some_and(|deadline| now >= deadline) {
            tracing::debug!(
                app = self.app_name,
                "WebSocket client did not complete the closing handshake; dropped"
            );
            self.finish(SessionEnd::Dropped);
            return true;
        }
        if self.pong_due.is_some_and(|due| now >= due) {
            if self.shared.has_room() {
                tracing::debug!(
                    app = self.app_name,
                    "WebSocket client did not answer a ping within {:?}; dropped",
                    self.pong_timeout
                );
                self.finish(SessionEnd::Dropped);
                return true;
            }
            // The app is not reading, so neither is the host: the pong may be behind.
            self.pong_due = Some(now + self.pong_timeout);
        }
        let open = !self.close_sent && self.pending_close.is_none();
        if open
            && self
                .idle_timeout
                .is_some_and(|idle| now >= self.last_message + idle)
        {
            self.begin_close(1001, Utf8Bytes::from_static("idle timeout"));
            return true;
        }
        if open && now >= self.next_ping {
            self.next_ping = now + self.ping_interval;
            if self.pong_due.is_none() {
                self.pong_due = Some(now + self.pong_timeout);
                if let Some(ws) = &mut self.ws {
                    if let Poll::Ready(Ok(())) = Pin::new(&mut *ws).poll_ready(cx) {
                        self.flushed = false;
                        let ping = Message::Ping(Default::default());
                        if let Err(error) = Pin::new(ws).start_send(ping) {
                            self.connection_error(&error);
                        }
                    }
                }
            }
            return true;
        }
        let mut next = self.close_deadline;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n| n.min(at)));
        if open {
            consider(self.next_ping);
            if let Some(idle) = self.idle_timeout {
                consider(self.last_message + idle);
            }
        }
        if let Some(due) = self.pong_due {
            consider(due);
        }
        let Some(next) = next else {
            return false;
        };
        if self.timer.deadline() != next {
            self.timer.as_mut().reset(next);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    /// The connection is over: it is closed, the app learns it (a close with 1006 unless it
    /// had one), and the socket leaves its version's count.
    fn finish(&mut self, end: SessionEnd) {
        if self.ws.take().is_none() {
            return;
        }
        self.end = end;
        self.shared.close_sending();
        self.shared.deliver(WsMessage::Close {
            code: 1006,
            reason: Utf8Bytes::from_static(""),
        });
        self.registration = None;
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::DuplexStream;

    use super::*;
    use crate::host::SessionSocket as _;
    use crate::host::websocket::Sessions;

    type Client = WebSocketStream<DuplexStream>;

    /// An app session that echoes text and binary messages until the close.
    async fn echo(socket: Arc<WsShared>) -> u32 {
        while let Some(message) = poll_fn(|cx| socket.poll_recv(cx)).await {
            if matches!(message, WsMessage::Close { .. }) {
                break;
            }
            let mut message = Some(message);
            let sent = poll_fn(|cx| {
                socket.poll_send(cx, || message.take().ok_or_else(|| "taken".to_owned()))
            })
            .await;
            if sent.is_err() {
                break;
            }
        }
        0
    }

    /// Starts a session of `app` with `settings`; returns the client's end and the session.
    async fn start<F>(
        settings: WsSettings,
        app: impl FnOnce(Arc<WsShared>) -> F,
    ) -> (
        Client,
        Arc<WsShared>,
        Arc<Sessions>,
        tokio::task::JoinHandle<SessionEnd>,
    )
    where
        F: Future<Output = u32> + Send + 'static,
    {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let shared = Arc::new(WsShared::new(settings.send_queue));
        let sessions = Arc::new(Sessions::default());
        let registration = sessions.register(&shared);
        let future = FfiFuture::new(app(Arc::clone(&shared)));
        let task = tokio::spawn({
            let shared = Arc::clone(&shared);
            async move { run(server_io, shared, future, &settings, registration, "test").await }
        });
        let client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
        (client, shared, sessions, task)
    }

    /// Reads until the server closes the connection, which sends the codec's answer to its
    /// close (a client's `close` after the server's fails without flushing it).
    async fn read_to_end(client: &mut Client) {
        let end = async { while let Some(Ok(_)) = client.next().await {} };
        tokio::time::timeout(Duration::from_secs(10), end)
            .await
            .expect("the server closed the connection");
    }

    /// The close frame the client receives, skipping pings.
    async fn close_of(client: &mut Client) -> Option<u16> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), client.next()).await {
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                other => panic!("expected a close, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn echoes_then_answers_the_clients_close_with_its_code() {
        let (mut client, _shared, sessions, task) = start(WsSettings::default(), echo).await;
        client.send(Message::text("hello")).await.expect("sent");
        client
            .send(Message::binary(vec![0u8, 1, 2]))
            .await
            .expect("sent");
        assert_eq!(
            client.next().await.expect("a message").expect("ok"),
            Message::text("hello")
        );
        assert_eq!(
            client.next().await.expect("a message").expect("ok"),
            Message::binary(vec![0u8, 1, 2])
        );
        assert_eq!(sessions.open(), 1);
        client
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(4000),
                reason: "done".into(),
            })))
            .await
            .expect("sent");
        assert_eq!(close_of(&mut client).await, Some(4000));
        assert_eq!(task.await.expect("joined"), SessionEnd::Closed);
        assert_eq!(sessions.open(), 0);
    }

    #[tokio::test]
    async fn an_oversized_message_closes_with_1009() {
        let settings = WsSettings {
            max_message: 1024,
            max_frame: 1024,
            ..WsSettings::default()
        };
        let (mut client, _shared, _sessions, task) = start(settings, echo).await;
        client
            .send(Message::binary(vec![7u8; 4096]))
            .await
            .expect("sent");
        assert_eq!(close_of(&mut client).await, Some(1009));
        drop(client);
        task.await.expect("joined");
    }

    #[tokio::test]
    async fn a_panicking_session_closes_with_1011_and_one_that_ends_with_1000() {
        let (mut client, _shared, _sessions, task) = start(WsSettings::default(), |_| async {
            panic!("the app's bug");
        })
        .await;
        assert_eq!(close_of(&mut client).await, Some(1011));
        drop(client);
        task.await.expect("joined");

        let (mut client, _shared, _sessions, task) =
            start(WsSettings::default(), |_| async { 0 }).await;
        assert_eq!(close_of(&mut client).await, Some(1000));
        drop(client);
        task.await.expect("joined");
    }

    #[tokio::test]
    async fn a_released_socket_gets_1000_one_released_by_a_panic_1011() {
        let (mut client, _shared, _sessions, _task) =
            start(WsSettings::default(), |socket| async move {
                socket.release();
                std::future::pending::<u32>().await
            })
            .await;
        assert_eq!(close_of(&mut client).await, Some(1000));

        let (mut client, _shared, _sessions, task) =
            start(WsSettings::default(), |socket| async move {
                // As the SDK's glue does while unwinding.
                socket.release();
                panic!("the app's bug")
            })
            .await;
        assert_eq!(close_of(&mut client).await, Some(1011));
        read_to_end(&mut client).await;
        assert_eq!(task.await.expect("joined"), SessionEnd::Closed);
    }

    #[tokio::test]
    async fn the_host_closes_with_its_code_and_the_app_learns_it() {
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let (mut client, shared, _sessions, task) =
            start(WsSettings::default(), |socket| async move {
                let mut last = None;
                while let Some(message) = poll_fn(|cx| socket.poll_recv(cx)).await {
                    last = Some(message);
                }
                let _ = seen_tx.send(last);
                0
            })
            .await;
        shared.close(1008, "too slow");
        assert_eq!(close_of(&mut client).await, Some(1008));
        read_to_end(&mut client).await;
        assert_eq!(
            seen_rx.await.expect("the app ended"),
            Some(WsMessage::Close {
                code: 1008,
                reason: Utf8Bytes::from_static("too slow")
            })
        );
        assert_eq!(task.await.expect("joined"), SessionEnd::Closed);
    }

    #[tokio::test]
    async fn a_host_close_beats_the_end_of_the_session_that_follows_it() {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let (mut client, shared, _sessions, _task) =
            start(WsSettings::default(), |_socket| async move {
                let _ = done_rx.await;
                0
            })
            .await;
        // As pub/sub does with a subscriber that fell behind: the socket is closed, then its
        // subscription ends, and the app's session with it.
        shared.close(1008, "fell behind");
        let _ = done_tx.send(());
        assert_eq!(close_of(&mut client).await, Some(1008));
    }

    #[tokio::test]
    async fn idle_sockets_close_with_1001() {
        let settings = WsSettings {
            idle_timeout: Some(Duration::from_millis(200)),
            ..WsSettings::default()
        };
        let (mut client, _shared, _sessions, task) = start(settings, echo).await;
        let started = std::time::Instant::now();
        assert_eq!(close_of(&mut client).await, Some(1001));
        assert!(started.elapsed() >= Duration::from_millis(150));
        read_to_end(&mut client).await;
        assert_eq!(task.await.expect("joined"), SessionEnd::Closed);
    }

    #[tokio::test]
    async fn a_client_that_answers_no_ping_is_dropped() {
        let settings = WsSettings {
            ping_interval: Duration::from_millis(100),
            pong_timeout: Duration::from_millis(100),
            ..WsSettings::default()
        };
        // A client that never reads, so never answers.
        let (_client, _shared, sessions, task) = start(settings, echo).await;
        let end = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("dropped in time")
            .expect("joined");
        assert_eq!(end, SessionEnd::Dropped);
        assert_eq!(sessions.open(), 0);
    }

    #[tokio::test]
    async fn pings_answered_keep_a_socket_open() {
        let settings = WsSettings {
            ping_interval: Duration::from_millis(50),
            pong_timeout: Duration::from_millis(50),
            ..WsSettings::default()
        };
        let (mut client, _shared, sessions, _task) = start(settings, echo).await;
        // Reading answers the pings (the client's codec pongs on its own): for ten rounds.
        let reading = async {
            let mut pings = 0;
            while let Some(Ok(message)) = client.next().await {
                assert!(matches!(message, Message::Ping(_)), "{message:?}");
                pings += 1;
            }
            pings
        };
        let read = tokio::time::timeout(Duration::from_millis(500), reading).await;
        assert!(read.is_err(), "the socket was closed after {read:?} pings");
        assert_eq!(sessions.open(), 1);
    }
}
