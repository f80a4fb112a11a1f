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
//! request_timeout = "60s"
//! hook_timeout = "10s"
//! watch = true
//! access_log = false                # one log line per request (off by default)
//!
//! [apps.hello]
//! mount = "/hi"
//! enabled = true
//! request_timeout = "5s"
//! hook_timeout = "2s"
//! [apps.hello.settings]
//! greeting = "Hi there"
//! ```
//!
//! A key Berth does not know, a value of the wrong type or an invalid value is an error that
//! names the file, the key and the line.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

use crate::allowlist::Allowlist;
use serde::de::{self, Deserialize, Deserializer, Visitor};

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

/// Berth: serve HTTP apps compiled as Rust plugins.
///
/// Every shared library in the apps directory that was built with `berth_app::export_app!` is
/// loaded and mounted at `/<app name>`. `GET /` lists the mounted apps.
///
/// Every option is optional: one that is not given comes from the config file, else from its
/// default, so [`Config::load`] can tell what the user set.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "berth", version, about, long_about = None)]
#[command(
    after_help = "Options given here or in the environment override the config file \
                        (--config, else ./berth.toml if it exists).\n\
                        Durations are seconds (30, 0.5) or a duration like 500ms, 30s, 2m."
)]
pub struct Cli {
    /// Config file to read; it must exist [default: ./berth.toml if it exists]
    #[arg(long, env = "BERTH_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Directory to load app libraries (`*.so`) from [default: apps]
    #[arg(long, env = "BERTH_APPS_DIR", value_name = "DIR")]
    pub apps_dir: Option<PathBuf>,

    /// Address to serve HTTP/1.1 and HTTP/2 (cleartext) on; port 0 picks a free port
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "BERTH_LISTEN", value_name = "ADDR", value_parser = parse_addr)]
    pub listen: Option<SocketAddr>,

    /// Address of the admin endpoint, or `off` [default: 127.0.0.1:9090]
    #[arg(long, env = "BERTH_ADMIN_LISTEN", value_name = "ADDR|off")]
    pub admin_listen: Option<AdminListen>,

    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish before the process
    /// exits anyway [default: 30s]
    #[arg(long, env = "BERTH_DRAIN_TIMEOUT", value_name = "DUR", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// Default time limit for an app's outbound request, until the response head arrives
    /// [default: 30s]
    #[arg(long, env = "BERTH_OUTBOUND_TIMEOUT", value_name = "DUR",
          value_parser = parse_positive_duration)]
    pub outbound_timeout: Option<Duration>,

    /// Default time limit for an app to answer a request; past it the client gets a 504
    /// [default: 60s]
    #[arg(long, env = "BERTH_REQUEST_TIMEOUT", value_name = "DUR",
          value_parser = parse_positive_duration)]
    pub request_timeout: Option<Duration>,

    /// Serve HTTPS with this PEM certificate chain (needs --tls-key); ALPN offers h2 and
    /// http/1.1
    #[arg(long, env = "BERTH_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert
    #[arg(long, env = "BERTH_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Extra CA certificates (PEM) to trust for apps' outbound HTTPS, besides the bundled roots
    #[arg(long, env = "BERTH_OUTBOUND_CA_FILE", value_name = "PEM")]
    pub outbound_ca_file: Option<PathBuf>,

    /// Upstreams every app without its own `allowed_outbound_hosts` may call, comma-separated:
    /// `*`, `scheme://host[:port]`, `https://*.example.com` [default: none]
    #[arg(long, env = "BERTH_ALLOW_OUTBOUND", value_name = "LIST", value_parser = parse_allow_list)]
    pub allow_outbound: Option<Allowlist>,

    /// Largest request body an app accepts; larger ones get 413 [default: 10MiB]
    #[arg(long, env = "BERTH_MAX_BODY_SIZE", value_name = "SIZE", value_parser = parse_size)]
    pub max_body_size: Option<u64>,

    /// Most connections served at once; more wait in the listen backlog [default: 4096]
    #[arg(long, env = "BERTH_MAX_CONNECTIONS", value_name = "N", value_parser = parse_count)]
    pub max_connections: Option<usize>,

    /// Time a client has to send a request's headers (slow clients are cut off) [default: 10s]
    #[arg(long, env = "BERTH_HEADER_READ_TIMEOUT", value_name = "DUR",
          value_parser = parse_positive_duration)]
    pub header_read_timeout: Option<Duration>,

    /// How long an idle keep-alive connection stays open [default: 60s]
    #[arg(long, env = "BERTH_KEEPALIVE_TIMEOUT", value_name = "DUR",
          value_parser = parse_positive_duration)]
    pub keepalive_timeout: Option<Duration>,

    /// Do not watch the apps directory for added, changed or removed apps (watched by default)
    #[arg(long, env = "BERTH_NO_WATCH", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_watch: bool,

    /// Log one line per request: app, method, path, status, latency (off by default)
    #[arg(long, env = "BERTH_ACCESS_LOG", value_parser = clap::builder::FalseyValueParser::new())]
    pub access_log: bool,
}

/// An admin endpoint address, or `off`: the value of `--admin-listen` and `admin_listen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// No admin endpoint.
    Off,
    /// Serve the admin endpoint on this address.
    Addr(SocketAddr),
}

impl AdminListen {
    /// The address, or `None` for `off`.
    pub fn addr(self) -> Option<SocketAddr> {
        match self {
            AdminListen::Off => None,
            AdminListen::Addr(addr) => Some(addr),
        }
    }
}

impl FromStr for AdminListen {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        if value.trim().eq_ignore_ascii_case("off") {
            Ok(AdminListen::Off)
        } else {
            value.trim().parse().map(AdminListen::Addr).map_err(|_| {
                format!(
                    "{value:?} is neither a socket address nor `off`; expected IP:PORT like \
                     \"127.0.0.1:9090\" or \"off\""
                )
            })
        }
    }
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Off => f.write_str("off"),
            AdminListen::Addr(addr) => addr.fmt(f),
        }
    }
}

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
    /// Per-app settings from the config file's `[apps.<name>]` tables, keyed by app name. An
    /// app without an entry gets [`AppConfig::default`]; see [`Config::app`].
    pub apps: BTreeMap<String, AppConfig>,
    /// Serve HTTPS with this certificate and key instead of cleartext.
    pub tls: Option<TlsFiles>,
    /// Limits that protect the server from slow, large or numerous clients.
    pub limits: Limits,
    /// Outbound HTTP settings.
    pub outbound: OutboundConfig,
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
    /// Most connections served at once (default 4096); more wait in the listen backlog.
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
    /// Time limit to connect (default 5 s), inside the request's time limit.
    pub connect_timeout: Duration,
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
            connect_timeout: Duration::from_secs(5),
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
            apps: BTreeMap::new(),
            tls: None,
            limits: Limits::default(),
            outbound: OutboundConfig::default(),
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
        let file = parse(&path, &text)?;
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
        Ok(Config {
            tls,
            limits,
            outbound,
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

/// Parses and checks the file's text; `path` is only for the error.
fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let invalid = |err: toml::de::Error, key: Option<String>| {
        let line = err.span().and_then(|span| line_of(text, span.start));
        ConfigError::Invalid {
            path: path.to_owned(),
            key: key.or_else(|| line.and_then(|line| key_on_line(text, line))),
            line,
            message: err.message().trim_end().to_owned(),
        }
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|err| invalid(err, None))?;
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = key_path(err.path());
        invalid(err.into_inner(), key)
    })
}

/// The dotted TOML key of a deserialization path, quoting keys that are not bare, e.g.
/// `apps."my.app".mount`; `None` for the document itself.
fn key_path(path: &serde_path_to_error::Path) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut text = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => text.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !text.is_empty() {
                    text.push('.');
                }
                let bare = !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    text.push_str(key);
                } else {
                    text.push_str(&format!("{key:?}"));
                }
            }
            Segment::Unknown => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push('?');
            }
        }
    }
    (!text.is_empty()).then_some(text)
}

/// The 1-based line of the byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> Option<usize> {
    Some(text.get(..offset)?.matches('\n').count() + 1)
}

/// For a syntax error: the key assigned or the table opened on 1-based `line`, if any.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let source = text.lines().nth(line - 1)?.trim();
    let key = if let Some(header) = source.strip_prefix('[') {
        header.trim_start_matches('[').split(']').next()?
    } else {
        source.split('=').next().filter(|_| source.contains('='))?
    };
    let key = key.trim();
    (!key.is_empty()).then(|| key.to_owned())
}

/// The file as written: every key optional, nothing resolved yet.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Addr>,
    apps_dir: Option<PathBuf>,
    admin_listen: Option<AdminListen>,
    drain_timeout: Option<Secs>,
    outbound_timeout: Option<PositiveSecs>,
    request_timeout: Option<PositiveSecs>,
    hook_timeout: Option<PositiveSecs>,
    watch: Option<bool>,
    access_log: Option<bool>,
    #[serde(default)]
    apps: BTreeMap<String, FileApp>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_handshake_timeout: Option<PositiveSecs>,
    header_read_timeout: Option<PositiveSecs>,
    keepalive_timeout: Option<PositiveSecs>,
    max_header_size: Option<Size>,
    max_body_size: Option<Size>,
    max_connections: Option<Count>,
    h2_max_concurrent_streams: Option<Count>,
    outbound_connect_timeout: Option<PositiveSecs>,
    outbound_max_concurrency: Option<Count>,
    outbound_max_buffered: Option<Size>,
    outbound_ca_file: Option<PathBuf>,
    allowed_outbound_hosts: Option<Hosts>,
}

/// An `[apps.<name>]` table as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApp {
    mount: Option<Mount>,
    enabled: Option<bool>,
    request_timeout: Option<PositiveSecs>,
    hook_timeout: Option<PositiveSecs>,
    #[serde(default)]
    settings: BTreeMap<String, Setting>,
    max_body_size: Option<Size>,
    allowed_outbound_hosts: Option<Hosts>,
    outbound_max_concurrency: Option<Count>,
    outbound_max_buffered: Option<Size>,
}

impl From<FileApp> for AppConfig {
    fn from(app: FileApp) -> Self {
        AppConfig {
            max_body_size: app.max_body_size.map(|s| s.0),
            allowed_outbound_hosts: app.allowed_outbound_hosts.map(|h| h.0),
            outbound_max_concurrency: app.outbound_max_concurrency.map(|n| n.0),
            outbound_max_buffered: app.outbound_max_buffered.map(|s| s.0),
            mount: app.mount.map(|m| m.0),
            enabled: app.enabled.unwrap_or(true),
            request_timeout: app.request_timeout.map(|d| d.0),
            hook_timeout: app.hook_timeout.map(|d| d.0),
            settings: app.settings.into_iter().map(|(k, v)| (k, v.0)).collect(),
        }
    }
}

/// A socket address written as a string, e.g. `"127.0.0.1:8080"`.
#[derive(Debug)]
struct Addr(SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_addr(&text).map(Addr).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// A duration of 0 or more: a number of seconds or a humantime string.
#[derive(Debug)]
struct Secs(Duration);

/// A duration of more than 0: a number of seconds or a humantime string.
#[derive(Debug)]
struct PositiveSecs(Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DurationVisitor).map(Secs)
    }
}

impl<'de> Deserialize<'de> for PositiveSecs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let duration = deserializer.deserialize_any(DurationVisitor)?;
        check_positive(duration)
            .map(PositiveSecs)
            .map_err(de::Error::custom)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number of seconds (30, 0.5) or a duration string (\"500ms\", \"2m\")")
    }

    fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
        u64::try_from(secs).map(Duration::from_secs).map_err(|_| {
            E::custom(format!(
                "{secs} is not a valid duration (0 or more seconds)"
            ))
        })
    }

    fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(secs))
    }

    fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Duration, E> {
        secs_f64(secs, &secs.to_string()).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_duration(text).map_err(E::custom)
    }
}

/// A path prefix to mount an app at, checked by [`check_mount`].
#[derive(Debug)]
struct Mount(String);

impl<'de> Deserialize<'de> for Mount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mount = String::deserialize(deserializer)?;
        check_mount(&mount)
            .map_err(|why| de::Error::custom(format!("invalid mount {mount:?}: {why}")))?;
        Ok(Mount(mount))
    }
}

/// Why `mount` cannot be a mount path, if it cannot.
fn check_mount(mount: &str) -> Result<(), &'static str> {
    let Some(rest) = mount.strip_prefix('/') else {
        return Err("it must start with '/'");
    };
    if rest.is_empty() {
        return Err("'/' is where Berth lists the apps; mount the app under a path like \"/hi\"");
    }
    if mount.contains(['?', '#']) {
        return Err("it must not contain '?' or '#'");
    }
    if mount.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it must not contain whitespace or control characters");
    }
    if rest.split('/').any(|segment| segment.is_empty()) {
        return Err("it must not end with '/' or contain \"//\"");
    }
    if rest
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err("it must not contain \".\" or \"..\" segments");
    }
    Ok(())
}

/// A value of `[apps.<name>.settings]`: a string, or a number or boolean as its TOML text.
#[derive(Debug)]
struct Setting(String);

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SettingVisitor;

        impl Visitor<'_> for SettingVisitor {
            type Value = String;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
                Ok(v.to_owned())
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
                Ok(v.to_string())
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
                Ok(v.to_string())
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
                Ok(v.to_string())
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
                Ok(v.to_string())
            }
        }

        deserializer.deserialize_any(SettingVisitor).map(Setting)
    }
}

/// A size in bytes: a whole number, or a string with a unit (`"64KiB"`, `"10MiB"`, `"1GB"`).
#[derive(Debug)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = u64;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes (65536) or with a unit (\"64KiB\", \"10MiB\")")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
                u64::try_from(v).map_err(|_| E::custom(format!("{v} is not a size")))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
                Ok(v)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
                parse_size(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(SizeVisitor).map(Size)
    }
}

/// A count of at least 1.
#[derive(Debug)]
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(deserializer)?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .map(Count)
            .ok_or_else(|| de::Error::custom(format!("{n} is not a count of at least 1")))
    }
}

/// An `allowed_outbound_hosts` list, each entry checked.
#[derive(Debug)]
struct Hosts(Allowlist);

impl<'de> Deserialize<'de> for Hosts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<String>::deserialize(deserializer)?;
        Allowlist::parse(&entries)
            .map(Hosts)
            .map_err(de::Error::custom)
    }
}

/// A size: bytes, or a number with a unit: `k`/`KB` (1000), `KiB` (1024), `MB`, `MiB`, `GB`,
/// `GiB`.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let text = value.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_size: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{value:?} is not a size; expected bytes (65536) or a size like 64KiB, 10MiB, 1GB"
            ));
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a size; expected a number before the unit"))?;
    let bytes = number * unit_size as f64;
    if !(0.0..=u64::MAX as f64).contains(&bytes) {
        return Err(format!("{value:?} is out of range"));
    }
    Ok(bytes as u64)
}

/// A count of at least 1 on the command line.
fn parse_count(value: &str) -> Result<usize, String> {
    value
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{value:?} is not a whole number of at least 1"))
}

/// A comma-separated allowlist on the command line.
fn parse_allow_list(value: &str) -> Result<Allowlist, String> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    Allowlist::parse(&entries)
}

/// A socket address such as `127.0.0.1:8080` or `[::1]:8080`.
fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value.trim().parse().map_err(|_| {
        format!("{value:?} is not a socket address; expected IP:PORT like \"127.0.0.1:8080\"")
    })
}

/// A duration of 0 or more: seconds as a decimal (`30`, `0.5`) or a humantime string
/// (`500ms`, `30s`, `2m`, `1h 30m`).
fn parse_duration(value: &str) -> Result<Duration, String> {
    let text = value.trim();
    if let Ok(secs) = text.parse::<f64>() {
        return secs_f64(secs, value);
    }
    humantime::parse_duration(text).map_err(|err| {
        format!(
            "{value:?} is not a duration ({err}); expected seconds (30, 0.5) or a duration like \
             500ms, 30s, 2m"
        )
    })
}

/// [`parse_duration`], but more than 0.
fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    parse_duration(value).and_then(check_positive)
}

fn check_positive(duration: Duration) -> Result<Duration, String> {
    if duration.is_zero() {
        Err("the time limit must be more than 0".to_owned())
    } else {
        Ok(duration)
    }
}

/// `secs` seconds; `written` is how the user wrote it, for the error.
fn secs_f64(secs: f64, written: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{written:?} is not a valid duration (0 or more seconds)"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::CommandFactory;

    /// A fresh empty directory for one test, removed when dropped.
    struct TempDir(PathBuf);

    impl std::ops::Deref for TempDir {
        type Target = Path;

        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn temp_dir(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("berth-config-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes `toml` to `<temp dir>/berth.toml` and loads it with `args` on the command line.
    fn load(name: &str, toml: &str, args: &[&str]) -> Result<Config, ConfigError> {
        let dir = temp_dir(name);
        let file = dir.join("berth.toml");
        std::fs::write(&file, toml).unwrap();
        let mut argv = vec!["berth".to_owned(), "--config".to_owned()];
        argv.push(file.to_str().unwrap().to_owned());
        argv.extend(args.iter().map(|a| (*a).to_owned()));
        Config::load(Cli::try_parse_from(argv).unwrap())
    }

    fn load_err(name: &str, toml: &str) -> String {
        let err = load(name, toml, &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("berth.toml"), "no file in: {message}");
        message
    }

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
    fn cli_parses_every_option_and_reads_the_environment() {
        let cli = Cli::try_parse_from([
            "berth",
            "--config",
            "x.toml",
            "--admin-listen",
            "[::1]:9000",
            "--drain-timeout",
            "0.25",
        ])
        .unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
        assert_eq!(
            cli.admin_listen,
            Some(AdminListen::Addr("[::1]:9000".parse().unwrap()))
        );
        assert_eq!(cli.drain_timeout, Some(Duration::from_millis(250)));
        assert!(!cli.no_watch);

        assert!(Cli::try_parse_from(["berth", "--listen", "nope"]).is_err());
        assert!(Cli::try_parse_from(["berth", "--request-timeout", "0"]).is_err());
        assert!(Cli::try_parse_from(["berth", "--drain-timeout", "soon"]).is_err());

        // Setting variables would race with other tests; check each option's variable instead.
        let command = Cli::command();
        let env = |id: &str| {
            let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap();
            arg.get_env().unwrap().to_str().unwrap().to_owned()
        };
        assert_eq!(env("config"), "BERTH_CONFIG");
        assert_eq!(env("apps_dir"), "BERTH_APPS_DIR");
        assert_eq!(env("listen"), "BERTH_LISTEN");
        assert_eq!(env("admin_listen"), "BERTH_ADMIN_LISTEN");
        assert_eq!(env("drain_timeout"), "BERTH_DRAIN_TIMEOUT");
        assert_eq!(env("outbound_timeout"), "BERTH_OUTBOUND_TIMEOUT");
        assert_eq!(env("request_timeout"), "BERTH_REQUEST_TIMEOUT");
        assert_eq!(env("no_watch"), "BERTH_NO_WATCH");
        assert_eq!(env("access_log"), "BERTH_ACCESS_LOG");
        command.debug_assert();
    }

    #[test]
    fn durations_as_numbers_and_strings() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("inf").is_err());
        assert!(parse_positive_duration("0s").is_err());

        let toml = r#"
            drain_timeout = 0
            outbound_timeout = 0.5
            request_timeout = "2m"
            hook_timeout = "1.5"
        "#;
        let config = load("durations", toml, &[]).unwrap();
        assert_eq!(config.drain_timeout, Duration::ZERO);
        assert_eq!(config.outbound_timeout, Duration::from_millis(500));
        assert_eq!(config.request_timeout, Duration::from_secs(120));
        assert_eq!(config.hook_timeout, Duration::from_millis(1500));
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

    #[test]
    fn unknown_top_level_key() {
        let message = load_err("unknown-key", "listen = \"127.0.0.1:80\"\nlisen = \"x\"\n");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("key `lisen`"), "{message}");
        assert!(message.contains("unknown field `lisen`"), "{message}");
    }

    #[test]
    fn unknown_app_key() {
        let message = load_err(
            "unknown-app-key",
            "[apps.hello]\nmount = \"/hi\"\nmont = \"/x\"\n",
        );
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("key `apps.hello.mont`"), "{message}");
    }

    #[test]
    fn wrong_type() {
        let message = load_err("wrong-type", "\n\ndrain_timeout = true\n");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("key `drain_timeout`"), "{message}");
        assert!(
            message.contains("invalid type: boolean `true`"),
            "{message}"
        );
    }

    #[test]
    fn bad_address() {
        let message = load_err("bad-address", "listen = \"nope\"\n");
        assert!(message.contains("line 1"), "{message}");
        assert!(message.contains("key `listen`"), "{message}");
        assert!(message.contains("\"nope\""), "{message}");
    }

    #[test]
    fn bad_mount() {
        let message = load_err("bad-mount", "[apps.hello]\n\nmount = \"hi\"\n");
        assert!(message.contains("line 3"), "{message}");
        assert!(message.contains("key `apps.hello.mount`"), "{message}");
        assert!(message.contains("\"hi\""), "{message}");
        for bad in ["/", "/hi/", "/a//b", "/a?b", "/a#b", "/a b", "/a/../b", ""] {
            assert!(check_mount(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["/hi", "/a/b", "/a-b_c.d", "/%20"] {
            assert_eq!(check_mount(good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn syntax_error_names_the_line_and_key() {
        let message = load_err("syntax", "watch = true\nlisten = \"127.0.0.1:80\n");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("key `listen`"), "{message}");
    }

    #[test]
    fn zero_request_timeout_is_an_error() {
        let message = load_err("zero", "[apps.a]\nrequest_timeout = 0\n");
        assert!(
            message.contains("key `apps.a.request_timeout`"),
            "{message}"
        );
        assert!(message.contains("more than 0"), "{message}");
    }

    #[test]
    fn quoted_app_names_are_quoted_in_keys() {
        let message = load_err("quoted", "[apps.\"my.app\"]\nmount = 1\n");
        assert!(message.contains("key `apps.\"my.app\".mount`"), "{message}");
    }
}
