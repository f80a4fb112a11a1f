//! WebSockets across the boundary (ABI 1.5): the values both sides build and read — one
//! message ([`AbiWsMessage`]) and a receive poll's result ([`AbiWsRecv`]) — and the plugin's
//! side of an open socket, split into the half that receives ([`WsRecvHalf`]) and the half that
//! sends ([`WsSendHalf`]), and of the session the host starts once the connection is upgraded
//! ([`session`]).
//!
//! The SDK's `websocket` module turns the halves' `(kind, code, data)` triples into its
//! `Message` type; nothing here knows it.

use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;

use crate::abi::*;
use crate::ffi::future::ContextExt;
use crate::ffi::host_handle::HostHandle;
use crate::ffi::panic::{catch, install_panic_hook};

/// What the session future `start` returns resolves to when the app's session ended (panics
/// resolve `FfiPoll::Panicked` instead). The ABI defines no other value.
pub const SESSION_DONE: u32 = 0;

impl AbiWsMessage {
    /// A message of `kind` (a `WS_*` kind), handing `data` over without copying; `code` is the
    /// close code of a [`WS_CLOSE`] (0 otherwise).
    pub fn new(kind: u32, code: u32, data: Bytes) -> Self {
        AbiWsMessage {
            kind,
            code,
            data: AbiBuf::from_bytes(data),
        }
    }

    /// No message (in a poll that has none).
    pub const fn empty() -> Self {
        AbiWsMessage {
            kind: 0,
            code: 0,
            data: AbiBuf::empty(),
        }
    }

    /// Takes ownership of a received message: its kind, code and data (dropping the
    /// [`Bytes`] releases the buffer).
    ///
    /// # Safety
    /// `self.data` must satisfy the ABI's owned-buffer contract and not be released elsewhere.
    pub unsafe fn into_parts(self) -> (u32, u32, Bytes) {
        // SAFETY: the caller's promise.
        let data = unsafe { self.data.into_bytes() };
        (self.kind, self.code, data)
    }
}

impl AbiWsRecv {
    /// Nothing yet: the context's waker was registered.
    pub const fn pending() -> Self {
        AbiWsRecv {
            tag: WS_RECV_PENDING,
            message: AbiWsMessage::empty(),
        }
    }

    /// The socket is closed and everything received was delivered.
    pub const fn end() -> Self {
        AbiWsRecv {
            tag: WS_RECV_END,
            message: AbiWsMessage::empty(),
        }
    }

    /// A message, handed over to the receiver.
    pub fn message(message: AbiWsMessage) -> Self {
        AbiWsRecv {
            tag: WS_RECV_MESSAGE,
            message,
        }
    }
}

/// An open socket the host handed over. Both halves share it, and the last one to go releases
/// it (`vtable.drop`), so `drop` never runs during one of their calls.
struct RawWs(AbiWebSocket);

// SAFETY: the ABI lets the plugin call `poll_recv` and `poll_send` at the same time from any
// threads, but neither twice at once: only `WsRecvHalf` calls `poll_recv` and only `WsSendHalf`
// calls `poll_send`, each through `&mut self`, and there is one of each per socket. `drop` runs
// once, from the `Arc`'s last owner, when no half can be calling.
unsafe impl Send for RawWs {}
// SAFETY: as above.
unsafe impl Sync for RawWs {}

impl RawWs {
    /// The socket's functions; `None` when the host handed over no socket (its bug), which then
    /// behaves as a closed one.
    fn vtable(&self) -> Option<&AbiWsVTable> {
        if self.0.vtable.is_null() || self.0.state.is_null() {
            return None;
        }
        // SAFETY: the socket contract: a non-null vtable is a static in host code.
        Some(unsafe { &*self.0.vtable })
    }
}

impl Drop for RawWs {
    fn drop(&mut self) {
        if let Some(vtable) = self.vtable() {
            // SAFETY: we own the socket; the last half is gone, so no call runs, and it is
            // released here exactly once.
            unsafe { (vtable.drop)(self.0.state) }
        }
    }
}

/// The half of an open socket that receives. One per socket.
pub(crate) struct WsRecvHalf {
    raw: Arc<RawWs>,
    /// The host said [`WS_RECV_END`] (or something it should not have): do not ask again.
    ended: bool,
}

impl WsRecvHalf {
    /// The next message as `(kind, code, data)`, or `None` once the socket is closed and
    /// everything received was delivered.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<(u32, u32, Bytes)>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let Some(vtable) = self.raw.vtable() else {
            self.ended = true;
            return Poll::Ready(None);
        };
        let (poll_recv, state) = (vtable.poll_recv, self.raw.0.state);
        // SAFETY: `state` is an open socket we own; only this half calls `poll_recv`, one call at
        // a time (`&mut self`); the context is valid for the call.
        let polled = cx.with_ffi_context(|fcx| unsafe { poll_recv(state, fcx) });
        // SAFETY: the host's answer: its message (empty unless `WS_RECV_MESSAGE`) is ours.
        let (kind, code, data) = unsafe { polled.message.into_parts() };
        match polled.tag {
            WS_RECV_PENDING => Poll::Pending,
            WS_RECV_MESSAGE => Poll::Ready(Some((kind, code, data))),
            // `WS_RECV_END`, or a tag this plugin does not know: the end either way.
            _ => {
                self.ended = true;
                Poll::Ready(None)
            }
        }
    }
}

/// The half of an open socket that sends. One per socket.
pub(crate) struct WsSendHalf {
    raw: Arc<RawWs>,
}

impl WsSendHalf {
    /// Offers `out` to the host's send queue: [`WS_SEND_OK`] (the host took its data),
    /// [`WS_SEND_CLOSED`] or [`WS_SEND_INVALID`] (`out` keeps it), or pending while the queue
    /// is full.
    pub(crate) fn poll_send(&mut self, cx: &mut Context<'_>, out: &mut Outgoing) -> Poll<u32> {
        let Some(vtable) = self.raw.vtable() else {
            return Poll::Ready(WS_SEND_CLOSED);
        };
        let (poll_send, state) = (vtable.poll_send, self.raw.0.state);
        let msg: *mut AbiWsMessage = &mut out.0;
        // SAFETY: `state` is an open socket we own; only this half calls `poll_send`, one call at
        // a time (`&mut self`); `msg` is ours and valid for the call; so is the context.
        let tag = cx.with_ffi_context(|fcx| unsafe { poll_send(state, fcx, msg) });
        match tag {
            WS_SEND_PENDING => Poll::Pending,
            WS_SEND_OK => {
                out.handed_over();
                Poll::Ready(WS_SEND_OK)
            }
            other => Poll::Ready(other),
        }
    }
}

/// A message on its way to the host: it owns its data until the host takes it
/// ([`WS_SEND_OK`]); dropped before that (a send that was cancelled, or refused), it releases
/// the data itself.
pub(crate) struct Outgoing(AbiWsMessage);

impl Outgoing {
    pub(crate) fn new(kind: u32, code: u32, data: Bytes) -> Self {
        Outgoing(AbiWsMessage::new(kind, code, data))
    }

    /// The host took the data: forget it without releasing it.
    fn handed_over(&mut self) {
        self.0.data = AbiBuf::empty();
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let data = std::mem::replace(&mut self.0.data, AbiBuf::empty());
        // SAFETY: the data is still ours (`handed_over` empties it once the host has it), made
        // by `AbiBuf::from_bytes`, and released here once.
        drop(unsafe { data.into_bytes() });
    }
}

/// The app's side of a session, as the SDK builds it: what to run once the host has
/// upgraded the connection, given the socket's two halves and a host handle of the session's.
pub(crate) trait SessionStart: Send + 'static {
    /// The session.
    type Future: Future<Output = ()> + Send + 'static;
    /// Starts the session.
    fn start(self, sender: WsSendHalf, receiver: WsRecvHalf, host: HostHandle) -> Self::Future;
}

impl<F, Fut> SessionStart for F
where
    F: FnOnce(WsSendHalf, WsRecvHalf, HostHandle) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    type Future = Fut;

    fn start(self, sender: WsSendHalf, receiver: WsRecvHalf, host: HostHandle) -> Fut {
        self(sender, receiver, host)
    }
}

/// `start` as the ABI's session, to hand to `HostVTable::ws_accept`: the host calls its
/// `start` or its `drop`, once.
pub(crate) fn session<S: SessionStart>(start: S) -> AbiWsSession {
    AbiWsSession {
        state: Box::into_raw(Box::new(start)).cast(),
        start: start_session::<S>,
        drop: drop_session::<S>,
    }
}

/// Frees a session that was never handed to a host.
pub(crate) fn discard(session: AbiWsSession) {
    // SAFETY: `session` was made by `session` above and is ours: its `drop` consumes `state`
    // once, here.
    unsafe { (session.drop)(session.state) }
}

ffi_fn! {
    /// A session's `start`: takes the socket and the host handle, then runs the app's session
    /// as a future the host polls. A panic, in starting or in the session, is logged through
    /// the session's host ("websocket session panicked: ...") and resolves
    /// `FfiPoll::Panicked`.
    ///
    /// # Safety
    /// The session contract: `state` is the `Box<S>` [`session`] made, consumed once by this or
    /// `drop_session`; `socket` and `host` move to the plugin.
    unsafe fn start_session<S: SessionStart>(
        state: *mut c_void,
        socket: AbiWebSocket,
        host: AbiHost,
    ) -> FfiFuture<u32> {
        // Take ownership first, so that everything is released whatever happens next.
        // SAFETY: the socket and the host reference move to us (the caller's promise).
        let (raw, host) = (Arc::new(RawWs(socket)), unsafe { HostHandle::from_abi(host) });
        // SAFETY: the caller's promise: `state` is our box, consumed once.
        let start = unsafe { Box::from_raw(state.cast::<S>()) };
        install_panic_hook();
        let logger = host.clone();
        let sender = WsSendHalf { raw: Arc::clone(&raw) };
        let receiver = WsRecvHalf { raw, ended: false };
        match catch(move || start.start(sender, receiver, host)) {
            Ok(future) => FfiFuture::boxed(Session { future, host: logger }, poll_session::<S::Future>),
            Err(message) => {
                logger.log(LOG_ERROR, &format!("websocket session panicked: {message}"));
                panicked()
            }
        }
    } ?= |_| panicked()
}

ffi_fn! {
    /// A session's `drop`: frees the app's session unstarted (dropping its closure).
    ///
    /// # Safety
    /// As for [`start_session`].
    unsafe fn drop_session<S: SessionStart>(state: *mut c_void) {
        // SAFETY: the caller's promise: `state` is our box, consumed once.
        drop(unsafe { Box::from_raw(state.cast::<S>()) })
    } ?= |_| ()
}

/// A running session: the app's future, and a host reference to log its panic with.
struct Session<F> {
    future: F,
    host: HostHandle,
}

ffi_fn! {
    /// Polls a [`Session`]. A panic in the app's future is caught here, so that its message
    /// reaches the host's log; the macro's own `catch` only covers this glue.
    ///
    /// # Safety
    /// The future contract: `fut_ptr` is the box `start_session` made, until `drop_fn`; `cx`
    /// is valid for the call; not polled again after `Ready` or `Panicked`.
    unsafe fn poll_session<F: Future>(fut_ptr: *mut c_void, cx: *mut FfiContext<'_>) -> FfiPoll<u32> {
        // SAFETY: the caller's promise.
        let (session, cx) = unsafe { (&mut *fut_ptr.cast::<Session<F>>(), &mut *cx) };
        // SAFETY: the box pins the session until it is dropped, and `future` is never moved out.
        let future = unsafe { Pin::new_unchecked(&mut session.future) };
        match catch(|| cx.with_context(|cx| future.poll(cx))) {
            Ok(Poll::Pending) => FfiPoll::Pending,
            Ok(Poll::Ready(_)) => FfiPoll::Ready(SESSION_DONE),
            Err(message) => {
                session.host.log(LOG_ERROR, &format!("websocket session panicked: {message}"));
                FfiPoll::Panicked
            }
        }
    } ?= |_| FfiPoll::Panicked
}

/// A session future that has panicked already (in starting).
fn panicked() -> FfiFuture<u32> {
    FfiFuture::boxed((), poll_panicked)
}

ffi_fn! {
    /// The `poll_fn` of [`panicked`].
    ///
    /// # Safety
    /// None needed: it reads none of its arguments.
    unsafe fn poll_panicked(_fut_ptr: *mut c_void, _cx: *mut FfiContext<'_>) -> FfiPoll<u32> {
        FfiPoll::Panicked
    } ?= |_| FfiPoll::Panicked
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::ffi::test_support::*;

    #[test]
    fn messages_round_trip_and_release_their_data_once() {
        let drops = Drops::default();
        let message = AbiWsMessage::new(WS_BINARY, 0, drops.bytes(b"payload"));
        // SAFETY: just made, received once.
        let (kind, code, data) = unsafe { message.into_parts() };
        assert_eq!((kind, code, &data[..]), (WS_BINARY, 0, &b"payload"[..]));
        drop(data);
        assert_eq!(drops.count(), 1);

        // Refused or cancelled: the sender releases it.
        let out = Outgoing::new(WS_TEXT, 0, drops.bytes(b"never sent"));
        drop(out);
        assert_eq!(drops.count(), 2);
        // Taken by the host: the sender must not release it.
        let mut out = Outgoing::new(WS_TEXT, 0, drops.bytes(b"sent"));
        let taken = std::mem::replace(&mut out.0.data, AbiBuf::empty());
        out.handed_over();
        drop(out);
        assert_eq!(drops.count(), 2);
        // SAFETY: the host's copy, released once.
        drop(unsafe { taken.into_bytes() });
        assert_eq!(drops.count(), 3);
    }

    #[test]
    fn a_socket_the_host_did_not_give_is_closed() {
        let raw = Arc::new(RawWs(AbiWebSocket {
            state: std::ptr::null_mut(),
            vtable: std::ptr::null(),
        }));
        let mut receiver = WsRecvHalf {
            raw: Arc::clone(&raw),
            ended: false,
        };
        let mut sender = WsSendHalf { raw };
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(receiver.poll_recv(&mut cx), Poll::Ready(None));
        let mut out = Outgoing::new(WS_TEXT, 0, Bytes::from_static(b"x"));
        assert_eq!(
            sender.poll_send(&mut cx, &mut out),
            Poll::Ready(WS_SEND_CLOSED)
        );
    }

    #[test]
    fn a_fake_sockets_halves_receive_send_and_release_it_once() {
        let (socket, fake) = fake_websocket(2, [(WS_TEXT, 0, "hello")]);
        let raw = Arc::new(RawWs(socket));
        let mut receiver = WsRecvHalf {
            raw: Arc::clone(&raw),
            ended: false,
        };
        let mut sender = WsSendHalf { raw };
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(Some((kind, _, data))) = receiver.poll_recv(&mut cx) else {
            panic!("a message");
        };
        assert_eq!((kind, &data[..]), (WS_TEXT, &b"hello"[..]));
        assert!(receiver.poll_recv(&mut cx).is_pending(), "nothing more yet");
        for n in 0..2 {
            let mut out = Outgoing::new(WS_BINARY, 0, Bytes::from(vec![n]));
            assert_eq!(sender.poll_send(&mut cx, &mut out), Poll::Ready(WS_SEND_OK));
        }
        let mut out = Outgoing::new(WS_BINARY, 0, Bytes::from_static(b"full"));
        assert!(
            sender.poll_send(&mut cx, &mut out).is_pending(),
            "the queue holds 2"
        );
        fake.end_client();
        assert_eq!(receiver.poll_recv(&mut cx), Poll::Ready(None));
        drop(receiver);
        assert_eq!(fake.releases(), 0, "the sender still holds it");
        drop(out);
        drop(sender);
        assert_eq!(fake.releases(), 1);
        assert_eq!(fake.sent().len(), 2);
    }
}
