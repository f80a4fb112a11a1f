//! The channel between the supervisor and one worker: a Unix socket pair whose worker end is
//! the worker's standard input. First the supervisor sends the descriptors the worker serves
//! with (the listener and the call table) in one message; from then on both sides write JSON
//! lines. The worker takes the socket closing as its supervisor's death.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the supervisor asks of a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ToWorker {
    /// Stop accepting, finish the requests in flight within the drain timeout, and exit 0.
    Drain,
    /// Answer an admin API request (`GET /apps`, `POST /apps/<name>/reload`, `GET /pubsub`)
    /// as a single process would, about this worker.
    Admin {
        /// Echoed in the reply.
        id: u64,
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// A message another worker's app published on the in-memory broker.
    Deliver {
        /// The channel.
        channel: String,
        /// The message, base64.
        payload: String,
    },
}

/// What a worker tells its supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FromWorker {
    /// The apps are loaded and the worker accepts connections.
    Ready,
    /// The answer to the request with this `id`: an HTTP status and a JSON body, as the admin
    /// API would answer it in a single process.
    Reply {
        /// The request's.
        id: u64,
        /// The status the admin API answers with.
        status: u16,
        /// The body.
        body: Value,
    },
    /// An app published this on the in-memory broker: for the other workers' subscribers.
    Publish {
        /// The channel.
        channel: String,
        /// The message, base64.
        payload: String,
    },
}

/// A message's bytes as a control message carries them.
pub fn encode(payload: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(payload)
}

/// The bytes of a message [`encode`]d.
pub fn decode(payload: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()
}

/// The descriptors a worker serves with, in the order they are sent.
#[derive(Debug)]
pub struct WorkerFds {
    /// The shared HTTP listener.
    pub listener: OwnedFd,
    /// The memfd of the worker's call table.
    pub calls: OwnedFd,
}

/// Sends `listener` and `calls` over `socket` in one message.
pub fn send_fds(
    socket: impl AsFd,
    listener: BorrowedFd<'_>,
    calls: BorrowedFd<'_>,
) -> io::Result<()> {
    let fds = [listener, calls];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other(
            "the descriptors do not fit the control message",
        ));
    }
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(b"F")],
        &mut control,
        SendFlags::empty(),
    )?;
    Ok(())
}

/// Receives what [`send_fds`] sent: the first message on `socket`.
pub fn recv_fds(socket: impl AsFd) -> io::Result<WorkerFds> {
    let mut byte = [0u8; 1];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut byte)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    let mut fds = fds.into_iter();
    match (received.bytes, fds.next(), fds.next()) {
        (1, Some(listener), Some(calls)) => Ok(WorkerFds { listener, calls }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "standard input is not a Berth supervisor's control socket (no descriptors came)",
        )),
    }
}

/// One message as the line that carries it.
pub fn line(message: &impl Serialize) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_and_messages_cross() -> io::Result<()> {
        let (a, b) = UnixStream::pair()?;
        let (listener, calls) = UnixStream::pair()?;
        send_fds(&a, listener.as_fd(), calls.as_fd())?;
        let fds = recv_fds(&b)?;
        // The received descriptors are the same sockets: what is written to one end of the
        // original pair comes out of the received copy of the other.
        let received = UnixStream::from(fds.calls);
        io::Write::write_all(&mut &listener, b"x")?;
        let mut got = [0u8; 1];
        io::Read::read_exact(&mut &received, &mut got)?;
        assert_eq!(&got, b"x");

        let reload = ToWorker::Admin {
            id: 7,
            method: "POST".into(),
            path: "/apps/hello/reload".into(),
        };
        let text = line(&reload);
        assert_eq!(
            String::from_utf8_lossy(&text),
            "{\"op\":\"admin\",\"id\":7,\"method\":\"POST\",\"path\":\"/apps/hello/reload\"}\n"
        );
        let back: ToWorker = serde_json::from_slice(&text).map_err(io::Error::other)?;
        assert_eq!(back, reload);
        Ok(())
    }

    #[test]
    fn a_socket_without_descriptors_is_refused() -> io::Result<()> {
        let (a, b) = UnixStream::pair()?;
        io::Write::write_all(&mut &a, b"{}\n")?;
        let err = recv_fds(&b).expect_err("no descriptors");
        assert!(err.to_string().contains("not a Berth supervisor"), "{err}");
        Ok(())
    }
}
