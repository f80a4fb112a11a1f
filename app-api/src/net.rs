//! TCP connections opened by the host for the app: [`HostStream`], and what opens one
//! ([`ConnectOptions`], [`Connect`]).
//!
//! The plugin's own copy of tokio has no reactor, so a `tokio::net::TcpStream` cannot work
//! inside an app. The host opens the connection on its reactor instead (after checking the
//! app's allowlist, `allowed_outbound_hosts` in `berth.toml`), and the app reads and writes it
//! through the host. [`HostStream`] implements both tokio's and futures' `AsyncRead`/`AsyncWrite`, so
//! database drivers and protocol crates that take a generic stream run on it unchanged.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::abi::{
    CONNECT_DENIED, CONNECT_FAILED, CONNECT_INVALID, CONNECT_LIMIT, CONNECT_TIMEOUT,
    CONNECT_TLS_FAILED,
};
use crate::ffi::socket::{Socket, SocketConnect};

/// What [`Host::connect_with`](crate::Host::connect_with) opens.
///
/// ```
/// use berth_app::ConnectOptions;
/// use std::time::Duration;
/// let options = ConnectOptions::new("db.internal", 5432)
///     .tls(true)
///     .server_name("db.example.com")
///     .timeout(Duration::from_secs(3));
/// assert_eq!(options.host(), "db.internal");
/// ```
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    pub(crate) server_name: Option<String>,
    pub(crate) timeout: Option<Duration>,
}

impl ConnectOptions {
    /// A plain TCP connection to `host` (a name, or an IP address; IPv6 without brackets) and
    /// `port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ConnectOptions {
            host: host.into(),
            port,
            tls: false,
            server_name: None,
            timeout: None,
        }
    }

    /// TLS from the first byte, done by the host and verified against its root certificates
    /// (protocols that upgrade in mid-stream use [`HostStream::start_tls`] instead).
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// The name TLS verifies the server's certificate against (default: the host name).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Limits the time to connect, TLS handshake included (default: the host's connect
    /// timeout). The host also bounds it by the deadline of the request that connects.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// The future of [`Host::connect`](crate::Host::connect), and of [`HostStream::start_tls`].
/// Dropping it abandons the attempt.
///
/// It fails with an [`io::Error`] whose kind says why, with the host's reason as its message:
/// `PermissionDenied` (the app's allowlist does not grant the host and port), `TimedOut`,
/// `ConnectionRefused` (refused, unreachable, or the name did not resolve), `QuotaExceeded`
/// (the app holds as many sockets as the host allows it), `InvalidInput` (an empty host name,
/// port 0), `InvalidData` (the TLS handshake failed), `Unsupported` (a mock host), or `Other`.
#[must_use = "futures do nothing unless awaited"]
pub struct Connect(pub(crate) SocketConnect);

impl Future for Connect {
    type Output = io::Result<HostStream>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|result| {
            result
                .map(|socket| HostStream { socket })
                .map_err(|(tag, message)| io::Error::new(connect_error_kind(tag), message))
        })
    }
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Connect")
    }
}

/// The `io::ErrorKind` of a `CONNECT_*` failure.
pub(crate) fn connect_error_kind(tag: u32) -> io::ErrorKind {
    match tag {
        CONNECT_DENIED => io::ErrorKind::PermissionDenied,
        CONNECT_TIMEOUT => io::ErrorKind::TimedOut,
        CONNECT_FAILED => io::ErrorKind::ConnectionRefused,
        CONNECT_LIMIT => io::ErrorKind::QuotaExceeded,
        CONNECT_INVALID => io::ErrorKind::InvalidInput,
        CONNECT_TLS_FAILED => io::ErrorKind::InvalidData,
        UNSUPPORTED => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    }
}

/// Not an ABI tag: what a mock host's connect fails with.
pub(crate) const UNSUPPORTED: u32 = u32::MAX;

/// A TCP connection (possibly with TLS) opened by the host, from
/// [`Host::connect`](crate::Host::connect).
///
/// Reads and writes go through the host's reactor, so it works where tokio's own sockets
/// cannot. It implements tokio's `AsyncRead`/`AsyncWrite` and futures' `AsyncRead`/
/// `AsyncWrite` (`poll_close` shuts the write half down). Dropping it closes the connection;
/// the host also closes it when the app version that opened it is retired, after which every
/// call fails with `NotConnected`.
pub struct HostStream {
    socket: Socket,
}

impl HostStream {
    /// Upgrades the connection to TLS in mid-stream, as protocols with a STARTTLS step need
    /// (PostgreSQL's `SSLRequest`, SMTP). The host does the handshake and verifies the server's
    /// certificate against `server_name`; an empty name means the host name the connection was
    /// opened with. On failure the connection is closed.
    pub fn start_tls(self, server_name: &str) -> Connect {
        Connect(self.socket.start_tls(server_name))
    }

    /// The address the connection is connected to.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.socket.peer_addr().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                "the host reported no peer address",
            )
        })
    }
}

impl fmt::Debug for HostStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostStream")
            .field("peer_addr", &self.socket.peer_addr())
            .finish()
    }
}

impl tokio::io::AsyncRead for HostStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // The host writes into initialised memory only: `ReadBuf` zeroes the unfilled part
        // once, and remembers it.
        let read = self.socket.poll_read(cx, buf.initialize_unfilled());
        read.map_ok(|n| buf.advance(n))
    }
}

impl tokio::io::AsyncWrite for HostStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.socket.poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_shutdown(cx)
    }
}

impl futures_io::AsyncRead for HostStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.socket.poll_read(cx, buf)
    }
}

impl futures_io::AsyncWrite for HostStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.socket.poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_shutdown(cx)
    }
}
