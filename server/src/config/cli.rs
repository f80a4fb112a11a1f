//! The command line: [`Cli`], what the user typed or set as `BERTH_*` variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::Allowlist;
use super::values::{
    AdminListen, parse_addr, parse_allow_list, parse_count, parse_duration,
    parse_positive_duration, parse_pubsub, parse_size,
};
use crate::host::pubsub::Backend;

/// Berth: serve HTTP apps compiled as Rust plugins.
///
/// Every shared library in the apps directory that was built with `berth_app::export_app!` is
/// loaded and mounted at `/<app name>`. `GET /` lists the mounted apps.
///
/// Every option is optional: one that is not given comes from the config file, else from its
/// default, so [`Config::load`](super::Config::load) can tell what the user set.
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

    /// Pub/sub backend for apps' channels: `memory` (this process only) or a Redis URL such as
    /// `redis://127.0.0.1:6379/`, shared by every Berth that uses it [default: memory]
    #[arg(long, env = "BERTH_PUBSUB", value_name = "memory|URL", value_parser = parse_pubsub)]
    pub pubsub: Option<Backend>,

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

    /// Worker processes to serve with, each loading every app: a crash or a hang in an app
    /// then takes down one worker, which is replaced; 0 serves in this one process
    /// [default: 0]
    #[arg(long, env = "BERTH_WORKERS", value_name = "N")]
    pub workers: Option<usize>,

    /// Runtime threads per process [default: 1 per worker with --workers, else one per CPU]
    #[arg(long, env = "BERTH_THREADS", value_name = "N", value_parser = parse_count)]
    pub threads: Option<usize>,

    /// How long past its time limit one call into an app may block its thread before the
    /// worker is killed and replaced (with --workers), or /healthz answers 503 [default: 5s]
    #[arg(long, env = "BERTH_HANG_GRACE", value_name = "DUR",
          value_parser = parse_positive_duration)]
    pub hang_grace: Option<Duration>,

    /// With --workers: each worker listens on the port with a socket of its own
    /// (SO_REUSEPORT), instead of all sharing one: the kernel spreads connections evenly, but a
    /// stuck worker strands the connections queued to it (see the README)
    #[arg(long, env = "BERTH_REUSE_PORT", value_parser = clap::builder::FalseyValueParser::new())]
    pub reuse_port: bool,

    /// With --workers: replace a worker once it has begun this many requests (its replacement
    /// is ready first) [default: off]
    #[arg(long, env = "BERTH_MAX_REQUESTS", value_name = "N", value_parser = parse_count)]
    pub max_requests: Option<usize>,

    /// Up to this many more requests, drawn per worker, so that workers are not all replaced
    /// at once [default: 0]
    #[arg(long, env = "BERTH_MAX_REQUESTS_JITTER", value_name = "N")]
    pub max_requests_jitter: Option<usize>,

    /// With --workers: replace a worker after it has run this long [default: off]
    #[arg(long, env = "BERTH_MAX_LIFETIME", value_name = "DUR",
          value_parser = parse_positive_duration)]
    pub max_lifetime: Option<Duration>,

    /// Up to this much longer, drawn per worker [default: 0]
    #[arg(long, env = "BERTH_MAX_LIFETIME_JITTER", value_name = "DUR",
          value_parser = parse_duration)]
    pub max_lifetime_jitter: Option<Duration>,

    /// With --workers: replace a worker whose resident memory stays above this for 3 samples
    /// a second apart (a leak) [default: off]
    #[arg(long, env = "BERTH_WORKER_MAX_RSS", value_name = "SIZE", value_parser = parse_size)]
    pub worker_max_rss: Option<u64>,

    /// Log one line per request: app, method, path, status, latency (off by default)
    #[arg(long, env = "BERTH_ACCESS_LOG", value_parser = clap::builder::FalseyValueParser::new())]
    pub access_log: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use clap::CommandFactory;

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
        assert_eq!(env("pubsub"), "BERTH_PUBSUB");
        assert_eq!(env("workers"), "BERTH_WORKERS");
        assert_eq!(env("threads"), "BERTH_THREADS");
        assert_eq!(env("hang_grace"), "BERTH_HANG_GRACE");
        assert_eq!(env("max_requests"), "BERTH_MAX_REQUESTS");
        assert_eq!(env("reuse_port"), "BERTH_REUSE_PORT");
        assert_eq!(env("max_requests_jitter"), "BERTH_MAX_REQUESTS_JITTER");
        assert_eq!(env("max_lifetime"), "BERTH_MAX_LIFETIME");
        assert_eq!(env("max_lifetime_jitter"), "BERTH_MAX_LIFETIME_JITTER");
        assert_eq!(env("worker_max_rss"), "BERTH_WORKER_MAX_RSS");
        command.debug_assert();
    }
}
