//! PostgreSQL through the host's sockets (feature `postgres`): [`tokio_postgres`] with a
//! connection pool.
//!
//! The real `tokio-postgres` client runs inside the app, its connection riding on a
//! [`HostStream`]: the host connects (after checking the app's allowlist, so the database must
//! be granted by `allowed_outbound_hosts`, e.g. `"postgres://db"`) and does TLS, and
//! [`Host::spawn`] drives each connection between requests. The whole `tokio_postgres::Client` API works: parameters,
//! prepared statements, transactions, `COPY` streams.
//!
//! The pool is built once, in `init`, and kept as the app's state; a handler takes a
//! connection for as long as it needs one:
//!
//! ```no_run
//! use berth_app::postgres::{Pool, PoolError};
//! use berth_app::{AppConfig, Host, Request, Response, StatusCode};
//!
//! async fn init(config: AppConfig, host: Host) -> Result<Pool, PoolError> {
//!     Pool::from_url(&host, config.get_or("database_url", "postgres://app@db:5432/app"))
//! }
//!
//! async fn count(host: &Host) -> Result<i64, PoolError> {
//!     let pool = host.state::<Pool>().ok_or(PoolError::Closed)?;
//!     let row = pool.get(host).await?.query_one("SELECT count(*) FROM items", &[]).await?;
//!     Ok(row.get(0))
//! }
//!
//! async fn app(_req: Request, host: Host) -> Response {
//!     match count(&host).await {
//!         Ok(n) => Response::text(format!("{n} items\n")),
//!         Err(err) => Response::text(format!("{err}\n")).with_status(StatusCode::SERVICE_UNAVAILABLE),
//!     }
//! }
//!
//! async fn shutdown(host: Host) {
//!     if let Some(pool) = host.state::<Pool>() {
//!         pool.close();
//!     }
//! }
//!
//! berth_app::export_app!(name = "items", handler = app, init = init, shutdown = shutdown);
//! ```
//!
//! # TLS
//!
//! `sslmode` in the URL decides, as in libpq: `disable` sends no `SSLRequest`, `prefer` (the
//! default) upgrades when the server offers TLS, `require` fails when it does not. The host
//! does the handshake ([`HostStream::start_tls`]) and, unlike libpq's `require`, always
//! verifies the server's certificate against the host's roots and the URL's host name.
//! Channel binding is not offered (`channel_binding=require` fails). `sslnegotiation=direct`
//! is not supported.
//!
//! # Waiting
//!
//! Without an async runtime in the plugin, deadpool cannot time out by itself: [`Pool::get`]
//! waits on the host's timer, at most [`PoolBuilder::wait_timeout`] and never past the
//! request's deadline ([`Host::time_left`]), so that a request whose pool is exhausted gets
//! [`PoolError::Timeout`] in time for the app to answer `503` itself.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
pub use tokio_postgres;
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};
use tokio_postgres::{Client, Config, Statement};

use crate::host::Host;
use crate::net::{Connect, ConnectOptions, HostStream};
use crate::task::JoinHandle;

/// The PostgreSQL port, when the URL names none.
const DEFAULT_PORT: u16 = 5432;

/// A pool of PostgreSQL connections, opened through the host as they are needed.
///
/// Cheap to clone (a reference count). Build it in `init` with [`Pool::from_url`] or a
/// [`PoolBuilder`] and return it as the app's state; see the [module docs](self).
#[derive(Clone)]
pub struct Pool {
    inner: managed::Pool<Manager>,
    wait_timeout: Duration,
}

impl Pool {
    /// A pool with the default settings ([`PoolBuilder::new`]) for `url`
    /// (`postgres://user:password@host:port/database?sslmode=prefer`, or libpq's `key=value`
    /// form). Nothing is connected yet: the first [`get`](Pool::get) connects.
    pub fn from_url(host: &Host, url: &str) -> Result<Pool, PoolError> {
        PoolBuilder::new(url).build(host)
    }

    /// A connection from the pool, connecting a new one when none is idle and the pool is not
    /// full. Waits at most the pool's wait timeout, and never past `host`'s deadline: then
    /// [`PoolError::Timeout`]. The connection goes back to the pool when the [`Object`] is
    /// dropped.
    pub async fn get(&self, host: &Host) -> Result<Object, PoolError> {
        let limit = host
            .time_left()
            .map_or(self.wait_timeout, |left| left.min(self.wait_timeout));
        match host.timeout(limit, self.inner.get()).await {
            Ok(Ok(object)) => Ok(Object(object)),
            Ok(Err(err)) => Err(PoolError::from_deadpool(err)),
            Err(_) => Err(PoolError::Timeout(limit)),
        }
    }

    /// Closes the pool (in the `shutdown` hook, say): idle connections are closed now, those in
    /// use when they come back, and every later [`get`](Pool::get) fails with
    /// [`PoolError::Closed`].
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether [`close`](Pool::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// How many connections the pool holds, and how many of them are idle.
    pub fn status(&self) -> PoolStatus {
        let status = self.inner.status();
        PoolStatus {
            max_size: status.max_size,
            size: status.size,
            idle: status.available,
        }
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("status", &self.status())
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

/// A snapshot of a [`Pool`]'s size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now, idle or in use.
    pub size: usize,
    /// Idle connections.
    pub idle: usize,
}

/// How a pooled connection is checked before it is handed out again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recycle {
    /// Only that it is still open (no round trip).
    #[default]
    Fast,
    /// That it is open and answers `SELECT 1` (one round trip per [`Pool::get`]).
    Verified,
}

/// Settings for a [`Pool`].
///
/// ```
/// use berth_app::postgres::{PoolBuilder, Recycle};
/// use std::time::Duration;
/// let builder = PoolBuilder::new("postgres://app@db.internal/app?sslmode=require")
///     .max_size(8)
///     .wait_timeout(Duration::from_secs(2))
///     .connect_timeout(Duration::from_secs(3))
///     .recycle(Recycle::Verified);
/// # let _ = builder;
/// ```
#[derive(Clone, Debug)]
pub struct PoolBuilder {
    url: String,
    max_size: usize,
    wait_timeout: Duration,
    connect_timeout: Option<Duration>,
    recycle: Recycle,
}

impl PoolBuilder {
    /// Settings for `url`: at most 10 connections, a 5 s wait, the URL's `connect_timeout`
    /// (else the host's), [`Recycle::Fast`].
    pub fn new(url: impl Into<String>) -> Self {
        PoolBuilder {
            url: url.into(),
            max_size: 10,
            wait_timeout: Duration::from_secs(5),
            connect_timeout: None,
            recycle: Recycle::Fast,
        }
    }

    /// The most connections the pool opens at once.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size;
        self
    }

    /// The longest [`Pool::get`] waits for a connection (a request's deadline may cut it
    /// shorter), connecting included.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// The longest a new connection may take to open, TLS included (overrides the URL's
    /// `connect_timeout`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How connections are checked before reuse.
    pub fn recycle(mut self, recycle: Recycle) -> Self {
        self.recycle = recycle;
        self
    }

    /// Builds the pool. Its connections are opened through `host`'s
    /// [`task_host`](Host::task_host), so they belong to the app version rather than to the
    /// request that happened to need one first. Fails with [`PoolError::Config`] for a URL
    /// that does not parse, names no host, or names a Unix socket (apps reach databases over
    /// TCP, through the host).
    pub fn build(self, host: &Host) -> Result<Pool, PoolError> {
        let config = Config::from_str(&self.url)
            .map_err(|err| PoolError::Config(format!("invalid database URL: {err}")))?;
        let target = Target::of(&config)?;
        let manager = Manager {
            host: host.task_host(),
            connect_timeout: self
                .connect_timeout
                .or(config.get_connect_timeout().copied()),
            config,
            target,
            recycle: self.recycle,
        };
        let inner = managed::Pool::builder(manager)
            .max_size(self.max_size)
            .build()
            .map_err(|err| PoolError::Config(err.to_string()))?;
        Ok(Pool {
            inner,
            wait_timeout: self.wait_timeout,
        })
    }
}

/// Where a connection goes: the address to connect to and the name TLS verifies.
#[derive(Debug)]
struct Target {
    connect_to: String,
    port: u16,
    server_name: String,
}

impl Target {
    /// The config's first host (and its `hostaddr`, when given, as the address).
    fn of(config: &Config) -> Result<Target, PoolError> {
        let name = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => {
                return Err(PoolError::Config(format!(
                    "the database URL names a Unix socket ({}): apps connect over TCP, \
                     through the host",
                    path.display()
                )));
            }
            None if config.get_hostaddrs().is_empty() => {
                return Err(PoolError::Config(
                    "the database URL names no host".to_owned(),
                ));
            }
            None => String::new(),
        };
        let connect_to = match config.get_hostaddrs().first() {
            Some(addr) => addr.to_string(),
            None => name.clone(),
        };
        Ok(Target {
            connect_to,
            port: config.get_ports().first().copied().unwrap_or(DEFAULT_PORT),
            server_name: name,
        })
    }
}

/// A connection from a [`Pool`]: derefs to [`tokio_postgres::Client`] (mutably too, for
/// [`transaction`](tokio_postgres::Client::transaction)). Dropping it returns the connection
/// to the pool.
pub struct Object(managed::Object<Manager>);

impl Deref for Object {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.0.client
    }
}

impl DerefMut for Object {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.0.client
    }
}

impl Object {
    /// Prepares `query` once per connection: later calls on the same connection return the
    /// statement prepared the first time, saving a round trip to the server (as
    /// deadpool-postgres's `prepare_cached` does). The cache goes with the connection.
    pub async fn prepare_cached(&self, query: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.cached(query) {
            return Ok(statement);
        }
        let statement = self.0.client.prepare(query).await?;
        self.0
            .statements
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(query.to_owned(), statement.clone());
        Ok(statement)
    }

    fn cached(&self, query: &str) -> Option<Statement> {
        let statements = self.0.statements.lock();
        statements
            .unwrap_or_else(PoisonError::into_inner)
            .get(query)
            .cloned()
    }
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object")
            .field("closed", &self.0.client.is_closed())
            .finish()
    }
}

/// A pooled connection: the client, the statements prepared on it, and the task driving its
/// connection (dropped with it, which cancels the task).
struct PgConnection {
    client: Client,
    statements: Mutex<HashMap<String, Statement>>,
    _driver: JoinHandle<()>,
}

/// The pool's manager: opens connections through the host and checks them before reuse.
struct Manager {
    host: Host,
    config: Config,
    target: Target,
    connect_timeout: Option<Duration>,
    recycle: Recycle,
}

impl managed::Manager for Manager {
    type Type = PgConnection;
    type Error = ConnectError;

    async fn create(&self) -> Result<PgConnection, ConnectError> {
        let mut options = ConnectOptions::new(&self.target.connect_to, self.target.port);
        if let Some(timeout) = self.connect_timeout {
            options = options.timeout(timeout);
        }
        let stream = self
            .host
            .connect_with(options)
            .await
            .map_err(ConnectError::Io)?;
        let tls = HostTls::new(&self.target.server_name);
        let (client, connection) = self
            .config
            .connect_raw(stream, tls)
            .await
            .map_err(ConnectError::Postgres)?;
        let log = self.host.clone();
        let driver = self.host.spawn(async move {
            if let Err(err) = connection.await {
                crate::warn!(log, "postgres connection ended: {}", detail(&err));
            }
        });
        Ok(PgConnection {
            client,
            statements: Mutex::default(),
            _driver: driver,
        })
    }

    async fn recycle(&self, conn: &mut PgConnection, _: &Metrics) -> RecycleResult<ConnectError> {
        if conn.client.is_closed() {
            return Err(RecycleError::message("the connection is closed"));
        }
        if self.recycle == Recycle::Verified {
            conn.client
                .simple_query("SELECT 1")
                .await
                .map_err(|err| RecycleError::Backend(ConnectError::Postgres(err)))?;
        }
        Ok(())
    }
}

/// Why the pool could not open a connection.
#[derive(Debug)]
enum ConnectError {
    Io(io::Error),
    Postgres(tokio_postgres::Error),
}

/// Why [`Pool::get`] (or building a pool) failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PoolError {
    /// No connection was free within the time allowed (the pool's wait timeout, or the
    /// request's deadline): the pool is exhausted, or connecting took too long. A handler
    /// usually answers `503`.
    Timeout(Duration),
    /// The database could not be reached: the host refused (`PermissionDenied`: not in the
    /// app's `allowed_outbound_hosts`), the connection failed or timed out, or TLS failed.
    Connect(io::Error),
    /// PostgreSQL answered with an error (authentication, a query), or the connection broke.
    Postgres(tokio_postgres::Error),
    /// The pool was closed.
    Closed,
    /// The URL or the settings are not usable.
    Config(String),
}

impl PoolError {
    fn from_deadpool(err: managed::PoolError<ConnectError>) -> Self {
        match err {
            managed::PoolError::Backend(ConnectError::Io(err)) => PoolError::Connect(err),
            managed::PoolError::Backend(ConnectError::Postgres(err)) => PoolError::Postgres(err),
            managed::PoolError::Closed => PoolError::Closed,
            // Only with deadpool's own timeouts or hooks, which this pool sets none of.
            other => PoolError::Config(other.to_string()),
        }
    }
}

/// A handler may return `Result<_, PoolError>` and use `?`: the client gets `503 Service
/// Unavailable` when the database cannot be had now (a timeout, a failed connect, a closed
/// pool) and `500` for anything else, with a fixed text that reveals nothing of the database
/// (log the error first where its detail matters).
///
/// ```no_run
/// use berth_app::postgres::{Pool, PoolError};
/// use berth_app::{Host, Request};
///
/// async fn app(_req: Request, host: Host) -> Result<String, PoolError> {
///     let pool = host.state::<Pool>().ok_or(PoolError::Closed)?;
///     let row = pool.get(&host).await?.query_one("SELECT count(*) FROM items", &[]).await?;
///     Ok(format!("{} items\n", row.get::<_, i64>(0)))
/// }
/// # berth_app::export_app!(name = "items", handler = app);
/// ```
impl crate::IntoResponse for PoolError {
    fn into_response(self) -> crate::Response {
        let (status, text) = match self {
            PoolError::Timeout(_) | PoolError::Connect(_) | PoolError::Closed => (
                http::StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable\n",
            ),
            PoolError::Postgres(_) | PoolError::Config(_) => {
                (http::StatusCode::INTERNAL_SERVER_ERROR, "database error\n")
            }
        };
        crate::Response::text(text).with_status(status)
    }
}

impl From<tokio_postgres::Error> for PoolError {
    fn from(err: tokio_postgres::Error) -> Self {
        PoolError::Postgres(err)
    }
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Timeout(after) => {
                write!(
                    f,
                    "the pool had no database connection free within {after:?}"
                )
            }
            PoolError::Connect(err) => write!(f, "cannot connect to the database: {err}"),
            PoolError::Postgres(err) => write!(f, "database error: {}", detail(err)),
            PoolError::Closed => f.write_str("the database pool is closed"),
            PoolError::Config(message) => write!(f, "database settings: {message}"),
        }
    }
}

impl std::error::Error for PoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PoolError::Connect(err) => Some(err),
            PoolError::Postgres(err) => Some(err),
            _ => None,
        }
    }
}

/// A tokio-postgres error with the server's message: its own `Display` says only "db error"
/// for everything the server reports.
fn detail(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    // The reason is in the sources: "error performing TLS handshake" says nothing without the
    // host's "invalid peer certificate: UnknownIssuer" after it.
    crate::error_chain(err)
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Io(err) => err.fmt(f),
            ConnectError::Postgres(err) => f.write_str(&detail(err)),
        }
    }
}

/// TLS for `tokio-postgres` over a [`HostStream`], done by the host: PostgreSQL asks for TLS
/// inside its protocol (`SSLRequest`), then the host upgrades the connection
/// ([`HostStream::start_tls`]). The pool uses it; pass it to
/// [`Config::connect_raw`](tokio_postgres::Config::connect_raw) to connect by hand.
#[derive(Clone, Debug, Default)]
pub struct HostTls {
    server_name: String,
}

impl HostTls {
    /// Verifies the server against `server_name` (empty: the host name connected to).
    pub fn new(server_name: &str) -> Self {
        HostTls {
            server_name: server_name.to_owned(),
        }
    }
}

impl TlsConnect<HostStream> for HostTls {
    type Stream = HostStream;
    type Error = io::Error;
    type Future = Connect;

    fn connect(self, stream: HostStream) -> Connect {
        stream.start_tls(&self.server_name)
    }
}

impl TlsStream for HostStream {
    /// None: the host does the TLS and does not hand out the server's certificate.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::{MockHost, block_on};
    use std::sync::Arc;

    #[test]
    fn a_pool_over_a_mock_host_fails_cleanly() {
        let mock = Arc::new(MockHost::new().with_time_left(Duration::from_secs(1)));
        let host = mock.host();
        let pool = Pool::from_url(&host, "postgres://app@db.test:6543/app").expect("pool");
        assert_eq!(pool.status().size, 0, "nothing is connected before get");
        let err = block_on(pool.get(&host)).expect_err("a mock host opens no sockets");
        let PoolError::Connect(io) = &err else {
            panic!("a connect error, got {err:?}");
        };
        assert_eq!(io.kind(), io::ErrorKind::Unsupported);
        assert!(
            err.to_string()
                .starts_with("cannot connect to the database: sockets need")
        );
        pool.close();
        let closed = block_on(pool.get(&host)).expect_err("closed");
        assert!(matches!(closed, PoolError::Closed));
        let response = crate::IntoResponse::into_response(closed);
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn urls_that_cannot_work_are_config_errors() {
        let host = Arc::new(MockHost::new()).host();
        for (url, expected) in [
            ("postgres://app@%2Frun%2Fpostgresql/app", "Unix socket"),
            ("not a url =", "invalid database URL"),
            ("user=app dbname=app", "names no host"),
        ] {
            let err = Pool::from_url(&host, url).expect_err(url);
            assert!(
                matches!(&err, PoolError::Config(m) if m.contains(expected)),
                "{url}: {err}"
            );
        }
        let config = Config::from_str("postgres://app@db.test:7000/app").expect("url");
        let target = Target::of(&config).expect("tcp");
        assert_eq!((target.connect_to.as_str(), target.port), ("db.test", 7000));
        let config = Config::from_str("host=db.test hostaddr=192.0.2.4 user=app").expect("kv");
        let target = Target::of(&config).expect("tcp");
        assert_eq!(
            (
                target.connect_to.as_str(),
                target.port,
                target.server_name.as_str()
            ),
            ("192.0.2.4", DEFAULT_PORT, "db.test")
        );
    }
}
