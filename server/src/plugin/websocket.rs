//! The WebSocket side of the capability table (ABI 1.5): accepting a handshake, starting the
//! app's session, and the table of functions behind every [`AbiWebSocket`] the host hands a
//! plugin. Each socket's `state` is one `Arc<WsShared>` reference made by [`PluginSession`]'s
//! start and released by [`release`]; the queues themselves are `host::websocket`'s, in safe
//! code.

use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Arc;

use berth_app::abi::*;
use berth_app::ffi::headers_from_abi;
use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::host::websocket::{
    AcceptError, SendError, StartSession, WsMessage, WsShared, sendable_close_code,
};
use crate::host::{AppServices, SessionSocket};
use crate::plugin::RequestScope;

/// The table of every WebSocket the host hands to a plugin.
static WS_VTABLE: AbiWsVTable = AbiWsVTable {
    size: size_of::<AbiWsVTable>(),
    poll_recv,
    poll_send,
    drop: release,
};

/// The longest close reason (a close frame's payload is at most 125 bytes, 2 for the code).
const MAX_REASON: usize = 123;

/// An app's accepted session, held by the host until the connection is upgraded: started
/// once, or released in the plugin when dropped unstarted.
#[derive(Debug)]
struct PluginSession(Option<AbiWsSession>);

impl Drop for PluginSession {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            // SAFETY: the session moved to the host in `ws_accept`; it is released once, here,
            // as it was never started (plugin code, which catches its own panics).
            unsafe { (session.drop)(session.state) }
        }
    }
}

impl StartSession for PluginSession {
    fn start(
        mut self: Box<Self>,
        socket: Arc<WsShared>,
        services: &Arc<AppServices>,
    ) -> FfiFuture<u32> {
        let Some(session) = self.0.take() else {
            return FfiFuture::new(std::future::ready(1));
        };
        let closer: Arc<dyn SessionSocket> = Arc::clone(&socket) as Arc<dyn SessionSocket>;
        let host = super::host_for(RequestScope::for_session(services, closer));
        let socket = AbiWebSocket {
            state: Arc::into_raw(socket).cast_mut().cast(),
            vtable: &WS_VTABLE,
        };
        // SAFETY: the session moved to the host in `ws_accept` and is consumed once, here
        // (`start` instead of `drop`); the socket and the host handle are owned values handed
        // over, each released by the plugin through its own table.
        unsafe { (session.start)(session.state, socket, host) }
    }
}

berth_app::ffi_fn! {
    /// Accepts the WebSocket handshake of the request `ctx` serves.
    ///
    /// # Safety
    /// The host contract: `ctx` is a live reference the plugin holds, `accept` is borrowed for
    /// the call and `session` moves to the host.
    pub(super) unsafe fn ws_accept(
        ctx: *mut c_void,
        accept: *const AbiWsAccept,
        session: AbiWsSession,
    ) -> u32 {
        // Owned from here: released on every path that does not keep it, the panicking one
        // included.
        let session = Box::new(PluginSession(Some(session)));
        // SAFETY: `ctx` is a live reference made by `host_for` or `clone_ctx` (the host
        // contract).
        let scope = unsafe { &*ctx.cast::<RequestScope>() };
        let Some(handshake) = &scope.handshake else {
            return WS_ACCEPT_NOT_UPGRADE;
        };
        if accept.is_null() {
            return WS_ACCEPT_INVALID;
        }
        // SAFETY: `accept` and what it points to are borrowed for this call (the host
        // contract); the protocol is copied out and the headers copied into a map.
        let (protocol, headers) = unsafe {
            let accept = &*accept;
            (accept.protocol.to_str("the subprotocol"), headers_from_abi(accept.headers))
        };
        let (Ok(protocol), Ok(headers)) = (protocol, headers) else {
            return WS_ACCEPT_INVALID;
        };
        match handshake.accept(protocol, headers, session) {
            Ok(()) => WS_ACCEPT_OK,
            Err(AcceptError::Twice) => WS_ACCEPT_TWICE,
            Err(AcceptError::Late) => WS_ACCEPT_NOT_UPGRADE,
            Err(_) => WS_ACCEPT_INVALID,
        }
    } ?= |_| WS_ACCEPT_INVALID
}

/// Borrows the socket behind `state`.
///
/// # Safety
/// `state` is a live socket made by [`PluginSession`]'s start, not yet released.
unsafe fn socket<'a>(state: *mut c_void) -> &'a WsShared {
    // SAFETY: forwarded to the caller.
    unsafe { &*state.cast_const().cast::<WsShared>() }
}

fn no_message() -> AbiWsMessage {
    AbiWsMessage {
        kind: 0,
        code: 0,
        data: AbiBuf::empty(),
    }
}

fn to_abi(message: WsMessage) -> AbiWsMessage {
    match message {
        WsMessage::Text(text) => AbiWsMessage {
            kind: WS_TEXT,
            code: 0,
            data: AbiBuf::from_bytes(Bytes::from(text)),
        },
        WsMessage::Binary(data) => AbiWsMessage {
            kind: WS_BINARY,
            code: 0,
            data: AbiBuf::from_bytes(data),
        },
        WsMessage::Close { code, reason } => AbiWsMessage {
            kind: WS_CLOSE,
            code: u32::from(code),
            data: AbiBuf::from_bytes(Bytes::from(reason)),
        },
    }
}

berth_app::ffi_fn! {
    /// The next message for the app (the end should it panic).
    ///
    /// # Safety
    /// The socket contract: `state` is live, `cx` valid for the call.
    unsafe fn poll_recv(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiWsRecv {
        // SAFETY: the caller's promise.
        let (socket, cx) = unsafe { (socket(state), &mut *cx) };
        match cx.with_context(|cx| socket.poll_recv(cx)) {
            std::task::Poll::Pending => AbiWsRecv { tag: WS_RECV_PENDING, message: no_message() },
            std::task::Poll::Ready(None) => AbiWsRecv { tag: WS_RECV_END, message: no_message() },
            std::task::Poll::Ready(Some(message)) => AbiWsRecv {
                tag: WS_RECV_MESSAGE,
                message: to_abi(message),
            },
        }
    } ?= |_| AbiWsRecv { tag: WS_RECV_END, message: no_message() }
}

berth_app::ffi_fn! {
    /// Queues the app's message for the client, taking its data only when it is queued.
    ///
    /// # Safety
    /// The socket contract: `state` is live, `cx` valid for the call, `msg` points to a
    /// message the plugin owns, whose data the host takes only on [`WS_SEND_OK`].
    unsafe fn poll_send(
        state: *mut c_void,
        cx: *mut FfiContext<'_>,
        msg: *mut AbiWsMessage,
    ) -> u32 {
        if msg.is_null() {
            return WS_SEND_INVALID;
        }
        // SAFETY: the caller's promise. The data is read in place until it is taken.
        let (socket, cx, message) = unsafe { (socket(state), &mut *cx, &*msg) };
        // SAFETY: the message's owned buffer is readable until it is released (by its owner).
        let view = unsafe { AbiStr { ptr: message.data.ptr, len: message.data.len }.as_bytes() };
        let take = || {
            // SAFETY: the buffer moves to the host: the plugin gives it up on `WS_SEND_OK`,
            // which is what this call returns once `take` has run (the push that follows
            // cannot fail). The `Bytes` release it through the plugin's function.
            unsafe { std::ptr::read(&raw const message.data).into_bytes() }
        };
        let build = || -> Result<WsMessage, String> {
            match message.kind {
                WS_TEXT => {
                    std::str::from_utf8(view).map_err(|e| format!("text that is not UTF-8: {e}"))?;
                    // SAFETY: just checked to be UTF-8; the bytes are never written again.
                    Ok(WsMessage::Text(unsafe { Utf8Bytes::from_bytes_unchecked(take()) }))
                }
                WS_BINARY => Ok(WsMessage::Binary(take())),
                WS_CLOSE => {
                    let code = u16::try_from(message.code)
                        .ok()
                        .filter(|c| *c == 1005 || sendable_close_code(*c))
                        .ok_or_else(|| format!("close code {} may not be sent", message.code))?;
                    if view.len() > MAX_REASON {
                        return Err(format!("a close reason of {} bytes (at most {MAX_REASON})", view.len()));
                    }
                    if code == 1005 && !view.is_empty() {
                        return Err("a close without a code has no reason".to_owned());
                    }
                    std::str::from_utf8(view).map_err(|e| format!("a close reason that is not UTF-8: {e}"))?;
                    // SAFETY: just checked to be UTF-8.
                    let reason = unsafe { Utf8Bytes::from_bytes_unchecked(take()) };
                    Ok(WsMessage::Close { code, reason })
                }
                other => Err(format!("unknown message kind {other}")),
            }
        };
        match cx.with_context(|cx| socket.poll_send(cx, build)) {
            std::task::Poll::Pending => WS_SEND_PENDING,
            std::task::Poll::Ready(Ok(())) => WS_SEND_OK,
            std::task::Poll::Ready(Err(SendError::Invalid(_))) => WS_SEND_INVALID,
            std::task::Poll::Ready(Err(_)) => WS_SEND_CLOSED,
        }
    } ?= |_| WS_SEND_CLOSED
}

berth_app::ffi_fn! {
    /// Releases the app's socket: closed with 1000 unless closing already.
    ///
    /// # Safety
    /// The socket contract: `state` is live, released exactly once, when no other call runs.
    unsafe fn release(state: *mut c_void) {
        // SAFETY: the caller's promise: the reference made by `Arc::into_raw` in
        // `PluginSession::start`, given back once.
        let socket = unsafe { Arc::from_raw(state.cast_const().cast::<WsShared>()) };
        socket.release();
    } ?= |_| ()
}
