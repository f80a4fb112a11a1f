//! Sockets across the boundary (ABI 1.4): the values both sides build and read — a socket
//! poll's result and its I/O error kinds, a connect's outcome — and the plugin's side of an
//! open socket ([`Socket`]) and of a connect in flight ([`SocketConnect`]).
//!
//! The host makes these from its own sockets (`server/src/plugin`); the plugin side reads them
//! back into `std::io` results.

use std::future::Future;
use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::abi::*;
use crate::ffi::addr::socket_addr_from_abi;
use crate::ffi::future::{ContextExt, Panicked};

impl AbiIoPoll {
    /// Not ready yet: the context's waker was registered.
    pub fn pending() -> Self {
        AbiIoPoll {
            tag: IO_PENDING,
            len: 0,
            error: IO_ERR_OTHER,
            message: AbiBuf::empty(),
        }
    }

    /// Done, having moved `len` bytes (0 for flush and shutdown, or a read at the end).
    pub fn ready(len: usize) -> Self {
        AbiIoPoll {
            tag: IO_READY,
            len,
            error: IO_ERR_OTHER,
            message: AbiBuf::empty(),
        }
    }

    /// Failed with `error`.
    pub fn failed(error: &io::Error) -> Self {
        AbiIoPoll {
            tag: IO_ERROR,
            len: 0,
            error: io_error_kind(error.kind()),
            message: AbiBuf::from_string(error.to_string()),
        }
    }

    /// A `poll_*` result, as this side's I/O types return it.
    pub fn from_poll(poll: Poll<io::Result<usize>>) -> Self {
        match poll {
            Poll::Pending => AbiIoPoll::pending(),
            Poll::Ready(Ok(len)) => AbiIoPoll::ready(len),
            Poll::Ready(Err(error)) => AbiIoPoll::failed(&error),
        }
    }

    /// Takes ownership of a received poll result.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's contract for socket polls (an owned message).
    pub unsafe fn into_poll(self) -> Poll<io::Result<usize>> {
        // SAFETY: the message is owned by us now (the caller's promise).
        let message = unsafe { self.message.into_string_lossy() };
        match self.tag {
            IO_PENDING => Poll::Pending,
            IO_READY => Poll::Ready(Ok(self.len)),
            IO_ERROR => Poll::Ready(Err(io::Error::new(io_error_from_abi(self.error), message))),
            other => Poll::Ready(Err(io::Error::other(format!(
                "the host answered a socket call with an unknown tag {other}"
            )))),
        }
    }
}

/// The `IO_ERR_*` kind of an I/O error kind.
pub fn io_error_kind(kind: io::ErrorKind) -> u32 {
    match kind {
        io::ErrorKind::ConnectionReset => IO_ERR_RESET,
        io::ErrorKind::ConnectionAborted => IO_ERR_ABORTED,
        io::ErrorKind::BrokenPipe => IO_ERR_BROKEN_PIPE,
        io::ErrorKind::TimedOut => IO_ERR_TIMED_OUT,
        io::ErrorKind::UnexpectedEof => IO_ERR_UNEXPECTED_EOF,
        io::ErrorKind::InvalidData => IO_ERR_INVALID_DATA,
        io::ErrorKind::NotConnected => IO_ERR_CLOSED,
        _ => IO_ERR_OTHER,
    }
}

/// The I/O error kind of an `IO_ERR_*` kind; unknown kinds are `Other`.
pub fn io_error_from_abi(kind: u32) -> io::ErrorKind {
    match kind {
        IO_ERR_RESET => io::ErrorKind::ConnectionReset,
        IO_ERR_ABORTED => io::ErrorKind::ConnectionAborted,
        IO_ERR_BROKEN_PIPE => io::ErrorKind::BrokenPipe,
        IO_ERR_TIMED_OUT => io::ErrorKind::TimedOut,
        IO_ERR_UNEXPECTED_EOF => io::ErrorKind::UnexpectedEof,
        IO_ERR_INVALID_DATA => io::ErrorKind::InvalidData,
        IO_ERR_CLOSED => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::Other,
    }
}

impl AbiSocket {
    /// No socket (in a failed outcome).
    pub const fn none() -> Self {
        AbiSocket {
            state: std::ptr::null_mut(),
            vtable: std::ptr::null(),
        }
    }
}

impl AbiConnectOutcome {
    /// An open socket.
    pub fn ok(socket: AbiSocket) -> Self {
        AbiConnectOutcome {
            tag: CONNECT_OK,
            socket,
            message: AbiBuf::empty(),
        }
    }

    /// A failed connect: `tag` is one of the `CONNECT_*` failures.
    pub fn failed(tag: u32, message: String) -> Self {
        AbiConnectOutcome {
            tag,
            socket: AbiSocket::none(),
            message: AbiBuf::from_string(message),
        }
    }

    /// Takes ownership of a received outcome: the socket, or the failure's tag and reason.
    /// A socket received with a failure tag is closed here.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's contract for connect outcomes (an owned message; an owned
    /// socket when its vtable is not null).
    pub unsafe fn into_result(self) -> Result<AbiSocket, (u32, String)> {
        // SAFETY: the message is owned by us now (the caller's promise).
        let message = unsafe { self.message.into_string_lossy() };
        let socket = self.socket;
        let usable = !socket.vtable.is_null() && !socket.state.is_null();
        match self.tag {
            CONNECT_OK if usable => Ok(socket),
            CONNECT_OK => Err((CONNECT_OTHER, "the host returned no socket".to_owned())),
            tag => {
                if usable {
                    // SAFETY: an owned socket, closed once here since no one else has it.
                    unsafe { ((*socket.vtable).drop)(socket.state) };
                }
                Err((tag, message))
            }
        }
    }
}

/// An open host socket, owned by the plugin: its functions are called one at a time (each
/// takes `&mut self`), and it is closed through the host's `drop` exactly once, when dropped.
pub(crate) struct Socket(AbiSocket);

impl Socket {
    /// Takes ownership of a received socket.
    ///
    /// # Safety
    /// `raw` must be an open socket under the ABI's socket contract (non-null state and vtable,
    /// owned by the caller).
    unsafe fn from_abi(raw: AbiSocket) -> Self {
        Socket(raw)
    }

    fn vtable(&self) -> &AbiSocketVTable {
        // SAFETY: the socket contract: the vtable is a static in host code, non-null for an
        // open socket (checked by `AbiConnectOutcome::into_result`).
        unsafe { &*self.0.vtable }
    }

    /// Reads into `buf`, as `AsyncRead::poll_read` does.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let (poll_read, state) = (self.vtable().poll_read, self.0.state);
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        // SAFETY: `state` is open and ours, used by one call at a time (`&mut self`); `buf` is
        // initialised memory of `len` bytes, borrowed for the call; the context is valid for it.
        let polled = cx.with_ffi_context(|fcx| unsafe { poll_read(state, fcx, ptr, len) });
        // SAFETY: the host's answer, owned by us from now on.
        within(unsafe { polled.into_poll() }, len, "read")
    }

    /// Writes from `buf`, as `AsyncWrite::poll_write` does.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let (poll_write, state) = (self.vtable().poll_write, self.0.state);
        let (ptr, len) = (buf.as_ptr(), buf.len());
        // SAFETY: as in `poll_read`; `buf` is borrowed for the call.
        let polled = cx.with_ffi_context(|fcx| unsafe { poll_write(state, fcx, ptr, len) });
        // SAFETY: the host's answer, owned by us from now on.
        within(unsafe { polled.into_poll() }, len, "wrote")
    }

    /// Flushes what was written.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (poll_flush, state) = (self.vtable().poll_flush, self.0.state);
        // SAFETY: as in `poll_read`.
        let polled = cx.with_ffi_context(|fcx| unsafe { poll_flush(state, fcx) });
        // SAFETY: the host's answer, owned by us from now on.
        unsafe { polled.into_poll() }.map_ok(|_| ())
    }

    /// Shuts the write half down.
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (poll_shutdown, state) = (self.vtable().poll_shutdown, self.0.state);
        // SAFETY: as in `poll_read`.
        let polled = cx.with_ffi_context(|fcx| unsafe { poll_shutdown(state, fcx) });
        // SAFETY: the host's answer, owned by us from now on.
        unsafe { polled.into_poll() }.map_ok(|_| ())
    }

    /// The address the socket is connected to, when the host knows one.
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: `state` is open and ours; `&self` excludes the `&mut self` calls.
        let addr = unsafe { (self.vtable().peer_addr)(self.0.state) };
        socket_addr_from_abi(&addr)
    }

    /// Upgrades the socket to TLS, verifying the server against `server_name` (empty: the
    /// name it was opened with). The socket moves to the host.
    pub(crate) fn start_tls(self, server_name: &str) -> SocketConnect {
        let this = ManuallyDrop::new(self);
        // SAFETY: `state` is open and ours, and moves to the host here: `ManuallyDrop` keeps our
        // `Drop` from closing it again. The name is borrowed for the call.
        let future =
            unsafe { (this.vtable().start_tls)(this.0.state, AbiStr::new(server_name.as_bytes())) };
        SocketConnect::pending(future)
    }
}

/// A read or write of `asked` bytes that the host says moved more is the host's bug: an error,
/// not a slice out of bounds.
fn within(poll: Poll<io::Result<usize>>, asked: usize, verb: &str) -> Poll<io::Result<usize>> {
    match poll {
        Poll::Ready(Ok(moved)) if moved > asked => Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the host {verb} {moved} bytes of a {asked}-byte buffer"),
        ))),
        other => other,
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: we own the open socket; it is closed here exactly once.
        unsafe { (self.vtable().drop)(self.0.state) }
    }
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Socket")
    }
}

/// A connect (or a TLS upgrade) in flight on the host; dropping it abandons the attempt. It
/// resolves to the open socket, or to a `CONNECT_*` failure and the host's reason.
pub(crate) struct SocketConnect(Option<Result<FfiFuture<AbiConnectOutcome>, (u32, String)>>);

impl SocketConnect {
    pub(crate) fn pending(future: FfiFuture<AbiConnectOutcome>) -> Self {
        SocketConnect(Some(Ok(future)))
    }

    /// A connect that failed before reaching the host.
    pub(crate) fn failed(tag: u32, message: impl Into<String>) -> Self {
        SocketConnect(Some(Err((tag, message.into()))))
    }
}

impl Future for SocketConnect {
    type Output = Result<Socket, (u32, String)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match &mut self.0 {
            Some(Ok(future)) => match future.poll_caught(cx) {
                Poll::Pending => return Poll::Pending,
                // SAFETY: the host's outcome, owned by us from now on.
                Poll::Ready(Ok(outcome)) => unsafe { outcome.into_result() }
                    // SAFETY: `into_result` hands out only open sockets.
                    .map(|socket| unsafe { Socket::from_abi(socket) }),
                Poll::Ready(Err(Panicked)) => {
                    Err((CONNECT_OTHER, "the host's connect panicked".to_owned()))
                }
            },
            Some(Err(_)) => {
                let Some(Err(failed)) = self.0.take() else {
                    unreachable!("matched just above")
                };
                Err(failed)
            }
            None => Err((CONNECT_OTHER, "connect polled after completion".to_owned())),
        };
        self.0 = None;
        Poll::Ready(result)
    }
}

impl std::fmt::Debug for SocketConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketConnect")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_polls_round_trip() {
        // SAFETY: each value was made by this side's constructors just above.
        unsafe {
            assert!(AbiIoPoll::pending().into_poll().is_pending());
            assert!(matches!(
                AbiIoPoll::ready(7).into_poll(),
                Poll::Ready(Ok(7))
            ));
            let reset = io::Error::new(io::ErrorKind::ConnectionReset, "gone");
            let Poll::Ready(Err(back)) = AbiIoPoll::failed(&reset).into_poll() else {
                panic!("an error");
            };
            assert_eq!(back.kind(), io::ErrorKind::ConnectionReset);
            assert_eq!(back.to_string(), "gone");
        }
    }

    #[test]
    fn every_error_kind_survives_the_crossing() {
        for kind in [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::TimedOut,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::InvalidData,
            io::ErrorKind::NotConnected,
            io::ErrorKind::Other,
        ] {
            assert_eq!(io_error_from_abi(io_error_kind(kind)), kind);
        }
        assert_eq!(io_error_from_abi(99), io::ErrorKind::Other);
    }

    #[test]
    fn a_failed_connect_carries_its_reason() {
        let outcome = AbiConnectOutcome::failed(CONNECT_DENIED, "not allowed".to_owned());
        // SAFETY: made by this side's constructor.
        let result = unsafe { outcome.into_result() };
        assert_eq!(
            result.map(|_| ()),
            Err((CONNECT_DENIED, "not allowed".to_owned()))
        );
        // An "ok" without a socket is an error, not a null pointer handed on.
        let outcome = AbiConnectOutcome::ok(AbiSocket::none());
        // SAFETY: as above.
        assert!(unsafe { outcome.into_result() }.is_err());
    }
}
