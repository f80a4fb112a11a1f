//! Sockets across the boundary (ABI 1.4): the values both sides build and read — a socket
//! poll's result and its I/O error kinds, a connect's outcome.
//!
//! The host makes these from its own sockets (`server/src/plugin`); the plugin side reads them
//! back into `std::io` results.

use std::io;
use std::task::Poll;

use crate::abi::*;

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
