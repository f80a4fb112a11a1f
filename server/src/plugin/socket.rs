//! The socket table ([`AbiSocketVTable`], ABI 1.4): what a plugin calls on a socket the host
//! opened for it. Each `state` is a `Box<Socket>` made by [`to_abi`] and freed by [`drop`]
//! (or taken by [`start_tls`]); the I/O itself is `host::socket`'s, in safe code.

use std::ffi::c_void;
use std::mem::{MaybeUninit, size_of};

use berth_app::abi::*;
use berth_app::ffi::IntoFfi as _;
use tokio::io::ReadBuf;

use crate::host::{ConnectError, Socket};

/// The table of every socket the host hands to a plugin.
static SOCKET_VTABLE: AbiSocketVTable = AbiSocketVTable {
    size: size_of::<AbiSocketVTable>(),
    poll_read,
    poll_write,
    poll_flush,
    poll_shutdown,
    start_tls,
    peer_addr,
    drop,
};

/// Hands `socket` over to the plugin, which frees it through the table's `drop`.
fn to_abi(socket: Socket) -> AbiSocket {
    AbiSocket {
        state: Box::into_raw(Box::new(socket)).cast(),
        vtable: &SOCKET_VTABLE,
    }
}

/// A connect's (or `start_tls`'s) result as the plugin receives it.
pub(super) fn outcome(result: Result<Socket, ConnectError>) -> AbiConnectOutcome {
    match result {
        Ok(socket) => AbiConnectOutcome::ok(to_abi(socket)),
        Err(error) => AbiConnectOutcome::failed(error.tag(), error.to_string()),
    }
}

/// The poll result of a call that panicked in the host: an error, so the plugin stops there.
fn host_panicked(panic: &str) -> AbiIoPoll {
    AbiIoPoll::failed(&std::io::Error::other(format!(
        "the host panicked in a socket call: {panic}"
    )))
}

/// Borrows the socket behind `state`.
///
/// # Safety
/// `state` is a live socket made by [`to_abi`], not yet dropped or taken by `start_tls`.
unsafe fn socket<'a>(state: *mut c_void) -> &'a Socket {
    // SAFETY: forwarded to the caller.
    unsafe { &*state.cast::<Socket>() }
}

berth_app::ffi_fn! {
    /// Reads into the plugin's buffer.
    ///
    /// # Safety
    /// The socket contract: `state` is live, `cx` valid for the call, `buf[..len]` writable for
    /// the call (it may be uninitialised; null when `len` is 0).
    unsafe fn poll_read(
        state: *mut c_void,
        cx: *mut FfiContext<'_>,
        buf: *mut u8,
        len: usize,
    ) -> AbiIoPoll {
        // SAFETY: the caller's promise. The slice is of `MaybeUninit`, so the plugin's memory
        // need not be initialised; `ReadBuf` only ever writes it.
        let (socket, cx, target) = unsafe {
            let target: &mut [MaybeUninit<u8>] = if buf.is_null() || len == 0 {
                &mut []
            } else {
                std::slice::from_raw_parts_mut(buf.cast(), len)
            };
            (socket(state), &mut *cx, target)
        };
        let mut read = ReadBuf::uninit(target);
        let polled = cx.with_context(|cx| socket.poll_read(cx, &mut read));
        AbiIoPoll::from_poll(polled.map_ok(|()| read.filled().len()))
    } ?= |panic| host_panicked(&panic)
}

berth_app::ffi_fn! {
    /// Writes from the plugin's buffer.
    ///
    /// # Safety
    /// The socket contract: `state` is live, `cx` valid for the call, `buf[..len]` readable
    /// for the call (null when `len` is 0).
    unsafe fn poll_write(
        state: *mut c_void,
        cx: *mut FfiContext<'_>,
        buf: *const u8,
        len: usize,
    ) -> AbiIoPoll {
        // SAFETY: the caller's promise; `AbiStr` reads a null or empty buffer as empty.
        let (socket, cx, data) = unsafe { (socket(state), &mut *cx, AbiStr { ptr: buf, len }.as_bytes()) };
        AbiIoPoll::from_poll(cx.with_context(|cx| socket.poll_write(cx, data)))
    } ?= |panic| host_panicked(&panic)
}

berth_app::ffi_fn! {
    /// Flushes the socket.
    ///
    /// # Safety
    /// The socket contract: `state` is live, `cx` valid for the call.
    unsafe fn poll_flush(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiIoPoll {
        // SAFETY: the caller's promise.
        let (socket, cx) = unsafe { (socket(state), &mut *cx) };
        let polled = cx.with_context(|cx| socket.poll_flush(cx));
        AbiIoPoll::from_poll(polled.map_ok(|()| 0))
    } ?= |panic| host_panicked(&panic)
}

berth_app::ffi_fn! {
    /// Shuts down the socket's write half.
    ///
    /// # Safety
    /// As for [`poll_flush`].
    unsafe fn poll_shutdown(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiIoPoll {
        // SAFETY: the caller's promise.
        let (socket, cx) = unsafe { (socket(state), &mut *cx) };
        let polled = cx.with_context(|cx| socket.poll_shutdown(cx));
        AbiIoPoll::from_poll(polled.map_ok(|()| 0))
    } ?= |panic| host_panicked(&panic)
}

berth_app::ffi_fn! {
    /// Upgrades the socket to TLS; takes `state`.
    ///
    /// # Safety
    /// The socket contract: `state` is live and the plugin hands it over (it never uses it
    /// again); `server_name` is borrowed for the call.
    unsafe fn start_tls(state: *mut c_void, server_name: AbiStr) -> FfiFuture<AbiConnectOutcome> {
        // SAFETY: the plugin hands the box over (the caller's promise): taken first, so that
        // it is freed on every path below.
        let socket = unsafe { Box::from_raw(state.cast::<Socket>()) };
        // SAFETY: borrowed for this call (the caller's promise).
        let name = match unsafe { server_name.to_str("the TLS server name") } {
            Ok("") => None,
            Ok(name) => Some(name.to_owned()),
            Err(e) => {
                let failed = AbiConnectOutcome::failed(CONNECT_INVALID, e.0);
                return std::future::ready(failed).into_ffi();
            }
        };
        let upgrading = socket.start_tls(name);
        futures_util::FutureExt::map(upgrading, outcome).into_ffi()
    } ?= |panic| {
        let message = format!("the host panicked starting TLS: {panic}");
        std::future::ready(AbiConnectOutcome::failed(CONNECT_OTHER, message)).into_ffi()
    }
}

berth_app::ffi_fn! {
    /// The socket's peer address (none should it panic).
    ///
    /// # Safety
    /// The socket contract: `state` is live.
    unsafe fn peer_addr(state: *mut c_void) -> AbiSocketAddr {
        // SAFETY: the caller's promise.
        let socket = unsafe { socket(state) };
        berth_app::ffi::socket_addr_to_abi(socket.peer_addr())
    } ?= |_| berth_app::ffi::socket_addr_to_abi(None)
}

berth_app::ffi_fn! {
    /// Closes and frees the socket; a destructor that panics leaks it instead.
    ///
    /// # Safety
    /// The socket contract: `state` is live, dropped exactly once, by its owner.
    unsafe fn drop(state: *mut c_void) {
        // SAFETY: the caller's promise.
        std::mem::drop(unsafe { Box::from_raw(state.cast::<Socket>()) })
    } ?= |_| ()
}
