//! What the app and the host share of one open WebSocket: a small queue of received messages
//! (the host stops reading from the client while it is full), the bounded send queue, their
//! wakers, and close requests from the host's side.
//!
//! The app's calls (through `plugin`'s socket table) and the session task both reach it, from
//! any thread: the app may receive and send from two tasks at once. Wakers are woken outside
//! the lock, since waking a plugin's waker runs plugin code.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::host::SessionSocket;

/// How many received messages wait for the app before the host stops reading from the client
/// (TCP's flow control then slows the client down).
pub const RECV_QUEUE: usize = 4;

/// One whole message, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsMessage {
    /// A text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A close frame: its code (1005 when the peer sent none) and reason.
    Close {
        /// The close code.
        code: u16,
        /// The reason, at most 123 bytes.
        reason: Utf8Bytes,
    },
}

/// Received by the app.
pub type Inbound = WsMessage;
/// Sent by the app.
pub type Outbound = WsMessage;

/// Why a message could not be queued for the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The socket is closing or closed.
    #[error("the WebSocket is closing or closed")]
    Closed,
    /// The message is not valid: text that is not UTF-8, a close code that may not be sent, a
    /// reason over 123 bytes, an unknown kind.
    #[error("invalid WebSocket message: {0}")]
    Invalid(String),
}

/// The state one socket's app and session task share; see the module documentation.
#[derive(Debug)]
pub struct WsShared {
    state: Mutex<State>,
    /// The session task, woken when the app queued a message, made room in the receive queue,
    /// released the socket, or the host asked to close it.
    pump: AtomicWaker,
    /// The send queue's bound.
    send_queue: usize,
}

#[derive(Debug, Default)]
struct State {
    inbox: VecDeque<WsMessage>,
    /// A close was queued for the app: nothing else will be; after it, the end.
    inbox_closed: bool,
    recv_waker: Option<Waker>,
    outbox: VecDeque<WsMessage>,
    /// Nothing more may be sent: the app sent a close, or the socket is closing.
    send_closed: bool,
    /// The app queued a close (or released the socket, which queues one).
    close_queued: bool,
    send_waker: Option<Waker>,
    /// A close the host asked for (shutdown, reload grace, a subscription that fell behind).
    host_close: Option<(u16, String)>,
    /// The app released its socket.
    released: bool,
}

impl WsShared {
    /// A socket whose send queue holds `send_queue` messages.
    pub fn new(send_queue: usize) -> Self {
        WsShared {
            state: Mutex::new(State::default()),
            pump: AtomicWaker::new(),
            send_queue: send_queue.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // The app's side.

    /// The next message for the app; `None` once the close was delivered.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Option<WsMessage>> {
        let mut state = self.lock();
        let was_full = state.inbox.len() >= RECV_QUEUE;
        match state.inbox.pop_front() {
            Some(message) => {
                drop(state);
                if was_full {
                    self.pump.wake();
                }
                Poll::Ready(Some(message))
            }
            None if state.inbox_closed => Poll::Ready(None),
            None => {
                let stale = match &state.recv_waker {
                    Some(waker) => !waker.will_wake(cx.waker()),
                    None => true,
                };
                let old = stale
                    .then(|| state.recv_waker.replace(cx.waker().clone()))
                    .flatten();
                drop(state);
                drop(old);
                Poll::Pending
            }
        }
    }

    /// Queues the message `build` makes for the client, if there is room: `build` is called
    /// only then (it takes the app's data), and refuses an invalid message.
    pub fn poll_send(
        &self,
        cx: &mut Context<'_>,
        build: impl FnOnce() -> Result<WsMessage, String>,
    ) -> Poll<Result<(), SendError>> {
        let mut state = self.lock();
        if state.send_closed {
            return Poll::Ready(Err(SendError::Closed));
        }
        if state.outbox.len() >= self.send_queue {
            let stale = match &state.send_waker {
                Some(waker) => !waker.will_wake(cx.waker()),
                None => true,
            };
            let old = stale
                .then(|| state.send_waker.replace(cx.waker().clone()))
                .flatten();
            drop(state);
            drop(old);
            return Poll::Pending;
        }
        let message = match build() {
            Ok(message) => message,
            Err(reason) => return Poll::Ready(Err(SendError::Invalid(reason))),
        };
        if matches!(message, WsMessage::Close { .. }) {
            state.send_closed = true;
            state.close_queued = true;
        }
        state.outbox.push_back(message);
        drop(state);
        self.pump.wake();
        Poll::Ready(Ok(()))
    }

    /// The app released the socket: the session task closes it with 1000 unless it is closing
    /// already. Not here: a session that panics releases its socket while unwinding, and its
    /// socket must get 1011, which the task decides once it sees how the session ended.
    pub fn release(&self) {
        self.lock().released = true;
        self.pump.wake();
    }

    // The session task's side.

    /// Registers the session task's waker.
    pub(super) fn register_pump(&self, waker: &Waker) {
        self.pump.register(waker);
    }

    /// Whether the app's receive queue has room (else the task stops reading).
    pub(super) fn has_room(&self) -> bool {
        self.lock().inbox.len() < RECV_QUEUE
    }

    /// Queues `message` for the app (nothing after a close).
    pub(super) fn deliver(&self, message: WsMessage) {
        let mut state = self.lock();
        if state.inbox_closed {
            return;
        }
        state.inbox_closed = matches!(message, WsMessage::Close { .. });
        state.inbox.push_back(message);
        let waker = state.recv_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The next message the app queued, waking a sender that waited for room.
    pub(super) fn next_outgoing(&self) -> Option<WsMessage> {
        let mut state = self.lock();
        let message = state.outbox.pop_front()?;
        let waker = state.send_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Some(message)
    }

    /// Whether the app has released its socket.
    pub(super) fn released(&self) -> bool {
        self.lock().released
    }

    /// A close the host asked for, once.
    pub(super) fn take_host_close(&self) -> Option<(u16, String)> {
        self.lock().host_close.take()
    }

    /// The app may send nothing more (the host is closing the socket); what it queued still
    /// goes out. Returns whether that includes a close of its own.
    pub(super) fn stop_sending(&self) -> bool {
        let mut state = self.lock();
        state.send_closed = true;
        let queued = state.close_queued;
        let waker = state.send_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        queued
    }

    /// Nothing more can be sent (the socket is closing or gone): what the app still had
    /// queued is dropped, and a sender waiting for room learns it.
    pub(super) fn close_sending(&self) {
        let mut state = self.lock();
        state.send_closed = true;
        let dropped = std::mem::take(&mut state.outbox);
        let waker = state.send_waker.take();
        drop(state);
        drop(dropped);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl SessionSocket for WsShared {
    /// From here on the app can send nothing (its sends fail as closed): the close the host
    /// asked for is the one the client gets, even if the app closes right after, as an app
    /// whose subscription was ended for falling behind may (it has no say in the code).
    fn close(&self, code: u16, reason: &str) {
        let mut state = self.lock();
        if state.send_closed || state.host_close.is_some() {
            return;
        }
        state.host_close = Some((code, reason.to_owned()));
        state.send_closed = true;
        let waker = state.send_waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        self.pump.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    fn text(s: &'static str) -> WsMessage {
        WsMessage::Text(Utf8Bytes::from_static(s))
    }

    #[test]
    fn the_send_queue_is_bounded_and_ends_at_close() {
        let shared = WsShared::new(2);
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..2 {
            assert_eq!(
                shared.poll_send(&mut cx, || Ok(text("a"))),
                Poll::Ready(Ok(()))
            );
        }
        let mut built = false;
        assert!(
            shared
                .poll_send(&mut cx, || {
                    built = true;
                    Ok(text("b"))
                })
                .is_pending()
        );
        assert!(!built, "a full queue takes nothing");
        assert_eq!(shared.next_outgoing(), Some(text("a")));
        let invalid = shared.poll_send(&mut cx, || Err("bad".to_owned()));
        assert_eq!(
            invalid,
            Poll::Ready(Err(SendError::Invalid("bad".to_owned())))
        );
        let close = WsMessage::Close {
            code: 1000,
            reason: Utf8Bytes::from_static("bye"),
        };
        assert_eq!(
            shared.poll_send(&mut cx, || Ok(close.clone())),
            Poll::Ready(Ok(()))
        );
        assert_eq!(
            shared.poll_send(&mut cx, || Ok(text("c"))),
            Poll::Ready(Err(SendError::Closed))
        );
        assert_eq!(shared.next_outgoing(), Some(text("a")));
        assert_eq!(shared.next_outgoing(), Some(close));
        shared.release();
        assert!(shared.released());
        assert_eq!(shared.next_outgoing(), None);
    }

    #[test]
    fn the_close_is_delivered_once_then_the_end() {
        let shared = WsShared::new(2);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(shared.poll_recv(&mut cx).is_pending());
        shared.deliver(text("hi"));
        let close = WsMessage::Close {
            code: 1001,
            reason: Utf8Bytes::from_static(""),
        };
        shared.deliver(close.clone());
        shared.deliver(text("late"));
        assert_eq!(shared.poll_recv(&mut cx), Poll::Ready(Some(text("hi"))));
        assert_eq!(shared.poll_recv(&mut cx), Poll::Ready(Some(close)));
        assert_eq!(shared.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn the_host_closes_once_and_a_release_is_only_noted() {
        let shared = WsShared::new(2);
        let mut cx = Context::from_waker(Waker::noop());
        shared.close(1008, "too slow");
        // The app's own close comes too late.
        let close = WsMessage::Close {
            code: 1001,
            reason: Utf8Bytes::from_static(""),
        };
        assert_eq!(
            shared.poll_send(&mut cx, || Ok(close)),
            Poll::Ready(Err(SendError::Closed))
        );
        shared.close(1001, "later");
        assert_eq!(
            shared.take_host_close(),
            Some((1008, "too slow".to_owned()))
        );
        assert_eq!(shared.take_host_close(), None);
        // The session task closes a released socket, once it knows how the session ended.
        shared.release();
        assert!(shared.released());
        assert_eq!(shared.next_outgoing(), None);
    }
}
