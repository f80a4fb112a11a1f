//! Berth: an async application server for HTTP apps compiled as Rust plugins.
//!
//! Apps are `cdylib`s built with the `berth-app` crate. Berth loads every one it finds in the
//! apps directory, mounts each at `/<name>`, and serves them over HTTP/1.1 and HTTP/2 on one
//! port, polling their futures on its tokio runtime and lending them its outbound HTTP client
//! and timers.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use berth_server::{Config, Listeners};
//!
//! let config = Config::new("apps", "127.0.0.1:8080".parse()?);
//! let listeners = Listeners::bind(&config)?;
//! berth_server::run(listeners, config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! A request's way through the modules, in order:
//!
//! * [`http`]: the accept loop, one connection (TLS, HTTP/1.1 or HTTP/2, timeouts), routing a
//!   request to its app, and the response that goes back, or the switch to a WebSocket;
//! * [`apps`]: what is mounted: loading files from the apps directory, app versions, the
//!   router, the registry that hot-swaps versions, the file watcher;
//! * [`plugin`]: the one module tree with `unsafe` code: opening libraries, checking their
//!   descriptor, the request lent to an app, calling its handler, and the capability table it
//!   calls back into;
//! * [`host`]: what apps call back into: logging, timers, the outbound HTTP client with its
//!   allowlist, TCP sockets, spawned tasks, the app version's state, the process's pub/sub
//!   broker (in memory or through Redis), and WebSockets, whose protocol the host runs under
//!   the app's whole messages; sockets, tasks and subscriptions end when their version is
//!   retired.
//!
//! Around them:
//!
//! * [`server`]: start-up and shutdown, wiring the others together;
//! * [`workers`]: the process model of `--workers N`: a supervisor that runs no app code and
//!   replaces workers that crash, hang or stall, and the worker side;
//! * [`config`]: the command line, environment and the `berth.toml` config file;
//! * [`tls`]: rustls configurations, for the listener and the outbound client;
//! * [`admin`]: the admin API's listener (health, status, reloads, pub/sub channels, workers),
//!   on a thread of its own;
//! * [`embed`]: load one app and call it without the HTTP server (embedding, benchmarks);
//! * [`logging`]: log output, written by a thread of its own.
//!
//! Modules lower in the first list never import from higher ones: `http` uses `apps`, `plugin`
//! and `host`; `apps` uses `plugin` and `host`; `plugin` uses `host`; `host` uses none of them.

pub mod admin;
pub mod apps;
pub mod config;
pub mod embed;
pub mod host;
pub mod http;
pub mod logging;
pub mod plugin;
pub mod server;
pub mod tls;
pub mod workers;

pub use config::{AppConfig, Cli, Config, ConfigError};
pub use server::{Listeners, ServeError, run};

/// An error and its sources on one line, e.g. "client error (Connect): tcp connect error:
/// Connection refused (os error 111)": the SDK's, which apps use for their clients' errors.
pub use berth_app::error_chain;
