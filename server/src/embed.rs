//! Embedding and benchmarking: call an app without the HTTP server.
//!
//! [`LoadedApp`] loads one app library the way the server does — the file is read once, checked
//! to be a complete image, opened from a private shadow copy, and its descriptor checked — and
//! calls its handler through the same boundary code (`plugin`'s `Plugin::handle` with a
//! [`RequestScope`], the outcome taken back with the same conversions), with no listener,
//! router or connection in between. It is what the boundary micro-benchmark (`cargo bench -p
//! berth-server --bench boundary`) measures, and a way to drive an app from a test or another
//! program.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use berth_server::embed::LoadedApp;
//!
//! let app = LoadedApp::load("target/release/libhello.so".as_ref())?;
//! app.init().await?; // runs the app's `init` hook, if it has one
//! let uri = "/?name=Ada".parse()?;
//! let (status, _headers, body) = app
//!     .call(&http::Method::GET, &uri, &http::HeaderMap::new(), bytes::Bytes::new())
//!     .await?;
//! assert_eq!((status.as_u16(), &body[..]), (200, &b"Hello, world!\n"[..]));
//! # Ok(()) }
//! ```
//!
//! Calls must run inside a tokio runtime (the app's timers and outbound requests run on it;
//! `enable_all` if the app sleeps or fetches). Unlike the server, nothing here imposes a time
//! limit: wrap a call in `tokio::time::timeout` for one; dropping its future cancels the app's
//! work as a client disconnecting would. The app sees an empty mount prefix and the URI's path
//! as its path, no peer address, and HTTP/1.1.
//!
//! This module has no `unsafe` code: everything that touches the ABI is in `plugin`.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use berth_app::abi::AbiBody;
use berth_app::ffi::{ForeignBody, HandleFailure};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use http::{HeaderMap, Method, StatusCode, Uri};

use crate::apps::LoadError;
use crate::apps::loader::{self, ShadowDir, read_image};
use crate::config::Config;
use crate::host::{AppServices, Broker, Outbound, OutboundPolicy};
use crate::plugin::{Plugin, RequestScope, RequestView, hook_result, outcome_into_parts};

/// One app library, loaded and checked, ready to be called.
///
/// The library stays mapped for the life of the process, like every library the server loads.
#[derive(Debug)]
pub struct LoadedApp {
    plugin: Plugin,
    /// The app's name, shared with every request scope (log lines are tagged with it).
    name: Arc<str>,
    /// `[apps.<name>.settings]`, handed to `init`.
    settings: BTreeMap<String, String>,
    /// What the app may call outbound, and how much at once.
    policy: OutboundPolicy,
    /// The pooled client the app's fetches go through.
    outbound: Outbound,
    /// The app's own in-process pub/sub broker (an embedded app has no Redis backend): with
    /// `config`'s queue, overflow and message limits.
    broker: Broker,
    /// The services every call shares, made on the first call with that call's runtime.
    services: OnceLock<Arc<AppServices>>,
}

/// Why a call to an app produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The call was made outside a tokio runtime.
    #[error("no tokio runtime: call apps from within one (their timers and fetches run on it)")]
    NoRuntime,
    /// The app panicked (in its handler, its hook, or across the boundary).
    #[error("app {app} panicked: {message}")]
    Panicked {
        /// The app's name.
        app: String,
        /// The panic's message, with its location when the plugin caught it.
        message: String,
    },
    /// The app's answer was not a valid response.
    #[error("app {app} returned an invalid response: {message}")]
    Invalid {
        /// The app's name.
        app: String,
        /// What was wrong.
        message: String,
    },
    /// A lifecycle hook reported a failure.
    #[error("app {app} failed: {message}")]
    Failed {
        /// The app's name.
        app: String,
        /// The hook's error.
        message: String,
    },
    /// The response body's stream failed part way.
    #[error("app {app}'s response body failed: {message}")]
    Body {
        /// The app's name.
        app: String,
        /// The stream's error.
        message: String,
    },
}

impl LoadedApp {
    /// Loads the app library at `path` with the default configuration (no outbound upstream
    /// allowed, no settings).
    pub fn load(path: &Path) -> Result<LoadedApp, LoadError> {
        let config = Config::new(".", std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        LoadedApp::load_with(path, &config)
    }

    /// Loads the app library at `path` with `config`'s outbound rules and the app's
    /// `[apps.<name>]` entry (its settings, allowlist and limits; `enabled = false` refuses
    /// it). The `init` hook is not run: call [`LoadedApp::init`].
    pub fn load_with(path: &Path, config: &Config) -> Result<LoadedApp, LoadError> {
        let image = read_image(path)?;
        let shadow = ShadowDir::new()
            .map_err(|e| LoadError::Read(format!("cannot create a shadow directory: {e}")))?;
        // The copy is unlinked once open; the directory is not needed after this load.
        let plugin = shadow.open(path, &image.bytes)?;
        let app_config = config.app(&plugin.name);
        if !app_config.enabled {
            return Err(LoadError::Disabled(plugin.name));
        }
        let tls = crate::tls::client_config(config.outbound.ca_file.as_deref())
            .map_err(|e| LoadError::Read(format!("outbound TLS configuration: {e}")))?;
        let outbound = Outbound::new(
            config.outbound_timeout,
            config.outbound.connect_timeout,
            tls,
        );
        Ok(LoadedApp {
            name: Arc::from(plugin.name.as_str()),
            settings: app_config.settings.clone(),
            policy: crate::apps::outbound_policy(config, &app_config),
            outbound,
            broker: Broker::memory(&config.pubsub),
            services: OnceLock::new(),
            plugin,
        })
    }

    /// The app's name from its descriptor.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The app's version from its descriptor.
    pub fn version(&self) -> &str {
        &self.plugin.version
    }

    /// Runs the app's `init` hook with its settings, if it has one. Call it once, before the
    /// first request, as the server does before mounting an app.
    pub async fn init(&self) -> Result<(), LoadError> {
        let services = self
            .services()
            .map_err(|e| LoadError::Init(e.to_string()))?;
        let scope = RequestScope::new(services, None);
        loader::run_init(&self.plugin, &self.settings, scope, None).await
    }

    /// Runs the app's `shutdown` hook, if it has one, then cancels the tasks the app spawned
    /// and closes its sockets, and releases its state, as the server does when it retires a
    /// version.
    pub async fn shutdown(&self) -> Result<(), CallError> {
        let services = self.services()?;
        let Some(shutdown) = self.plugin.shutdown(RequestScope::new(services, None)) else {
            services.retire();
            return Ok(());
        };
        let outcome = AssertUnwindSafe(shutdown).catch_unwind().await;
        services.retire();
        match outcome {
            Err(_) => Err(self.failure(HandleFailure::Panicked(
                "the plugin's shutdown future panicked".into(),
            ))),
            Ok(outcome) => hook_result(outcome).map_err(|f| self.failure(f)),
        }
    }

    /// Calls the app with one request and reads its whole response: status, headers and body.
    ///
    /// This is the server's dispatch minus routing and HTTP: the request is lent across the
    /// boundary, the plugin's `handle` starts the app's future, that future is polled here,
    /// and the outcome and every body chunk are taken back through the ABI.
    pub async fn call(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), CallError> {
        let view = RequestView {
            method: method.as_str(),
            uri,
            version: http::Version::HTTP_11,
            headers,
            peer_addr: None,
            local_addr: None,
            mount_len: 0,
        };
        let scope = RequestScope::for_request(self.services()?, None, &view);
        let future = self.plugin.handle(scope, AbiBody::full(body));
        // The plugin catches its own panics; this only guards against broken plugin glue.
        let outcome = AssertUnwindSafe(future)
            .catch_unwind()
            .await
            .map_err(|_| self.failure(HandleFailure::Panicked("across the boundary".into())))?;
        let (status, headers, mut body) =
            outcome_into_parts(outcome).map_err(|f| self.failure(f))?;
        let body = read_all(&mut body).await.map_err(|e| CallError::Body {
            app: self.name.to_string(),
            message: e.to_string(),
        })?;
        Ok((status, headers, body))
    }

    /// What the app's scopes share, like the server's (without a deadline). The app's timers
    /// and fetches run on the runtime of the first call.
    fn services(&self) -> Result<&Arc<AppServices>, CallError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| CallError::NoRuntime)?;
        Ok(self.services.get_or_init(|| {
            AppServices::new(
                Arc::clone(&self.name),
                self.outbound.clone(),
                self.policy.clone(),
                runtime,
                &self.broker,
            )
        }))
    }

    fn failure(&self, failure: HandleFailure) -> CallError {
        let app = self.name.to_string();
        match failure {
            HandleFailure::Panicked(message) => CallError::Panicked { app, message },
            HandleFailure::Invalid(message) => CallError::Invalid { app, message },
            HandleFailure::Failed(message) => CallError::Failed { app, message },
        }
    }
}

/// Reads a body to its end; a body of one chunk is returned without copying.
async fn read_all(body: &mut ForeignBody) -> Result<Bytes, berth_app::BodyError> {
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    while let Some(chunk) = std::future::poll_fn(|cx| body.poll_chunk(cx)).await {
        let chunk = chunk?;
        match &first {
            None => first = Some(chunk),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}
