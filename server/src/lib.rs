//! Berth: an async application server for HTTP apps compiled as Rust plugins.
//!
//! Apps are `cdylib`s built with the `berth-app` crate. Berth loads every one it finds in the
//! apps directory, mounts each at `/<name>`, and serves them over HTTP/1.1 and HTTP/2 on one
//! port, polling their futures on its tokio runtime and lending them its outbound HTTP client
//! and timers.
//!
//! ```no_run
//! # async fn example() -> Result<(), berth_server::ServeError> {
//! let config = berth_server::Config::new("apps", "127.0.0.1:8080".parse().unwrap());
//! berth_server::run(config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! * [`config`]: command line, environment and the `berth.toml` config file;
//! * [`plugin`]: loading the apps directory, and the per-request state apps call back into;
//! * `bridge`: the one module with `unsafe` code — opening libraries, checking descriptors,
//!   calling handlers, and the capability table plugins call;
//! * [`router`]: path prefix → app;
//! * [`outbound`]: the pooled HTTP client apps fetch through;
//! * [`server`]: the listener, the accept loop, request dispatch and graceful shutdown;
//! * [`embed`]: embedding and benchmarking — load one app and call it without the HTTP server;
//! * [`logging`]: log output, written by a thread of its own.

pub mod admin;
pub mod allowlist;
mod bridge;
pub mod config;
mod conn;
mod drain;
pub mod embed;
pub mod loader;
pub mod logging;
pub mod outbound;
pub mod plugin;
pub mod registry;
mod relay;
pub mod router;
pub mod server;
pub mod tls;
pub mod watch;

pub use config::{AppConfig, Cli, Config, ConfigError};
pub use server::{ServeError, run};

/// An error and its sources on one line, e.g. "client error (Connect): tcp connect error:
/// Connection refused (os error 111)".
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
