//! TCP sockets for apps (ABI 1.4): what a database or cache client needs that a fetch cannot
//! give, opened on the host's reactor under the host's rules.
//!
//! [`connect`] checks everything that needs no network first — the request, the app's
//! allowlist (matched on the name the app asked for, before any DNS lookup), the app version's
//! limit on open sockets — and only then resolves, connects (`TCP_NODELAY`) and, when asked,
//! does TLS with the host's roots, all within one time limit. The [`Socket`] it gives is what
//! the plugin owns (through `plugin`'s socket table); it reads and writes through a lock
//! shared with its version's [`Sockets`], so that when the version is retired
//! ([`Sockets::close_all`], after its `shutdown` hook) the host closes the connection itself:
//! the file descriptor is released at once even if the plugin never touches the socket again,
//! and every later call on it fails with `NotConnected` ("closed: app version retired").

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use berth_app::abi;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::host::OutboundPolicy;
use crate::host::allowlist::Allowlist;

/// The message of every call on a socket that the host closed.
const RETIRED: &str = "closed: app version retired";

/// What an app asked to open, copied out of the ABI request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// A host name or an IP literal (IPv6 with or without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// Whether to do TLS from the first byte.
    pub tls: bool,
    /// The name TLS verifies the server against; `None` means `host`.
    pub server_name: Option<String>,
    /// The app's own time limit; `None` means its configured `connect_timeout`.
    pub timeout: Option<Duration>,
}

/// Why no socket was opened; each is one `CONNECT_*` tag for the app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The request cannot be used (empty host, port 0, a bad server name).
    #[error("{0}")]
    Invalid(String),
    /// The allowlist does not grant it; nothing was resolved or opened.
    #[error("{0}")]
    Denied(String),
    /// The version holds as many sockets as it may; nothing was opened.
    #[error("{0}")]
    Limit(String),
    /// Refused, unreachable, or the name did not resolve.
    #[error("{0}")]
    Failed(String),
    /// The time limit passed first.
    #[error("{0}")]
    Timeout(String),
    /// The TLS handshake failed.
    #[error("{0}")]
    Tls(String),
    /// Anything else (the version was retired meanwhile, say).
    #[error("{0}")]
    Other(String),
}

impl ConnectError {
    /// The `CONNECT_*` tag the app receives.
    pub fn tag(&self) -> u32 {
        match self {
            ConnectError::Invalid(_) => abi::CONNECT_INVALID,
            ConnectError::Denied(_) => abi::CONNECT_DENIED,
            ConnectError::Limit(_) => abi::CONNECT_LIMIT,
            ConnectError::Failed(_) => abi::CONNECT_FAILED,
            ConnectError::Timeout(_) => abi::CONNECT_TIMEOUT,
            ConnectError::Tls(_) => abi::CONNECT_TLS_FAILED,
            ConnectError::Other(_) => abi::CONNECT_OTHER,
        }
    }
}

/// The open sockets of one app version. Owned by its `AppServices`; each socket holds the
/// registry (not the services), so sockets never keep a version's services alive.
#[derive(Debug, Default)]
pub struct Sockets {
    registry: Arc<Registry>,
}

#[derive(Debug, Default)]
struct Registry {
    state: Mutex<RegistryState>,
}

#[derive(Debug, Default)]
struct RegistryState {
    /// Every open socket, weakly: the plugin owns them. Emptied when the version is retired.
    open: HashMap<u64, Weak<Shared>>,
    /// Connects under way: they count against the limit, so that many at once cannot pass it.
    connecting: usize,
    next_id: u64,
    /// Set when the version is retired: no socket opens after that.
    closed: bool,
}

/// A socket's connection, shared by the socket and its version's registry; `None` once the
/// host closed it (or while `start_tls` has it out for the handshake).
type Shared = Mutex<Option<Io>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// Counts a connect in against `max`, or says why it may not start.
    fn reserve(self: &Arc<Self>, app: &str, max: usize) -> Result<Reservation, ConnectError> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(ConnectError::Other(format!(
                "app {app:?}: this version of the app was retired; it opens no more sockets"
            )));
        }
        if state.open.len() + state.connecting >= max {
            return Err(ConnectError::Limit(format!(
                "app {app:?} already holds {max} open sockets, its limit (max_sockets); close \
                 one first"
            )));
        }
        state.connecting += 1;
        Ok(Reservation {
            registry: Some(Arc::clone(self)),
        })
    }
}

/// One connect counted against the limit until it becomes a socket or fails.
#[derive(Debug)]
struct Reservation {
    registry: Option<Arc<Registry>>,
}

impl Reservation {
    /// Registers the connected `io` as an open socket, unless the version was retired
    /// meanwhile (then `io` is closed here).
    fn open(mut self, io: Io) -> Result<(Arc<Registry>, u64, Arc<Shared>), ConnectError> {
        let Some(registry) = self.registry.take() else {
            return Err(ConnectError::Other("connect reservation used twice".into()));
        };
        let mut state = lock(&registry.state);
        state.connecting -= 1;
        if state.closed {
            return Err(ConnectError::Other(format!(
                "{RETIRED} while the socket was connecting"
            )));
        }
        let id = state.next_id;
        state.next_id += 1;
        let shared = Arc::new(Mutex::new(Some(io)));
        state.open.insert(id, Arc::downgrade(&shared));
        drop(state);
        Ok((registry, id, shared))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(registry) = &self.registry {
            lock(&registry.state).connecting -= 1;
        }
    }
}

impl Sockets {
    /// How many sockets of the version are open (connects under way not included).
    pub fn open(&self) -> usize {
        lock(&self.registry.state).open.len()
    }

    /// Closes every open socket of the version and refuses new ones: the connections are
    /// dropped here, whoever holds the sockets, whose later calls fail with `NotConnected`.
    pub fn close_all(&self) {
        let mut state = lock(&self.registry.state);
        state.closed = true;
        for shared in state.open.drain().filter_map(|(_, weak)| weak.upgrade()) {
            // Dropping the stream closes the descriptor; a TLS stream sends no close_notify
            // (the peer sees the connection end, as when a process exits).
            drop(lock(&shared).take());
        }
    }
}

/// A connection: plain, or TLS over TCP.
#[derive(Debug)]
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open socket of an app version, owned by the plugin. Dropping it closes the connection
/// and frees its place under the version's limit.
#[derive(Debug)]
pub struct Socket {
    id: u64,
    io: Arc<Shared>,
    registry: Arc<Registry>,
    /// The host name it was opened with: `start_tls`'s default server name.
    host: String,
    port: u16,
    peer: Option<SocketAddr>,
    /// The app's name, for messages.
    app: Arc<str>,
    /// The host's TLS settings for sockets, for `start_tls`.
    tls: Arc<ClientConfig>,
    /// The app's connect time limit, which bounds `start_tls`'s handshake.
    handshake_timeout: Duration,
}

impl Drop for Socket {
    fn drop(&mut self) {
        lock(&self.registry.state).open.remove(&self.id);
    }
}

fn retired() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, RETIRED)
}

impl Socket {
    /// Runs `f` on the connection, or fails when the host closed it.
    fn with_io<T>(
        &self,
        f: impl FnOnce(Pin<&mut Io>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        // Uncontended: the plugin makes one call at a time on a socket (the ABI contract); only
        // `Sockets::close_all` takes it besides, once.
        match lock(&self.io).as_mut() {
            Some(io) => f(Pin::new(io)),
            None => Poll::Ready(Err(retired())),
        }
    }

    /// `AsyncRead::poll_read` on the connection.
    pub fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.with_io(|io| io.poll_read(cx, buf))
    }

    /// `AsyncWrite::poll_write` on the connection.
    pub fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.with_io(|io| io.poll_write(cx, buf))
    }

    /// `AsyncWrite::poll_flush` on the connection.
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with_io(|io| io.poll_flush(cx))
    }

    /// `AsyncWrite::poll_shutdown` on the connection (close_notify first, with TLS).
    pub fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.with_io(|io| io.poll_shutdown(cx))
    }

    /// The address the socket is connected to.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Whether the connection has TLS.
    pub fn is_tls(&self) -> bool {
        matches!(lock(&self.io).as_ref(), Some(Io::Tls(_)))
    }

    /// Upgrades a plain connection to TLS in mid-stream (PostgreSQL's `SSLRequest`, SMTP's
    /// `STARTTLS`), verifying the server against `server_name` (`None`: the host name the
    /// socket was opened with), within the app's connect time limit. On failure the
    /// connection is closed. The socket keeps its place under the limit throughout.
    pub fn start_tls(
        self,
        server_name: Option<String>,
    ) -> impl Future<Output = Result<Socket, ConnectError>> + Send + 'static {
        // The timer is made now, so that the runtime need not be current when it is polled.
        let limit = self.handshake_timeout;
        let prepared = (|| {
            let name = server_name.unwrap_or_else(|| self.host.clone());
            let name = parse_server_name(&name)?;
            let io = lock(&self.io).take();
            match io {
                Some(Io::Plain(tcp)) => Ok((name, tcp)),
                Some(tls @ Io::Tls(_)) => {
                    *lock(&self.io) = Some(tls);
                    Err(ConnectError::Invalid(
                        "start_tls: the socket has TLS already".into(),
                    ))
                }
                None => Err(ConnectError::Other(format!("start_tls: {RETIRED}"))),
            }
        })();
        let target = format!("{}:{}", self.host, self.port);
        let handshake = async move {
            let (name, tcp) = prepared?;
            let connector = TlsConnector::from(Arc::clone(&self.tls));
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| tls_failed(&self.app, &target, &e))?;
            // Put back under the registry's lock: if the version was retired during the
            // handshake, `close_all` found nothing to close, so close it here.
            let state = lock(&self.registry.state);
            if state.closed {
                return Err(ConnectError::Other(format!(
                    "start_tls: {RETIRED} during the handshake"
                )));
            }
            *lock(&self.io) = Some(Io::Tls(Box::new(tls)));
            drop(state);
            Ok(self)
        };
        futures_util::FutureExt::map(tokio::time::timeout(limit, handshake), move |timed| {
            timed.unwrap_or_else(|_| {
                Err(ConnectError::Timeout(format!(
                    "start_tls: no TLS handshake within {limit:?}"
                )))
            })
        })
    }
}

/// What a connect needs besides the request: who asks, under which rules, with which TLS
/// settings, into which registry.
#[derive(Debug)]
pub struct Connector<'a> {
    /// The app's name, for messages.
    pub app: &'a Arc<str>,
    /// The app's rules: its allowlist, time limit and socket limit.
    pub policy: &'a OutboundPolicy,
    /// The host's TLS settings for sockets (no ALPN).
    pub tls: &'a Arc<ClientConfig>,
    /// The version's open sockets.
    pub sockets: &'a Sockets,
}

/// Opens a socket for an app. The request, the allowlist and the socket limit are checked
/// before this returns — a refused connect resolves nothing and opens nothing — and the
/// returned future resolves, connects and does TLS within the app's time limit, itself
/// bounded by `deadline` (that of the request the app connects for). Poll it on the host's
/// runtime (it opens a tokio socket).
pub fn connect(
    connector: &Connector<'_>,
    request: ConnectRequest,
    deadline: Option<Instant>,
) -> impl Future<Output = Result<Socket, ConnectError>> + Send + use<> {
    use futures_util::future::Either;
    match check(connector, &request) {
        Ok(checked) => {
            let limit = time_limit(&request, connector.policy, deadline);
            let target = format!("{}:{}", request.host, request.port);
            let timed = tokio::time::timeout(limit, open(checked, request));
            Either::Left(futures_util::FutureExt::map(timed, move |timed| {
                timed.unwrap_or_else(|_| {
                    Err(ConnectError::Timeout(format!(
                        "no connection to {target} within {limit:?}"
                    )))
                })
            }))
        }
        Err(error) => Either::Right(std::future::ready(Err(error))),
    }
}

/// What a checked connect carries into its future.
struct Checked {
    app: Arc<str>,
    tls_config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    reservation: Reservation,
    handshake_timeout: Duration,
}

/// The checks that need no network, in order: the request, the allowlist, the limit.
fn check(connector: &Connector<'_>, request: &ConnectRequest) -> Result<Checked, ConnectError> {
    let app = connector.app;
    let host = unbracketed(&request.host);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(ConnectError::Invalid(format!(
            "invalid host name {:?}",
            request.host
        )));
    }
    if request.port == 0 {
        return Err(ConnectError::Invalid(format!(
            "cannot connect to {host}: port 0"
        )));
    }
    let server_name = if request.tls {
        let name = request.server_name.as_deref().unwrap_or(host);
        Some(parse_server_name(name)?)
    } else {
        None
    };
    if !connector.policy.allowlist.allows_socket(host, request.port) {
        return Err(denied(app, host, request.port, &connector.policy.allowlist));
    }
    let reservation = connector
        .sockets
        .registry
        .reserve(app, connector.policy.max_sockets)?;
    Ok(Checked {
        app: Arc::clone(app),
        tls_config: Arc::clone(connector.tls),
        server_name,
        reservation,
        handshake_timeout: connector.policy.connect_timeout,
    })
}

fn denied(app: &str, host: &str, port: u16, allowlist: &Allowlist) -> ConnectError {
    let hint = if allowlist.is_empty() {
        "the app's allowed_outbound_hosts is empty"
    } else {
        "it is not in the app's allowed_outbound_hosts"
    };
    // An IPv6 literal goes in brackets, in the message as in an entry.
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    ConnectError::Denied(format!(
        "app {app:?} may not connect to {authority}: {hint} (add e.g. \"tcp://{authority}\")"
    ))
}

/// The app's time limit (or its default), never past `deadline`.
fn time_limit(
    request: &ConnectRequest,
    policy: &OutboundPolicy,
    deadline: Option<Instant>,
) -> Duration {
    let limit = request.timeout.unwrap_or(policy.connect_timeout);
    match deadline {
        Some(deadline) => limit.min(deadline.saturating_duration_since(Instant::now())),
        None => limit,
    }
}

/// `host` without the brackets of an IPv6 literal.
fn unbracketed(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, ConnectError> {
    ServerName::try_from(unbracketed(name).to_owned())
        .map_err(|e| ConnectError::Invalid(format!("invalid TLS server name {name:?}: {e}")))
}

fn tls_failed(app: &str, target: &str, error: &io::Error) -> ConnectError {
    ConnectError::Tls(format!(
        "app {app:?}: TLS handshake with {target} failed: {}",
        crate::error_chain(error)
    ))
}

/// Resolves, connects and does TLS; the caller bounds it in time.
async fn open(checked: Checked, request: ConnectRequest) -> Result<Socket, ConnectError> {
    let host = unbracketed(&request.host).to_owned();
    let port = request.port;
    let target = format!("{host}:{port}");
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| ConnectError::Failed(format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    let mut last_error = None;
    let mut connected = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                connected = Some(tcp);
                break;
            }
            Err(e) => last_error = Some(format!("{addr}: {e}")),
        }
    }
    let Some(tcp) = connected else {
        let why = last_error.unwrap_or_else(|| "the name resolved to no address".into());
        return Err(ConnectError::Failed(format!(
            "cannot connect to {target} ({why})"
        )));
    };
    tcp.set_nodelay(true)
        .map_err(|e| ConnectError::Other(format!("cannot set TCP_NODELAY on {target}: {e}")))?;
    let peer = tcp.peer_addr().ok();
    let io = match checked.server_name {
        Some(name) => {
            let connector = TlsConnector::from(Arc::clone(&checked.tls_config));
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| tls_failed(&checked.app, &target, &e))?;
            Io::Tls(Box::new(tls))
        }
        None => Io::Plain(tcp),
    };
    let (registry, id, shared) = checked.reservation.open(io)?;
    Ok(Socket {
        id,
        io: shared,
        registry,
        host,
        port,
        peer,
        app: checked.app,
        tls: checked.tls_config,
        handshake_timeout: checked.handshake_timeout,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::future::poll_fn;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::RootCertStore;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;
    use crate::host::SocketLimits;

    fn policy(entries: &[&str], max_sockets: usize) -> OutboundPolicy {
        let limits = SocketLimits {
            max_sockets,
            ..SocketLimits::default()
        };
        OutboundPolicy::new(Allowlist::parse(entries).unwrap(), 8, 1024, limits)
    }

    /// One app version's sockets, with `tls` as the host's TLS settings.
    struct Version {
        app: Arc<str>,
        policy: OutboundPolicy,
        tls: Arc<ClientConfig>,
        sockets: Sockets,
    }

    impl Version {
        fn new(entries: &[&str], max_sockets: usize) -> Self {
            let tls = crate::tls::without_alpn(&crate::tls::client_config(None).unwrap());
            Version::with_tls(entries, max_sockets, tls)
        }

        fn with_tls(entries: &[&str], max_sockets: usize, tls: Arc<ClientConfig>) -> Self {
            Version {
                app: Arc::from("db-app"),
                policy: policy(entries, max_sockets),
                tls,
                sockets: Sockets::default(),
            }
        }

        fn connect(
            &self,
            request: ConnectRequest,
        ) -> impl Future<Output = Result<Socket, ConnectError>> + use<> {
            let connector = Connector {
                app: &self.app,
                policy: &self.policy,
                tls: &self.tls,
                sockets: &self.sockets,
            };
            connect(&connector, request, None)
        }
    }

    fn plain(host: &str, port: u16) -> ConnectRequest {
        ConnectRequest {
            host: host.to_owned(),
            port,
            tls: false,
            server_name: None,
            timeout: None,
        }
    }

    async fn write_all(socket: &Socket, mut data: &[u8]) {
        while !data.is_empty() {
            let n = poll_fn(|cx| socket.poll_write(cx, data)).await.unwrap();
            data = &data[n..];
        }
        poll_fn(|cx| socket.poll_flush(cx)).await.unwrap();
    }

    async fn read_some(socket: &Socket) -> io::Result<Vec<u8>> {
        let mut buf = [0u8; 64];
        let mut read = ReadBuf::new(&mut buf);
        poll_fn(|cx| socket.poll_read(cx, &mut read)).await?;
        Ok(read.filled().to_vec())
    }

    #[tokio::test]
    async fn an_allowed_connect_reads_and_writes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let version = Version::new(&["tcp://127.0.0.1:*"], 10);
        let socket = version
            .connect(plain("127.0.0.1", addr.port()))
            .await
            .unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        assert_eq!(socket.peer_addr(), Some(addr));
        assert!(!socket.is_tls());
        assert_eq!(version.sockets.open(), 1);

        write_all(&socket, b"PING\r\n").await;
        let mut got = [0u8; 6];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"PING\r\n");
        peer.write_all(b"+PONG\r\n").await.unwrap();
        assert_eq!(read_some(&socket).await.unwrap(), b"+PONG\r\n");

        // Shutting down the write half: the peer reads the end of the stream.
        poll_fn(|cx| socket.poll_shutdown(cx)).await.unwrap();
        assert_eq!(peer.read(&mut got).await.unwrap(), 0);

        // Dropping the socket closes it and frees its place.
        drop(socket);
        assert_eq!(version.sockets.open(), 0);
    }

    #[tokio::test]
    async fn a_denied_connect_opens_nothing_and_says_why() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let http_only = format!("http://127.0.0.1:{port}");
        for entries in [&[][..], &[http_only.as_str()][..]] {
            let version = Version::new(entries, 10);
            let error = version.connect(plain("127.0.0.1", port)).await.unwrap_err();
            assert_eq!(error.tag(), abi::CONNECT_DENIED, "{error}");
            let message = error.to_string();
            assert!(message.contains("\"db-app\""), "{message}");
            assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
            assert!(message.contains("allowed_outbound_hosts"), "{message}");
            assert_eq!(version.sockets.open(), 0);
        }
        // Denied before any DNS lookup too: a name that cannot resolve is refused as denied.
        let version = Version::new(&[], 10);
        let error = version.connect(plain("no-such-host.invalid", 5432)).await;
        assert_eq!(error.unwrap_err().tag(), abi::CONNECT_DENIED);
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the listener accepted a connection");
    }

    #[tokio::test]
    async fn the_socket_limit_fails_at_once_and_frees_on_drop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let version = Version::new(&["tcp://127.0.0.1:*"], 2);
        let first = version.connect(plain("127.0.0.1", port)).await.unwrap();
        let _second = version.connect(plain("127.0.0.1", port)).await.unwrap();
        let error = version.connect(plain("127.0.0.1", port)).await.unwrap_err();
        assert_eq!(error.tag(), abi::CONNECT_LIMIT, "{error}");
        let message = error.to_string();
        assert!(message.contains("max_sockets"), "{message}");
        assert!(message.contains("\"db-app\""), "{message}");
        assert!(message.contains('2'), "{message}");
        drop(first);
        let _third = version.connect(plain("127.0.0.1", port)).await.unwrap();
        assert_eq!(version.sockets.open(), 2);
    }

    #[tokio::test]
    async fn failures_have_their_tags() {
        // Nothing listens on a port just released.
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        };
        let version = Version::new(&["*"], 10);
        let error = version.connect(plain("127.0.0.1", port)).await.unwrap_err();
        assert_eq!(error.tag(), abi::CONNECT_FAILED, "{error}");
        assert_eq!(version.sockets.open(), 0);

        let error = version.connect(plain("no-such-host.invalid", 1)).await;
        assert_eq!(error.unwrap_err().tag(), abi::CONNECT_FAILED);
        for bad in [plain("", 1), plain("127.0.0.1", 0), plain("a b", 1)] {
            let error = version.connect(bad).await.unwrap_err();
            assert_eq!(error.tag(), abi::CONNECT_INVALID, "{error}");
        }
        let bad_name = ConnectRequest {
            tls: true,
            server_name: Some("not a name".into()),
            ..plain("127.0.0.1", 1)
        };
        let error = version.connect(bad_name).await.unwrap_err();
        assert_eq!(error.tag(), abi::CONNECT_INVALID, "{error}");
    }

    #[test]
    fn the_time_limit_is_the_apps_bounded_by_the_deadline() {
        let policy = policy(&[], 1);
        let now = Instant::now();
        let mut request = plain("db", 1);
        assert_eq!(time_limit(&request, &policy, None), Duration::from_secs(5));
        request.timeout = Some(Duration::from_secs(1));
        assert_eq!(time_limit(&request, &policy, None), Duration::from_secs(1));
        let soon = now + Duration::from_millis(300);
        assert!(time_limit(&request, &policy, Some(soon)) <= Duration::from_millis(300));
        let past = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        assert_eq!(time_limit(&request, &policy, Some(past)), Duration::ZERO);
    }

    #[tokio::test]
    async fn retiring_the_version_closes_its_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let version = Version::new(&["tcp://127.0.0.1:*"], 10);
        let socket = version.connect(plain("127.0.0.1", port)).await.unwrap();
        let (mut peer, _) = listener.accept().await.unwrap();
        assert_eq!(version.sockets.open(), 1);

        version.sockets.close_all();
        assert_eq!(version.sockets.open(), 0);
        // The peer sees the end of the stream though the app still holds the socket.
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), peer.read(&mut buf)).await;
        assert_eq!(read.unwrap().unwrap(), 0);
        // Every later call fails as closed.
        let error = read_some(&socket).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotConnected);
        assert_eq!(error.to_string(), RETIRED);
        let write = poll_fn(|cx| socket.poll_write(cx, b"x")).await.unwrap_err();
        assert_eq!(write.kind(), io::ErrorKind::NotConnected);
        assert_eq!(
            berth_app::ffi::io_error_kind(write.kind()),
            abi::IO_ERR_CLOSED
        );
        // And the version opens no more.
        let error = version.connect(plain("127.0.0.1", port)).await.unwrap_err();
        assert_eq!(error.tag(), abi::CONNECT_OTHER, "{error}");
        assert!(error.to_string().contains("retired"), "{error}");
        drop(socket);
        assert_eq!(version.sockets.open(), 0);
    }

    /// A TLS server config for `localhost` and the client settings that trust it.
    fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca.der().to_vec())).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    #[tokio::test]
    async fn tls_from_the_start_and_in_mid_stream() {
        let (server, client) = tls_pair();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let version = Version::with_tls(&["tcp://localhost:*"], 10, client);

        // TLS from the first byte.
        let request = ConnectRequest {
            tls: true,
            ..plain("localhost", port)
        };
        let (connected, accepted) = tokio::join!(version.connect(request), async {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.unwrap()
        });
        let socket = connected.unwrap();
        let mut peer = accepted;
        assert!(socket.is_tls());
        write_all(&socket, b"hello").await;
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");

        // Plain first, then upgraded (PostgreSQL's SSLRequest).
        let socket = version.connect(plain("localhost", port)).await.unwrap();
        let (mut tcp, _) = listener.accept().await.unwrap();
        write_all(&socket, b"SSL?").await;
        let mut asked = [0u8; 4];
        tcp.read_exact(&mut asked).await.unwrap();
        tcp.write_all(b"S").await.unwrap();
        assert_eq!(read_some(&socket).await.unwrap(), b"S");
        let (upgraded, accepted) = tokio::join!(socket.start_tls(None), acceptor.accept(tcp));
        let socket = upgraded.unwrap();
        let mut peer = accepted.unwrap();
        assert!(socket.is_tls());
        assert_eq!(version.sockets.open(), 2);
        peer.write_all(b"secret").await.unwrap();
        peer.flush().await.unwrap();
        assert_eq!(read_some(&socket).await.unwrap(), b"secret");

        // A name the certificate does not have fails as a TLS failure.
        let request = ConnectRequest {
            tls: true,
            server_name: Some("other.test".into()),
            ..plain("localhost", port)
        };
        let (connected, _) = tokio::join!(version.connect(request), async {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });
        let error = connected.unwrap_err();
        assert_eq!(error.tag(), abi::CONNECT_TLS_FAILED, "{error}");
        assert_eq!(version.sockets.open(), 2);
    }
}
