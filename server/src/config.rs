//! Command-line and environment configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Berth: serve HTTP apps compiled as Rust plugins.
///
/// Every shared library in the apps directory that was built with `berth_app::export_app!` is
/// loaded and mounted at `/<app name>`. `GET /` lists the mounted apps.
#[derive(Debug, Clone, Parser)]
#[command(name = "berth", version, about, long_about = None)]
pub struct Config {
    /// Directory to load app libraries (`*.so`) from.
    #[arg(
        long,
        env = "BERTH_APPS_DIR",
        default_value = "apps",
        value_name = "DIR"
    )]
    pub apps_dir: PathBuf,

    /// Address to serve HTTP/1.1 and HTTP/2 (cleartext) on; port 0 picks a free port.
    #[arg(
        long,
        env = "BERTH_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish before the process
    /// exits anyway.
    #[arg(long, env = "BERTH_DRAIN_TIMEOUT", default_value = "30", value_name = "SECS",
          value_parser = parse_secs)]
    pub drain_timeout: Duration,

    /// Default time limit for an app's outbound request, until the response head arrives.
    #[arg(long, env = "BERTH_OUTBOUND_TIMEOUT", default_value = "30", value_name = "SECS",
          value_parser = parse_secs)]
    pub outbound_timeout: Duration,
}

impl Config {
    /// A configuration with every default, serving `apps_dir` on `listen`.
    pub fn new(apps_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Config {
            apps_dir: apps_dir.into(),
            listen,
            drain_timeout: Duration::from_secs(30),
            outbound_timeout: Duration::from_secs(30),
        }
    }
}

/// Seconds as a non-negative decimal, e.g. `30` or `0.5`.
fn parse_secs(value: &str) -> Result<Duration, String> {
    let secs: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .map_err(|_| format!("{value:?} is not a valid duration (0 or more seconds)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fractional_seconds() {
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn defaults_are_sensible() {
        let config = Config::try_parse_from(["berth"]).expect("defaults parse");
        assert_eq!(config.apps_dir, PathBuf::from("apps"));
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.drain_timeout, Duration::from_secs(30));
    }
}
