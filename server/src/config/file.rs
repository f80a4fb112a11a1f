//! The `berth.toml` schema as written, every key optional and nothing resolved, and its
//! parsing: an error names the file, and the line and dotted key where they are known.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::values::{
    Addr, AdminListen, CloseCode, Count, Hosts, Mount, OffOrPositiveSecs, OffOrSecs, Origins,
    OverflowPolicy, PositiveSecs, PubSubBackend, Secs, Setting, Size,
};
use super::{AppConfig, ConfigError, WsOverrides};

/// A size as a `usize` (saturating on 32-bit targets).
pub(super) fn size(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// Parses and checks the file's text; `path` is only for the error.
pub(super) fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
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
pub(super) struct FileConfig {
    pub(super) listen: Option<Addr>,
    pub(super) apps_dir: Option<PathBuf>,
    pub(super) admin_listen: Option<AdminListen>,
    pub(super) drain_timeout: Option<Secs>,
    pub(super) outbound_timeout: Option<PositiveSecs>,
    pub(super) request_timeout: Option<PositiveSecs>,
    pub(super) hook_timeout: Option<PositiveSecs>,
    pub(super) watch: Option<bool>,
    pub(super) access_log: Option<bool>,
    pub(super) workers: Option<usize>,
    pub(super) threads: Option<Count>,
    pub(super) hang_grace: Option<PositiveSecs>,
    pub(super) reuse_port: Option<bool>,
    pub(super) max_requests: Option<Count>,
    pub(super) max_requests_jitter: Option<usize>,
    pub(super) max_lifetime: Option<PositiveSecs>,
    pub(super) max_lifetime_jitter: Option<Secs>,
    pub(super) worker_max_rss: Option<Size>,
    // WebSockets: the defaults for every app; each may be set per app too.
    pub(super) ws_max_message: Option<Size>,
    pub(super) ws_max_frame: Option<Size>,
    pub(super) ws_ping_interval: Option<PositiveSecs>,
    pub(super) ws_pong_timeout: Option<PositiveSecs>,
    pub(super) ws_idle_timeout: Option<OffOrPositiveSecs>,
    pub(super) ws_send_queue: Option<Count>,
    pub(super) ws_origins: Option<Origins>,
    pub(super) ws_reload_grace: Option<OffOrSecs>,
    pub(super) ws_shutdown_code: Option<CloseCode>,
    pub(super) pubsub: Option<PubSubBackend>,
    pub(super) pubsub_queue: Option<Count>,
    pub(super) pubsub_overflow: Option<OverflowPolicy>,
    pub(super) pubsub_max_message: Option<Size>,
    #[serde(default)]
    pub(super) apps: BTreeMap<String, FileApp>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) tls_handshake_timeout: Option<PositiveSecs>,
    pub(super) header_read_timeout: Option<PositiveSecs>,
    pub(super) keepalive_timeout: Option<PositiveSecs>,
    pub(super) max_header_size: Option<Size>,
    pub(super) max_body_size: Option<Size>,
    pub(super) max_connections: Option<Count>,
    pub(super) h2_max_concurrent_streams: Option<Count>,
    /// Also accepted as `connect_timeout`, its name in `[apps.<name>]`.
    #[serde(alias = "connect_timeout")]
    pub(super) outbound_connect_timeout: Option<PositiveSecs>,
    pub(super) max_sockets: Option<Count>,
    pub(super) outbound_max_concurrency: Option<Count>,
    pub(super) outbound_max_buffered: Option<Size>,
    pub(super) outbound_ca_file: Option<PathBuf>,
    pub(super) allowed_outbound_hosts: Option<Hosts>,
}

/// An `[apps.<name>]` table as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileApp {
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
    /// Also accepted as `outbound_connect_timeout`, its name at the top level.
    #[serde(alias = "outbound_connect_timeout")]
    connect_timeout: Option<PositiveSecs>,
    max_sockets: Option<Count>,
    // WebSockets: this app's, over the top level's.
    pub(super) ws_max_message: Option<Size>,
    pub(super) ws_max_frame: Option<Size>,
    pub(super) ws_ping_interval: Option<PositiveSecs>,
    pub(super) ws_pong_timeout: Option<PositiveSecs>,
    pub(super) ws_idle_timeout: Option<OffOrPositiveSecs>,
    pub(super) ws_send_queue: Option<Count>,
    pub(super) ws_origins: Option<Origins>,
    pub(super) ws_reload_grace: Option<OffOrSecs>,
    pub(super) ws_shutdown_code: Option<CloseCode>,
}

impl From<FileApp> for AppConfig {
    fn from(app: FileApp) -> Self {
        AppConfig {
            max_body_size: app.max_body_size.map(|s| s.0),
            allowed_outbound_hosts: app.allowed_outbound_hosts.map(|h| h.0),
            outbound_max_concurrency: app.outbound_max_concurrency.map(|n| n.0),
            outbound_max_buffered: app.outbound_max_buffered.map(|s| s.0),
            connect_timeout: app.connect_timeout.map(|d| d.0),
            max_sockets: app.max_sockets.map(|n| n.0),
            mount: app.mount.map(|m| m.0),
            enabled: app.enabled.unwrap_or(true),
            request_timeout: app.request_timeout.map(|d| d.0),
            hook_timeout: app.hook_timeout.map(|d| d.0),
            settings: app.settings.into_iter().map(|(k, v)| (k, v.0)).collect(),
            websocket: WsOverrides {
                max_message: app.ws_max_message.map(|s| size(s.0)),
                max_frame: app.ws_max_frame.map(|s| size(s.0)),
                ping_interval: app.ws_ping_interval.map(|d| d.0),
                pong_timeout: app.ws_pong_timeout.map(|d| d.0),
                idle_timeout: app.ws_idle_timeout.map(|d| d.0),
                send_queue: app.ws_send_queue.map(|n| n.0),
                origins: app.ws_origins.map(|o| o.0),
                reload_grace: app.ws_reload_grace.map(|d| d.0),
                shutdown_code: app.ws_shutdown_code.map(|c| c.0),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::load_err;

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
    fn syntax_error_names_the_line_and_key() {
        let message = load_err("syntax", "watch = true\nlisten = \"127.0.0.1:80\n");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("key `listen`"), "{message}");
    }

    #[test]
    fn quoted_app_names_are_quoted_in_keys() {
        let message = load_err("quoted", "[apps.\"my.app\"]\nmount = 1\n");
        assert!(message.contains("key `apps.\"my.app\".mount`"), "{message}");
    }
}
