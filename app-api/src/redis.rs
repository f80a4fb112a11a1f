//! Redis through the host's sockets (feature `redis`): [`redis`]'s multiplexed connection,
//! reconnected when it is lost.
//!
//! The real `redis` crate runs inside the app, its connection riding on a
//! [`HostStream`](crate::HostStream) that the host opened (so the server must be granted by
//! the app's `allowed_outbound_hosts`, e.g. `"redis://cache"`), and
//! [`Host::spawn`](crate::Host::spawn) drives it. One [`MultiplexedConnection`] serves every
//! request at once, as redis-rs intends; [`Client::get`] hands out cheap clones of it and
//! opens a new one when the last was lost. Commands are redis's own: [`AsyncCommands`],
//! [`pipe`](redis::pipe), [`cmd`](redis::cmd).
//!
//! ```no_run
//! use berth_app::redis::{AsyncCommands as _, Client, RedisError};
//! use berth_app::{AppConfig, Host, Request, Response, StatusCode};
//!
//! async fn init(config: AppConfig, host: Host) -> Result<Client, RedisError> {
//!     Client::open(&host, config.get_or("redis_url", "redis://cache:6379/0")).await
//! }
//!
//! async fn hits(host: &Host) -> Result<u64, RedisError> {
//!     let client = host.state::<Client>().expect("init built it");
//!     client.get(host).await?.incr("hits", 1).await
//! }
//!
//! async fn app(_req: Request, host: Host) -> Response {
//!     match hits(&host).await {
//!         Ok(n) => Response::text(format!("hit #{n}\n")),
//!         Err(err) => Response::text(format!("{err}\n")).with_status(StatusCode::SERVICE_UNAVAILABLE),
//!     }
//! }
//!
//! berth_app::export_app!(name = "hits", handler = app, init = init);
//! ```
//!
//! # What is left out, and why
//!
//! redis-rs's own `Client::get_multiplexed_*`, `aio::ConnectionManager` and `aio::PubSub`
//! spawn with tokio and time out with tokio's timer, which panic inside a plugin ("there is no
//! reactor running"). The connection made here has redis-rs's response and connection
//! timeouts off for the same reason: bound a command with
//! [`Host::timeout`](crate::Host::timeout) when the server
//! may hang. `rediss://` URLs use TLS done by the host (`#insecure` is refused: the host
//! always verifies); Unix-socket URLs are refused (apps reach servers over TCP, through the
//! host).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use redis;
pub use redis::aio::MultiplexedConnection;
pub use redis::{AsyncCommands, RedisError, RedisResult};
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo};

use crate::host::Host;
use crate::net::ConnectOptions;
use crate::task::JoinHandle;

/// A Redis server, and the one multiplexed connection to it that requests share.
///
/// Cheap to clone (a reference count). Build it in `init` and return it as the app's state.
/// The connection lives as long as the client: connections handed out by
/// [`get`](Client::get) stop working once every clone of the client is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    /// A task host: the connection belongs to the app version, not to one request.
    host: Host,
    info: ConnectionInfo,
    /// Where to connect, and whether with TLS.
    target: (String, u16, bool),
    connect_timeout: Duration,
    /// The live connection, behind an async lock so that concurrent requests that find it lost
    /// wait for one reconnect instead of each making its own.
    live: futures_util::lock::Mutex<Option<Live>>,
}

/// An open connection, with the task driving it.
struct Live {
    connection: MultiplexedConnection,
    /// Cleared by the driver task when the connection ends.
    alive: Arc<AtomicBool>,
    _driver: JoinHandle<()>,
}

impl Live {
    fn usable(&self) -> Option<MultiplexedConnection> {
        self.alive
            .load(Ordering::Acquire)
            .then(|| self.connection.clone())
    }
}

impl Client {
    /// A client for `url` (`redis://[user:password@]host:port/db`, `rediss://` for TLS,
    /// `?protocol=resp3`) that connects through `host`'s [`task_host`](Host::task_host) when
    /// first used, with a connect timeout of 5 s. Fails for a URL that does not parse or
    /// names a Unix socket.
    pub fn new(host: &Host, url: &str) -> RedisResult<Client> {
        // redis-rs parses `rediss://` only with a TLS feature of its own (rustls or
        // native-tls in the plugin); the host does TLS instead, so the URL is read as
        // `redis://` and TLS asked of the host.
        let (plain, tls) = match url.strip_prefix("rediss://") {
            Some(rest) if rest.ends_with("#insecure") => {
                return Err(config_error(
                    "rediss:// with #insecure: the host always verifies the server",
                ));
            }
            Some(rest) => (format!("redis://{rest}"), true),
            None => (url.to_owned(), false),
        };
        let info = plain.as_str().into_connection_info()?;
        let target = match info.addr() {
            ConnectionAddr::Tcp(name, port) => (name.clone(), *port, tls),
            ConnectionAddr::Unix(path) => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "Unix sockets cannot be used: apps connect over TCP, through the host",
                    path.display().to_string(),
                )));
            }
            _ => return Err(config_error("unsupported kind of address")),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                host: host.task_host(),
                info,
                target,
                connect_timeout: Duration::from_secs(5),
                live: futures_util::lock::Mutex::new(None),
            }),
        })
    }

    /// [`new`](Client::new), then connects once, so that a wrong address, a host that refuses
    /// it, or bad credentials fail `init` rather than the first request.
    pub async fn open(host: &Host, url: &str) -> RedisResult<Client> {
        let client = Client::new(host, url)?;
        client.get(host).await?;
        Ok(client)
    }

    /// The longest connecting may take, `AUTH`/`SELECT`/`HELLO` included (default 5 s); for a
    /// client that was not used yet.
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.connect_timeout = timeout;
                Client {
                    inner: Arc::new(inner),
                }
            }
            Err(inner) => Client { inner },
        }
    }

    /// The shared connection (a cheap clone), reconnecting first if it was lost. A reconnect
    /// takes at most the connect timeout, and never past `host`'s deadline: then an error of
    /// kind `Io` whose source is a `TimedOut` I/O error.
    pub async fn get(&self, host: &Host) -> RedisResult<MultiplexedConnection> {
        // The usual case, without a timer: the connection is up and the lock is free.
        if let Some(live) = self.inner.live.try_lock() {
            if let Some(connection) = live.as_ref().and_then(Live::usable) {
                return Ok(connection);
            }
        }
        let limit = host.time_left().map_or(self.inner.connect_timeout, |left| {
            left.min(self.inner.connect_timeout)
        });
        let reconnect = async {
            let mut live = self.inner.live.lock().await;
            if let Some(connection) = live.as_ref().and_then(Live::usable) {
                return Ok(connection);
            }
            *live = None;
            let fresh = self.inner.connect().await?;
            let connection = fresh.connection.clone();
            *live = Some(fresh);
            Ok(connection)
        };
        match host.timeout(limit, reconnect).await {
            Ok(result) => result,
            Err(elapsed) => Err(RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to redis: {elapsed}"),
            ))),
        }
    }
}

impl Inner {
    async fn connect(&self) -> RedisResult<Live> {
        let (name, port, tls) = &self.target;
        let options = ConnectOptions::new(name, *port)
            .tls(*tls)
            .timeout(self.connect_timeout);
        let stream = self.host.connect_with(options).await?;
        // Both timeouts off: redis-rs would run them on tokio's timer, which a plugin lacks.
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(None);
        let (connection, driver) =
            MultiplexedConnection::new_with_config(self.info.redis_settings(), stream, config)
                .await?;
        let alive = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&alive);
        let driver = self.host.spawn(async move {
            driver.await;
            flag.store(false, Ordering::Release);
        });
        Ok(Live {
            connection,
            alive,
            _driver: driver,
        })
    }
}

fn config_error(message: &'static str) -> RedisError {
    RedisError::from((ErrorKind::InvalidClientConfig, message))
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, port, tls) = &self.inner.target;
        f.debug_struct("Client")
            .field("host", name)
            .field("port", port)
            .field("tls", tls)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::{MockHost, block_on};

    #[test]
    fn a_client_over_a_mock_host_fails_cleanly() {
        let host = Arc::new(MockHost::new()).host();
        let err = block_on(Client::open(&host, "redis://cache.test:6380/1")).expect_err("mock");
        assert!(
            err.to_string().contains("sockets need a real host"),
            "{err}"
        );
        let client = Client::new(&host, "rediss://cache.test/0").expect("tls url");
        assert_eq!(client.inner.target, ("cache.test".to_owned(), 6379, true));
        let client = client.connect_timeout(Duration::from_millis(10));
        assert_eq!(client.inner.connect_timeout, Duration::from_millis(10));
        assert!(block_on(client.get(&host)).is_err());
    }

    #[test]
    fn urls_that_cannot_work_are_refused() {
        let host = Arc::new(MockHost::new()).host();
        for url in [
            "redis+unix:///run/redis.sock",
            "rediss://cache.test/#insecure",
            "nope://x",
        ] {
            let err = Client::new(&host, url).expect_err(url);
            assert!(!err.to_string().is_empty());
        }
    }
}
