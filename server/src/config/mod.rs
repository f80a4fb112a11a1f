//! Configuration: the command line, the environment and the optional `berth.toml`.
//!
//! [`Cli`] is what the user typed (or set as `BERTH_*` variables); [`Config::load`] reads the
//! config file, if there is one, and resolves every setting as: command line or environment,
//! else the file, else the default. [`Config`] is the result the server runs with.
//!
//! The file is TOML and every key in it is optional:
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! apps_dir = "apps"                 # relative to the config file's directory
//! admin_listen = "127.0.0.1:9090"   # or "off"
//! drain_timeout = "30s"             # durations: seconds (30, 0.5) or "500ms", "30s", "2m"
//! outbound_timeout = "30s"
//! outbound_connect_timeout = "5s"  # fetches' and sockets' connects
//! max_sockets = 100                 # open TCP sockets per app version
//! request_timeout = "60s"
//! hook_timeout = "10s"
//! watch = true
//! access_log = false                # one log line per request (off by default)
//! workers = 0                       # worker processes (0: serve in this one process)
//! threads = 2                       # runtime threads per process (default: 1 per worker, else
//!                                   # one per CPU)
//! hang_grace = "5s"                 # a call into an app blocked this long past its time limit
//!                                   # gets its worker killed (or /healthz says 503)
//! reuse_port = false               # workers listen with a socket each (SO_REUSEPORT)
//! max_requests = 10000              # replace a worker after this many requests (default off)
//! max_requests_jitter = 1000        # plus up to this many, drawn per worker
//! max_lifetime = "1h"               # replace a worker after this long (default off)
//! max_lifetime_jitter = "5m"
//! worker_max_rss = "512MiB"         # replace a worker above this resident size (default off)
//! ws_max_message = "1MiB"           # WebSockets: larger messages close with 1009
//! ws_max_frame = "1MiB"             # larger frames close with 1009
//! ws_ping_interval = "20s"          # the server pings every socket this often
//! ws_pong_timeout = "20s"           # a client that answers no ping within it is dropped
//! ws_idle_timeout = "off"           # close with 1001 after this long without a message
//! ws_send_queue = 32                # messages an app may queue before its send waits
//! ws_origins = []                   # allowed `Origin`s ("https://app.example"); empty: any
//! ws_reload_grace = "off"           # after a swap, close old sockets with 1012 after this long
//! ws_shutdown_code = 1001           # the close code sockets get at shutdown
//! pubsub = "memory"                 # or "redis://127.0.0.1:6379/" to share channels
//! pubsub_queue = 64                 # messages queued per subscriber
//! pubsub_overflow = "drop-oldest"   # or "close" (a WebSocket that falls behind gets 1008)
//! pubsub_max_message = "1MiB"
//!
//! [apps.hello]
//! mount = "/hi"
//! enabled = true
//! request_timeout = "5s"
//! hook_timeout = "2s"
//! connect_timeout = "2s"            # this app's sockets
//! max_sockets = 10
//! ws_idle_timeout = "5m"            # every ws_* key can be set per app too
//! allowed_outbound_hosts = ["https://api.example.com", "postgres://db.internal"]
//! [apps.hello.settings]
//! greeting = "Hi there"
//! ```
//!
//! A key Berth does not know, a value of the wrong type or an invalid value is an error that
//! names the file, the key and the line.
//!
//! # Layout
//!
//! * `cli`: [`Cli`], the command line and its `BERTH_*` variables;
//! * `file`: the `berth.toml` schema as written, and errors that name its line and key;
//! * `values`: what a setting's value can be — sizes, counts, durations, addresses, mounts, app
//!   settings, host lists — parsed alike from the command line and the file;
//! * this module: the resolved [`Config`], its defaults, and [`Config::load`], which merges the
//!   command line over the file over the defaults.

mod cli;
mod file;
#[cfg(test)]
mod test_support;
mod values;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

// The one import of `Allowlist` in `config`: the submodules name it as `super::Allowlist`.
use crate::host::allowlist::Allowlist;
use crate::host::pubsub::PubSubConfig;
pub use crate::host::websocket::WsSettings;

pub use cli::Cli;
use file::FileConfig;
pub use values::{AdminListen, parse_size};

/// The config file read when `--config` is not given, if it exists in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "berth.toml";

const DEFAULT_APPS_DIR: &str = "apps";
const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_OUTBOUND_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HANG_GRACE: Duration = Duration::from_secs(5);

/// The settings the server runs with: command line and environment over the config file over
/// the defaults.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Directory to load app libraries from (default `apps`). A relative path from the config
    /// file is already resolved against the file's directory; one from the command line is
    /// relative to the working directory.
    pub apps_dir: PathBuf,
    /// Address to serve apps on (default `127.0.0.1:8080`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address of the admin endpoint (default `127.0.0.1:9090`); `None` when set to `off`.
    pub admin_listen: Option<SocketAddr>,
    /// On shutdown, how long in-flight requests may take to finish (default 30 s).
    pub drain_timeout: Duration,
    /// Default time limit for an app's outbound request, until the response head arrives
    /// (default 30 s).
    pub outbound_timeout: Duration,
    /// Default time limit for an app to answer a request; past it the client gets a 504
    /// (default 60 s). [`AppConfig::request_timeout`] overrides it per app.
    pub request_timeout: Duration,
    /// Default time limit for an app's init and shutdown hooks (default 10 s).
    /// [`AppConfig::hook_timeout`] overrides it per app.
    pub hook_timeout: Duration,
    /// Whether to watch the apps directory for added, changed and removed apps (default true).
    pub watch: bool,
    /// Whether to log one `info` event per request, under the target `berth::access` (default
    /// false, as in gunicorn and granian: at full load the line adds about a third to the CPU
    /// time of a request).
    pub access_log: bool,
    /// Worker processes (default 0: serve in this process). See [`crate::workers`].
    pub workers: usize,
    /// Runtime threads per process (default: 1 per worker with workers, else one per CPU).
    pub threads: Option<usize>,
    /// How long past its time limit one call into an app may block its thread (default 5 s):
    /// then its worker is killed and replaced, or in a single process `/healthz` answers 503.
    pub hang_grace: Duration,
    /// Whether each worker listens with a socket of its own (`SO_REUSEPORT`) instead of the
    /// one the supervisor shares (default false).
    pub reuse_port: bool,
    /// When workers are replaced although healthy (default: never).
    pub recycle: Recycle,
    /// The pub/sub broker: its backend (`pubsub`, memory by default, or a Redis URL), each
    /// subscriber's queue (`pubsub_queue`, 64), what happens when it is full
    /// (`pubsub_overflow`, `drop-oldest`) and the largest message (`pubsub_max_message`,
    /// 1 MiB). See [`crate::host::pubsub`].
    pub pubsub: PubSubConfig,
    /// Per-app settings from the config file's `[apps.<name>]` tables, keyed by app name. An
    /// app without an entry gets [`AppConfig::default`]; see [`Config::app`].
    pub apps: BTreeMap<String, AppConfig>,
    /// Serve HTTPS with this certificate and key instead of cleartext.
    pub tls: Option<TlsFiles>,
    /// Limits that protect the server from slow, large or numerous clients.
    pub limits: Limits,
    /// Outbound HTTP settings.
    pub outbound: OutboundConfig,
    /// WebSocket settings (the `ws_*` keys), for apps that do not set their own
    /// ([`AppConfig::websocket`]); see [`WsSettings`] for each default.
    pub websocket: WsSettings,
}

/// When a healthy worker is replaced, as gunicorn's `max_requests` and granian's lifetime and
/// RSS limits do: a leak or a slow degradation in an app then never takes a worker down. The
/// replacement starts and is ready first, then the old worker drains; one at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recycle {
    /// After this many requests begun (`None`: never).
    pub max_requests: Option<u64>,
    /// Plus up to this many, drawn per worker.
    pub max_requests_jitter: u64,
    /// After this long (`None`: never).
    pub max_lifetime: Option<Duration>,
    /// Plus up to this long, drawn per worker.
    pub max_lifetime_jitter: Duration,
    /// When its resident memory stays above this many bytes (`None`: never).
    pub max_rss: Option<u64>,
}

/// The PEM files of the TLS certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Limits on what clients may do, each with a default that is safe on the open internet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time a client has to send a request's headers (default 10 s): slow-loris clients are cut
    /// off.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes (default 64 KiB); larger ones get 431.
    pub max_header_size: usize,
    /// Largest request body, in bytes (default 10 MiB); per app `max_body_size`. Larger ones
    /// get 413 without being read into memory.
    pub max_body_size: u64,
    /// How long an idle keep-alive connection stays open (default 60 s).
    pub keepalive_timeout: Duration,
    /// Most connections served at once (default 4096), open WebSockets included; more wait in
    /// the listen backlog.
    pub max_connections: usize,
    /// Most concurrent streams per HTTP/2 connection (default 128).
    pub h2_max_concurrent_streams: u32,
    /// Time a client has to finish the TLS handshake (default 10 s).
    pub tls_handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_size: 64 * 1024,
            max_body_size: 10 * 1024 * 1024,
            keepalive_timeout: Duration::from_secs(60),
            max_connections: 4096,
            h2_max_concurrent_streams: 128,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// How apps reach upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    /// Time limit to connect (default 5 s), inside the request's time limit: for fetches, and
    /// for apps' sockets (with their TLS handshake) unless the app sets its own or
    /// [`AppConfig::connect_timeout`] overrides it.
    pub connect_timeout: Duration,
    /// Most TCP sockets one app version holds open at once (default 100); per app
    /// `max_sockets`. A connect past it fails at once.
    pub max_sockets: usize,
    /// Most outbound requests one app has in flight at once (default 64). A fetch holds its
    /// permit from the call that makes it until its response body is done; waiting for a
    /// permit counts inside the request's time limit. Per app `outbound_max_concurrency`.
    pub max_concurrency: usize,
    /// The largest response body an app may read whole into memory (default 16 MiB); per app
    /// `outbound_max_buffered`. Streaming a body is not limited by it.
    pub max_buffered: u64,
    /// Extra CA certificates (PEM) trusted besides the bundled roots.
    pub ca_file: Option<PathBuf>,
    /// Upstreams an app without its own list may call (default: none).
    pub allowed_hosts: Allowlist,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            connect_timeout: crate::host::SocketLimits::default().connect_timeout,
            max_sockets: crate::host::SocketLimits::default().max_sockets,
            max_concurrency: 64,
            max_buffered: 16 * 1024 * 1024,
            ca_file: None,
            allowed_hosts: Allowlist::default(),
        }
    }
}

/// One app's settings: a `[apps.<name>]` table of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// Path prefix to mount the app at instead of `/<name>`. Checked when loaded: it starts
    /// with `/`, is not `/` alone, has no empty, `.` or `..` segment (so no trailing `/`), and
    /// no `?`, `#`, whitespace or control character.
    pub mount: Option<String>,
    /// Whether to load the app at all (default true).
    pub enabled: bool,
    /// This app's request time limit, instead of [`Config::request_timeout`].
    pub request_timeout: Option<Duration>,
    /// This app's init and shutdown hook time limit, instead of [`Config::hook_timeout`].
    pub hook_timeout: Option<Duration>,
    /// String settings passed to the app's init, like an environment. Numbers and booleans in
    /// the file are passed as their TOML text (`8080`, `true`).
    pub settings: BTreeMap<String, String>,
    /// This app's largest request body, instead of [`Limits::max_body_size`].
    pub max_body_size: Option<u64>,
    /// Upstreams this app may call, instead of [`OutboundConfig::allowed_hosts`].
    pub allowed_outbound_hosts: Option<Allowlist>,
    /// This app's outbound concurrency cap, instead of [`OutboundConfig::max_concurrency`].
    pub outbound_max_concurrency: Option<usize>,
    /// This app's buffered response limit, instead of [`OutboundConfig::max_buffered`].
    pub outbound_max_buffered: Option<u64>,
    /// This app's time limit for opening a socket, instead of
    /// [`OutboundConfig::connect_timeout`] (its fetches keep the server's: the HTTP client's
    /// pool is shared).
    pub connect_timeout: Option<Duration>,
    /// This app's socket limit, instead of [`OutboundConfig::max_sockets`].
    pub max_sockets: Option<usize>,
    /// This app's WebSocket settings, each instead of [`Config::websocket`]'s.
    pub websocket: WsOverrides,
}

/// An app's own WebSocket settings (`ws_*` keys in `[apps.<name>]`); `None`: the server's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WsOverrides {
    /// `ws_max_message`.
    pub max_message: Option<usize>,
    /// `ws_max_frame`.
    pub max_frame: Option<usize>,
    /// `ws_ping_interval`.
    pub ping_interval: Option<Duration>,
    /// `ws_pong_timeout`.
    pub pong_timeout: Option<Duration>,
    /// `ws_idle_timeout` (`Some(None)`: off for this app).
    pub idle_timeout: Option<Option<Duration>>,
    /// `ws_send_queue`.
    pub send_queue: Option<usize>,
    /// `ws_origins`.
    pub origins: Option<Vec<String>>,
    /// `ws_reload_grace` (`Some(None)`: off for this app).
    pub reload_grace: Option<Option<Duration>>,
    /// `ws_shutdown_code`.
    pub shutdown_code: Option<u16>,
}

impl WsOverrides {
    /// These settings over `server`'s.
    pub fn over(&self, server: &WsSettings) -> WsSettings {
        WsSettings {
            max_message: self.max_message.unwrap_or(server.max_message),
            max_frame: self.max_frame.unwrap_or(server.max_frame),
            ping_interval: self.ping_interval.unwrap_or(server.ping_interval),
            pong_timeout: self.pong_timeout.unwrap_or(server.pong_timeout),
            idle_timeout: self.idle_timeout.unwrap_or(server.idle_timeout),
            send_queue: self.send_queue.unwrap_or(server.send_queue),
            origins: self
                .origins
                .clone()
                .unwrap_or_else(|| server.origins.clone()),
            reload_grace: self.reload_grace.unwrap_or(server.reload_grace),
            shutdown_code: self.shutdown_code.unwrap_or(server.shutdown_code),
        }
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            mount: None,
            enabled: true,
            request_timeout: None,
            hook_timeout: None,
            settings: BTreeMap::new(),
            max_body_size: None,
            allowed_outbound_hosts: None,
            outbound_max_concurrency: None,
            outbound_max_buffered: None,
            connect_timeout: None,
            max_sockets: None,
            websocket: WsOverrides::default(),
        }
    }
}

/// Why the configuration could not be loaded. Every message names the file, and the key and
/// line where they are known.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The config file is not valid TOML, has an unknown key, a value of the wrong type or an
    /// invalid value.
    #[error("invalid config file {}{}: {message}", path.display(), location(*line, key.as_deref()))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The 1-based line the error is on, if known.
        line: Option<usize>,
        /// The dotted key path, e.g. `apps.hello.mount`, if known.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

/// `, line 3, key `listen`` with whichever parts are known.
fn location(line: Option<usize>, key: Option<&str>) -> String {
    let mut text = String::new();
    if let Some(line) = line {
        text.push_str(&format!(", line {line}"));
    }
    if let Some(key) = key {
        text.push_str(&format!(", key `{key}`"));
    }
    text
}

impl Config {
    /// A configuration with every default, serving the apps in `apps_dir` on `listen`.
    pub fn new(apps_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Config {
            config_file: None,
            apps_dir: apps_dir.into(),
            listen,
            admin_listen: Some(DEFAULT_ADMIN_LISTEN),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            outbound_timeout: DEFAULT_OUTBOUND_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            hook_timeout: DEFAULT_HOOK_TIMEOUT,
            watch: true,
            access_log: false,
            workers: 0,
            threads: None,
            hang_grace: DEFAULT_HANG_GRACE,
            reuse_port: false,
            recycle: Recycle::default(),
            pubsub: PubSubConfig::default(),
            apps: BTreeMap::new(),
            tls: None,
            limits: Limits::default(),
            outbound: OutboundConfig::default(),
            websocket: WsSettings::default(),
        }
    }

    /// The WebSocket settings of the app called `name`: its own `ws_*` keys over the
    /// server's.
    pub fn websocket(&self, name: &str) -> WsSettings {
        match self.apps.get(name) {
            Some(app) => app.websocket.over(&self.websocket),
            None => self.websocket.clone(),
        }
    }

    /// The settings of the app called `name`: its `[apps.<name>]` entry, or the defaults.
    pub fn app(&self, name: &str) -> AppConfig {
        self.apps.get(name).cloned().unwrap_or_default()
    }

    /// Reads the config file named by `--config` (which must exist), or else `./berth.toml` if
    /// it exists, and resolves every setting: `cli` over the file over the defaults.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        Config::load_with_default(cli, Path::new(DEFAULT_CONFIG_FILE))
    }

    /// [`Config::load`], with `default_file` read when `--config` is not given.
    fn load_with_default(cli: Cli, default_file: &Path) -> Result<Config, ConfigError> {
        let (path, text) = match &cli.config {
            Some(path) => (path.clone(), read(path)?),
            None => match std::fs::read_to_string(default_file) {
                Ok(text) => (default_file.to_owned(), text),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    return Config::resolve(None, FileConfig::default(), cli);
                }
                Err(source) => {
                    return Err(ConfigError::Read {
                        path: default_file.to_owned(),
                        source,
                    });
                }
            },
        };
        let file = file::parse(&path, &text)?;
        Config::resolve(Some(path), file, cli)
    }

    /// Applies `cli` over `file` over the defaults. The only error is a certificate without a
    /// key or the reverse.
    fn resolve(
        config_file: Option<PathBuf>,
        file: FileConfig,
        cli: Cli,
    ) -> Result<Config, ConfigError> {
        let file_dir = config_file
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""))
            .to_owned();
        let in_file_dir = |path: PathBuf| file_dir.join(path);
        let defaults = Config::new(DEFAULT_APPS_DIR, DEFAULT_LISTEN);
        let tls_cert = cli.tls_cert.or(file.tls_cert.map(in_file_dir));
        let tls_key = cli.tls_key.or(file.tls_key.map(in_file_dir));
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (cert, _) => {
                return Err(ConfigError::Invalid {
                    path: config_file.unwrap_or_else(|| PathBuf::from("<command line>")),
                    line: None,
                    key: Some(
                        if cert.is_some() {
                            "tls_key"
                        } else {
                            "tls_cert"
                        }
                        .to_owned(),
                    ),
                    message: "tls_cert and tls_key (--tls-cert, --tls-key) go together".to_owned(),
                });
            }
        };
        let limits = Limits {
            header_read_timeout: cli
                .header_read_timeout
                .or(file.header_read_timeout.map(|d| d.0))
                .unwrap_or(defaults.limits.header_read_timeout),
            max_header_size: file
                .max_header_size
                .map_or(defaults.limits.max_header_size, |s| {
                    usize::try_from(s.0).unwrap_or(usize::MAX)
                }),
            max_body_size: cli
                .max_body_size
                .or(file.max_body_size.map(|s| s.0))
                .unwrap_or(defaults.limits.max_body_size),
            keepalive_timeout: cli
                .keepalive_timeout
                .or(file.keepalive_timeout.map(|d| d.0))
                .unwrap_or(defaults.limits.keepalive_timeout),
            max_connections: cli
                .max_connections
                .or(file.max_connections.map(|n| n.0))
                .unwrap_or(defaults.limits.max_connections),
            h2_max_concurrent_streams: file
                .h2_max_concurrent_streams
                .map_or(defaults.limits.h2_max_concurrent_streams, |n| {
                    u32::try_from(n.0).unwrap_or(u32::MAX)
                }),
            tls_handshake_timeout: file
                .tls_handshake_timeout
                .map_or(defaults.limits.tls_handshake_timeout, |d| d.0),
        };
        let outbound = OutboundConfig {
            connect_timeout: file
                .outbound_connect_timeout
                .map_or(defaults.outbound.connect_timeout, |d| d.0),
            max_sockets: file
                .max_sockets
                .map_or(defaults.outbound.max_sockets, |n| n.0),
            max_concurrency: file
                .outbound_max_concurrency
                .map_or(defaults.outbound.max_concurrency, |n| n.0),
            max_buffered: file
                .outbound_max_buffered
                .map_or(defaults.outbound.max_buffered, |s| s.0),
            ca_file: cli
                .outbound_ca_file
                .or(file.outbound_ca_file.map(|p| file_dir.join(p))),
            // An empty `BERTH_ALLOW_OUTBOUND=` counts as not given.
            allowed_hosts: cli
                .allow_outbound
                .filter(|list| !list.is_empty())
                .or(file.allowed_outbound_hosts.map(|h| h.0))
                .unwrap_or_default(),
        };
        let ws = &defaults.websocket;
        let websocket = WsSettings {
            max_message: file
                .ws_max_message
                .map_or(ws.max_message, |s| file::size(s.0)),
            max_frame: file.ws_max_frame.map_or(ws.max_frame, |s| file::size(s.0)),
            ping_interval: file.ws_ping_interval.map_or(ws.ping_interval, |d| d.0),
            pong_timeout: file.ws_pong_timeout.map_or(ws.pong_timeout, |d| d.0),
            idle_timeout: file.ws_idle_timeout.map_or(ws.idle_timeout, |d| d.0),
            send_queue: file.ws_send_queue.map_or(ws.send_queue, |n| n.0),
            origins: file.ws_origins.map_or_else(|| ws.origins.clone(), |o| o.0),
            reload_grace: file.ws_reload_grace.map_or(ws.reload_grace, |d| d.0),
            shutdown_code: file.ws_shutdown_code.map_or(ws.shutdown_code, |c| c.0),
        };
        Ok(Config {
            tls,
            limits,
            outbound,
            websocket,
            apps_dir: cli
                .apps_dir
                .or_else(|| file.apps_dir.map(|dir| file_dir.join(dir)))
                .unwrap_or(defaults.apps_dir),
            listen: cli
                .listen
                .or(file.listen.map(|a| a.0))
                .unwrap_or(defaults.listen),
            admin_listen: match cli.admin_listen.or(file.admin_listen) {
                Some(admin) => admin.addr(),
                None => defaults.admin_listen,
            },
            drain_timeout: cli
                .drain_timeout
                .or(file.drain_timeout.map(|d| d.0))
                .unwrap_or(defaults.drain_timeout),
            outbound_timeout: cli
                .outbound_timeout
                .or(file.outbound_timeout.map(|d| d.0))
                .unwrap_or(defaults.outbound_timeout),
            request_timeout: cli
                .request_timeout
                .or(file.request_timeout.map(|d| d.0))
                .unwrap_or(defaults.request_timeout),
            hook_timeout: file.hook_timeout.map_or(defaults.hook_timeout, |d| d.0),
            watch: !cli.no_watch && file.watch.unwrap_or(defaults.watch),
            access_log: cli.access_log || file.access_log.unwrap_or(defaults.access_log),
            workers: cli.workers.or(file.workers).unwrap_or(defaults.workers),
            threads: cli.threads.or(file.threads.map(|n| n.0)),
            hang_grace: cli
                .hang_grace
                .or(file.hang_grace.map(|d| d.0))
                .unwrap_or(defaults.hang_grace),
            reuse_port: cli.reuse_port || file.reuse_port.unwrap_or(defaults.reuse_port),
            recycle: Recycle {
                max_requests: cli
                    .max_requests
                    .or(file.max_requests.map(|n| n.0))
                    .map(|n| n as u64),
                max_requests_jitter: cli
                    .max_requests_jitter
                    .or(file.max_requests_jitter)
                    .unwrap_or_default() as u64,
                max_lifetime: cli.max_lifetime.or(file.max_lifetime.map(|d| d.0)),
                max_lifetime_jitter: cli
                    .max_lifetime_jitter
                    .or(file.max_lifetime_jitter.map(|d| d.0))
                    .unwrap_or_default(),
                max_rss: cli.worker_max_rss.or(file.worker_max_rss.map(|s| s.0)),
            },
            pubsub: PubSubConfig {
                backend: cli
                    .pubsub
                    .or(file.pubsub.map(|b| b.0))
                    .unwrap_or(defaults.pubsub.backend),
                queue: file.pubsub_queue.map_or(defaults.pubsub.queue, |n| n.0),
                overflow: file
                    .pubsub_overflow
                    .map_or(defaults.pubsub.overflow, |o| o.0),
                max_message: file
                    .pubsub_max_message
                    .map_or(defaults.pubsub.max_message, |s| {
                        usize::try_from(s.0).unwrap_or(usize::MAX)
                    }),
            },
            apps: file
                .apps
                .into_iter()
                .map(|(name, app)| (name, app.into()))
                .collect(),
            config_file,
        })
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::test_support::{load, temp_dir};
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_without_a_file() {
        let dir = temp_dir("defaults");
        let cli = Cli::try_parse_from(["berth"]).unwrap();
        let config = Config::load_with_default(cli, &dir.join("berth.toml")).unwrap();
        assert_eq!(config.config_file, None);
        assert_eq!(config.apps_dir, PathBuf::from("apps"));
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(config.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.outbound_timeout, Duration::from_secs(30));
        assert_eq!(config.request_timeout, Duration::from_secs(60));
        assert_eq!(config.hook_timeout, Duration::from_secs(10));
        assert!(config.watch);
        assert!(config.apps.is_empty());
        assert_eq!(config.app("hello"), AppConfig::default());
        assert!(config.app("hello").enabled);
    }

    #[test]
    fn default_file_is_read_when_present() {
        let dir = temp_dir("default-file");
        let file = dir.join("berth.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\n").unwrap();
        let cli = Cli::try_parse_from(["berth"]).unwrap();
        let config = Config::load_with_default(cli, &file).unwrap();
        assert_eq!(config.config_file, Some(file));
        assert_eq!(config.listen.port(), 1);
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = load("empty", "", &[]).unwrap();
        assert!(config.config_file.is_some());
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.request_timeout, Duration::from_secs(60));
        assert!(!config.access_log);
    }

    #[test]
    fn file_values() {
        let toml = r#"
            listen = "0.0.0.0:8000"
            apps_dir = "/srv/apps"
            admin_listen = "127.0.0.1:9999"
            drain_timeout = "5s"
            outbound_timeout = "1m"
            request_timeout = "90s"
            hook_timeout = "3s"
            watch = false
            access_log = true

            [apps.hello]
            mount = "/hi/there"
            enabled = false
            request_timeout = "5s"
            hook_timeout = "2s"
            [apps.hello.settings]
            greeting = "Hi there"
            port = 8080
            loud = true

            [apps.other]
        "#;
        let config = load("file-values", toml, &[]).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(config.apps_dir, PathBuf::from("/srv/apps"));
        assert_eq!(config.admin_listen, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
        assert_eq!(config.outbound_timeout, Duration::from_secs(60));
        assert_eq!(config.request_timeout, Duration::from_secs(90));
        assert_eq!(config.hook_timeout, Duration::from_secs(3));
        assert!(!config.watch);
        assert!(config.access_log);
        let hello = config.app("hello");
        assert_eq!(hello.mount.as_deref(), Some("/hi/there"));
        assert!(!hello.enabled);
        assert_eq!(hello.request_timeout, Some(Duration::from_secs(5)));
        assert_eq!(hello.hook_timeout, Some(Duration::from_secs(2)));
        assert_eq!(hello.settings["greeting"], "Hi there");
        assert_eq!(hello.settings["port"], "8080");
        assert_eq!(hello.settings["loud"], "true");
        assert_eq!(config.app("other"), AppConfig::default());
    }

    #[test]
    fn cli_overrides_file() {
        let toml = r#"
            listen = "0.0.0.0:8000"
            apps_dir = "from-file"
            admin_listen = "127.0.0.1:9999"
            drain_timeout = 5
            outbound_timeout = 5
            request_timeout = 5
            watch = true
        "#;
        let args = [
            "--listen",
            "127.0.0.1:7000",
            "--apps-dir",
            "from-cli",
            "--admin-listen",
            "off",
            "--drain-timeout",
            "1",
            "--outbound-timeout",
            "2s",
            "--request-timeout",
            "1500ms",
            "--no-watch",
            "--access-log",
        ];
        let config = load("cli-overrides", toml, &args).unwrap();
        assert_eq!(config.listen.port(), 7000);
        assert_eq!(config.apps_dir, PathBuf::from("from-cli"));
        assert_eq!(config.admin_listen, None);
        assert_eq!(config.drain_timeout, Duration::from_secs(1));
        assert_eq!(config.outbound_timeout, Duration::from_secs(2));
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert!(!config.watch);
        assert!(config.access_log);
    }

    #[test]
    fn socket_limits_at_the_top_and_per_app() {
        let config = load("sockets-default", "", &[]).unwrap();
        assert_eq!(config.outbound.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.outbound.max_sockets, 100);
        assert_eq!(config.app("db").connect_timeout, None);
        assert_eq!(config.app("db").max_sockets, None);

        let toml = r#"
            outbound_connect_timeout = "2s"
            max_sockets = 20
            [apps.db]
            connect_timeout = "500ms"
            max_sockets = 3
            allowed_outbound_hosts = ["postgres://db.internal", "redis://cache:6380"]
            [apps.other]
        "#;
        let config = load("sockets", toml, &[]).unwrap();
        assert_eq!(config.outbound.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.outbound.max_sockets, 20);
        let db = config.app("db");
        assert_eq!(db.connect_timeout, Some(Duration::from_millis(500)));
        assert_eq!(db.max_sockets, Some(3));
        let policy = crate::apps::outbound_policy(&config, &db);
        assert_eq!(policy.connect_timeout, Duration::from_millis(500));
        assert_eq!(policy.max_sockets, 3);
        assert!(policy.allowlist.allows_socket("db.internal", 5432));
        let other = crate::apps::outbound_policy(&config, &config.app("other"));
        assert_eq!(other.connect_timeout, Duration::from_secs(2));
        assert_eq!(other.max_sockets, 20);

        // Each spelling of the connect time limit is accepted at both levels.
        let toml = "connect_timeout = 3\n[apps.db]\noutbound_connect_timeout = 1\n";
        let config = load("sockets-alias", toml, &[]).unwrap();
        assert_eq!(config.outbound.connect_timeout, Duration::from_secs(3));
        assert_eq!(
            config.app("db").connect_timeout,
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn bad_socket_settings_name_the_key() {
        use super::test_support::load_err;
        let message = load_err("max-sockets-zero", "max_sockets = 0\n");
        assert!(message.contains("key `max_sockets`"), "{message}");
        assert!(message.contains("at least 1"), "{message}");
        let message = load_err("connect-zero", "[apps.db]\nconnect_timeout = 0\n");
        assert!(
            message.contains("key `apps.db.connect_timeout`"),
            "{message}"
        );
        assert!(message.contains("more than 0"), "{message}");
        let message = load_err(
            "tcp-without-port",
            "[apps.db]\nallowed_outbound_hosts = [\"tcp://db\"]\n",
        );
        assert!(
            message.contains("key `apps.db.allowed_outbound_hosts`"),
            "{message}"
        );
        assert!(message.contains("\"tcp://db\""), "{message}");
        assert!(message.contains("needs a port"), "{message}");
        let message = load_err("max-sockets-type", "[apps.db]\nmax_sockets = \"many\"\n");
        assert!(message.contains("key `apps.db.max_sockets`"), "{message}");
    }

    #[test]
    fn websocket_settings_at_the_top_and_per_app() {
        let config = load("ws-default", "", &[]).unwrap();
        let ws = config.websocket("chat");
        assert_eq!(ws, WsSettings::default());
        assert_eq!(ws.max_message, 1 << 20);
        assert_eq!(ws.max_frame, 1 << 20);
        assert_eq!(ws.ping_interval, Duration::from_secs(20));
        assert_eq!(ws.pong_timeout, Duration::from_secs(20));
        assert_eq!(ws.idle_timeout, None);
        assert_eq!(ws.send_queue, 32);
        assert!(ws.origins.is_empty());
        assert_eq!(ws.reload_grace, None);
        assert_eq!(ws.shutdown_code, 1001);

        let toml = r#"
            ws_max_message = "64KiB"
            ws_ping_interval = "500ms"
            ws_idle_timeout = "1m"
            ws_origins = ["https://App.example"]
            ws_shutdown_code = 1012
            [apps.chat]
            ws_max_frame = 1024
            ws_idle_timeout = "off"
            ws_reload_grace = 0
            ws_send_queue = 4
            [apps.other]
        "#;
        let config = load("ws", toml, &[]).unwrap();
        let chat = config.websocket("chat");
        assert_eq!(chat.max_message, 64 * 1024);
        assert_eq!(chat.max_frame, 1024);
        assert_eq!(chat.ping_interval, Duration::from_millis(500));
        assert_eq!(chat.idle_timeout, None);
        assert_eq!(chat.reload_grace, Some(Duration::ZERO));
        assert_eq!(chat.send_queue, 4);
        assert_eq!(chat.origins, ["https://app.example"]);
        assert_eq!(chat.shutdown_code, 1012);
        let other = config.websocket("other");
        assert_eq!(other.idle_timeout, Some(Duration::from_secs(60)));
        assert_eq!(other.max_frame, 1 << 20);
        assert_eq!(config.websocket("unlisted"), other);
    }

    #[test]
    fn bad_websocket_settings_name_the_key() {
        use super::test_support::load_err;
        let message = load_err("ws-code", "ws_shutdown_code = 1006\n");
        assert!(message.contains("key `ws_shutdown_code`"), "{message}");
        assert!(message.contains("1006 is not a close code"), "{message}");
        let message = load_err("ws-idle", "[apps.chat]\nws_idle_timeout = 0\n");
        assert!(
            message.contains("key `apps.chat.ws_idle_timeout`"),
            "{message}"
        );
        assert!(message.contains("off"), "{message}");
        let message = load_err("ws-origin", "ws_origins = [\"app.example\"]\n");
        assert!(message.contains("key `ws_origins`"), "{message}");
        assert!(message.contains("not an origin"), "{message}");
        let message = load_err("ws-queue", "[apps.chat]\nws_send_queue = 0\n");
        assert!(
            message.contains("key `apps.chat.ws_send_queue`"),
            "{message}"
        );
        let message = load_err("ws-ping", "ws_ping_interval = \"soon\"\n");
        assert!(message.contains("key `ws_ping_interval`"), "{message}");
    }

    #[test]
    fn pubsub_defaults_file_and_command_line() {
        use crate::host::pubsub::{Backend, Overflow};
        let config = load("pubsub-default", "", &[]).unwrap();
        assert_eq!(config.pubsub, PubSubConfig::default());
        assert_eq!(config.pubsub.backend, Backend::Memory);
        assert_eq!(config.pubsub.queue, 64);
        assert_eq!(config.pubsub.overflow, Overflow::DropOldest);
        assert_eq!(config.pubsub.max_message, 1 << 20);

        let toml = r#"
            pubsub = "redis://127.0.0.1:6379/"
            pubsub_queue = 16
            pubsub_overflow = "close"
            pubsub_max_message = "64KiB"
        "#;
        let config = load("pubsub", toml, &[]).unwrap();
        let redis = Backend::Redis("redis://127.0.0.1:6379/".to_owned());
        assert_eq!(config.pubsub.backend, redis);
        assert_eq!(config.pubsub.queue, 16);
        assert_eq!(config.pubsub.overflow, Overflow::Close);
        assert_eq!(config.pubsub.max_message, 64 * 1024);

        let config = load("pubsub-cli", toml, &["--pubsub", "memory"]).unwrap();
        assert_eq!(config.pubsub.backend, Backend::Memory);
        assert!(Cli::try_parse_from(["berth", "--pubsub", "http://x"]).is_err());
    }

    #[test]
    fn process_model_defaults_file_and_command_line() {
        let config = load("workers-default", "", &[]).unwrap();
        assert_eq!(config.workers, 0);
        assert_eq!(config.threads, None);
        assert_eq!(config.hang_grace, Duration::from_secs(5));
        assert!(!config.reuse_port);
        assert_eq!(config.recycle, Recycle::default());

        let toml = r#"
            workers = 4
            threads = 2
            hang_grace = "2s"
            reuse_port = true
            max_requests = 1000
            max_requests_jitter = 100
            max_lifetime = "1h"
            max_lifetime_jitter = "5m"
            worker_max_rss = "512MiB"
        "#;
        let config = load("workers", toml, &[]).unwrap();
        assert_eq!(config.workers, 4);
        assert_eq!(config.threads, Some(2));
        assert_eq!(config.hang_grace, Duration::from_secs(2));
        assert!(config.reuse_port);
        let recycle = Recycle {
            max_requests: Some(1000),
            max_requests_jitter: 100,
            max_lifetime: Some(Duration::from_secs(3600)),
            max_lifetime_jitter: Duration::from_secs(300),
            max_rss: Some(512 << 20),
        };
        assert_eq!(config.recycle, recycle);

        let args = [
            "--workers",
            "0",
            "--max-requests",
            "7",
            "--worker-max-rss",
            "1GiB",
        ];
        let config = load("workers-cli", toml, &args).unwrap();
        assert_eq!(config.workers, 0);
        assert_eq!(config.recycle.max_requests, Some(7));
        assert_eq!(config.recycle.max_rss, Some(1 << 30));
        assert!(Cli::try_parse_from(["berth", "--threads", "0"]).is_err());
        assert!(Cli::try_parse_from(["berth", "--workers", "-1"]).is_err());
        assert!(Cli::try_parse_from(["berth", "--hang-grace", "0"]).is_err());
    }

    #[test]
    fn bad_process_settings_name_the_file_and_the_key() {
        use super::test_support::load_err;
        let message = load_err("workers-neg", "workers = -2\n");
        assert!(message.contains("line 1, key `workers`"), "{message}");
        let message = load_err("max-requests-0", "max_requests = 0\n");
        assert!(message.contains("key `max_requests`"), "{message}");
        assert!(message.contains("at least 1"), "{message}");
        let message = load_err("max-rss", "worker_max_rss = \"lots\"\n");
        assert!(message.contains("key `worker_max_rss`"), "{message}");
    }

    #[test]
    fn bad_pubsub_settings_name_the_file_the_key_and_what_is_accepted() {
        use super::test_support::load_err;
        let message = load_err("pubsub-http", "pubsub = \"http://x\"\n");
        assert!(message.contains("line 1, key `pubsub`"), "{message}");
        assert!(
            message.contains("\"http://x\" is not a pub/sub backend"),
            "{message}"
        );
        assert!(message.contains("\"memory\" or a Redis URL"), "{message}");
        let message = load_err("pubsub-tls", "pubsub = \"rediss://cache\"\n");
        assert!(message.contains("key `pubsub`"), "{message}");
        assert!(message.contains("TLS"), "{message}");
        let message = load_err("pubsub-overflow", "pubsub_overflow = \"drop\"\n");
        assert!(message.contains("key `pubsub_overflow`"), "{message}");
        assert!(
            message.contains("\"drop-oldest\" or \"close\""),
            "{message}"
        );
        let message = load_err("pubsub-queue", "pubsub_queue = 0\n");
        assert!(message.contains("key `pubsub_queue`"), "{message}");
        assert!(message.contains("at least 1"), "{message}");
        let message = load_err("pubsub-max", "pubsub_max_message = \"lots\"\n");
        assert!(message.contains("key `pubsub_max_message`"), "{message}");
    }

    #[test]
    fn admin_listen_off() {
        let config = load("admin-off", "admin_listen = \"off\"\n", &[]).unwrap();
        assert_eq!(config.admin_listen, None);
        let config = load(
            "admin-on",
            "admin_listen = \"off\"\n",
            &["--admin-listen", "127.0.0.1:1"],
        )
        .unwrap();
        assert_eq!(config.admin_listen, Some("127.0.0.1:1".parse().unwrap()));
    }

    #[test]
    fn relative_apps_dir_is_relative_to_the_file() {
        let dir = temp_dir("relative");
        let file = dir.join("conf").join("berth.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "apps_dir = \"../plugins\"\n").unwrap();
        let cli = Cli::try_parse_from(["berth", "--config", file.to_str().unwrap()]).unwrap();
        let config = Config::load(cli).unwrap();
        assert_eq!(config.apps_dir, dir.join("conf").join("../plugins"));

        // A file named without a directory: relative to the working directory, unchanged.
        let config = Config::resolve(
            Some(PathBuf::from("berth.toml")),
            toml::from_str("apps_dir = \"plugins\"").unwrap(),
            Cli::default(),
        )
        .unwrap();
        assert_eq!(config.apps_dir, PathBuf::from("plugins"));
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let path = temp_dir("missing").join("nope.toml");
        let cli = Cli::try_parse_from(["berth", "--config", path.to_str().unwrap()]).unwrap();
        let err = Config::load(cli).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.toml"), "{err}");
    }
}
