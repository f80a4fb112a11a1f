//! Loading apps from the apps directory, and the per-request state apps call back into.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use berth_app::abi::{
    self, AbiBody, AbiFetchOutcome, AbiResponse, LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN,
};

use crate::bridge::LentRequest;
use crate::outbound::{Exchange, FetchFailure, Outbound};
use crate::relay::Relayed;

/// Why a file in the apps directory was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The dynamic loader refused the file.
    #[error("not a loadable library: {0}")]
    NotALibrary(String),
    /// The library is not a Berth app.
    #[error(
        "no berth_app_descriptor symbol: not a Berth app (apps export it with berth_app::export_app!)"
    )]
    MissingSymbol,
    /// The descriptor does not start with Berth's magic number.
    #[error("bad magic number in descriptor: expected {expected:#018x}, found {found:#018x}")]
    BadMagic {
        /// [`abi::MAGIC`].
        expected: u64,
        /// What the plugin has.
        found: u64,
    },
    /// Built against another major ABI version.
    #[error("ABI major version mismatch: host expects {expected}, plugin has {found}")]
    AbiMajor {
        /// This host's major version.
        expected: u32,
        /// The plugin's.
        found: u32,
    },
    /// Built against a newer minor ABI version than this host knows.
    #[error(
        "plugin needs ABI minor version {found}, this host supports up to {host}: upgrade berth"
    )]
    AbiMinorTooNew {
        /// This host's minor version.
        host: u32,
        /// The plugin's.
        found: u32,
    },
    /// Same version numbers, different layout: built with an incompatible `berth-app`.
    #[error(
        "ABI layout fingerprint mismatch for ABI 1.{minor}: expected {expected:#018x}, found {found:#018x} (rebuild the app against a released berth-app)"
    )]
    Fingerprint {
        /// The plugin's minor version.
        minor: u32,
        /// What this host expects for that minor.
        expected: u64,
        /// What the plugin has.
        found: u64,
    },
    /// The descriptor is malformed.
    #[error("invalid descriptor: {0}")]
    BadDescriptor(String),
    /// The app's name cannot be a path segment.
    #[error("invalid app name {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidName(String),
    /// Another file already provides an app with this name.
    #[error("duplicate app name {name:?}: already loaded from {}", other.display())]
    Duplicate {
        /// The app name.
        name: String,
        /// The file that was loaded first.
        other: PathBuf,
    },
    /// Another app is mounted at the same path.
    #[error("mount {mount} is already used by app {other:?}")]
    MountTaken {
        /// The mount path.
        mount: String,
        /// The app mounted there.
        other: String,
    },
    /// The file could not be read (or copied).
    #[error("cannot read the file: {0}")]
    Read(String),
    /// `enabled = false` in the config file.
    #[error("app {0:?} is disabled in the config file")]
    Disabled(String),
    /// The app's `init` hook failed or panicked.
    #[error("init failed: {0}")]
    Init(String),
    /// The app's `init` hook did not finish in time.
    #[error("init did not finish within {0:?}")]
    InitTimeout(Duration),
}

/// Checks that an app's name can be a path segment.
pub fn check_name(name: &str) -> Result<(), LoadError> {
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(LoadError::InvalidName(name.to_owned()))
    }
}

/// An app's outbound rules: the upstreams it may call, and a cap on its requests in flight.
/// Clones share the cap.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    /// Upstreams the app may call.
    pub allowlist: crate::allowlist::Allowlist,
    /// One permit per outbound request in flight.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// The largest response body the app may read whole into memory.
    pub max_buffered: u64,
}

impl OutboundPolicy {
    /// The policy of an app with `app` settings under `config`.
    pub fn new(config: &crate::config::Config, app: &crate::config::AppConfig) -> Self {
        let allowlist = app
            .allowed_outbound_hosts
            .clone()
            .unwrap_or_else(|| config.outbound.allowed_hosts.clone());
        let cap = app
            .outbound_max_concurrency
            .unwrap_or(config.outbound.max_concurrency);
        OutboundPolicy {
            allowlist,
            permits: Arc::new(tokio::sync::Semaphore::new(cap)),
            max_buffered: app
                .outbound_max_buffered
                .unwrap_or(config.outbound.max_buffered),
        }
    }
}

/// What every request of one app version shares: who the app is and the services it may call.
/// Built once per load, so that a request's own state ([`RequestScope`]) is one small block.
#[derive(Debug)]
pub struct AppServices {
    /// The app's name, for log lines.
    pub app: Arc<str>,
    /// The outbound HTTP client.
    pub outbound: Outbound,
    /// What the app may call, and how much at once.
    pub policy: OutboundPolicy,
    /// The host's runtime, so capabilities work even when called off a runtime thread.
    pub runtime: tokio::runtime::Handle,
}

/// Host state behind the `ctx` pointer an app receives with each request (or hook).
/// Reference-counted across the boundary.
#[derive(Debug)]
pub struct RequestScope {
    /// The app version's shared services.
    pub services: Arc<AppServices>,
    /// When the request (or hook) this scope serves must be done: then the host drops the
    /// app's future, and with it every outbound call it made.
    pub deadline: Option<tokio::time::Instant>,
    /// Set when the request body went over its size limit, so that the host answers 413
    /// whatever the app made of the failed stream. Kept here, in the one allocation every
    /// request makes anyway, rather than in a block of its own.
    pub body_exceeded: AtomicBool,
    /// The request the app reads in place (empty for a hook): lent for as long as the app
    /// holds a reference to this scope (ABI 1.3), so it lives here, in the one allocation
    /// every request makes anyway. Filled by `bridge::request_scope`.
    pub request: LentRequest,
}

impl RequestScope {
    /// A scope for one request (or hook) of the app behind `services`.
    pub fn new(services: &Arc<AppServices>, deadline: Option<tokio::time::Instant>) -> Arc<Self> {
        crate::bridge::new_scope(services, deadline)
    }

    /// Whether the request body went over its limit.
    pub fn body_exceeded(&self) -> bool {
        self.body_exceeded.load(Ordering::SeqCst)
    }

    pub(crate) fn log(&self, level: u32, message: &str) {
        let app = &*self.services.app;
        match level {
            LOG_ERROR => tracing::error!(target: "berth::app", app, "{message}"),
            LOG_WARN => tracing::warn!(target: "berth::app", app, "{message}"),
            LOG_INFO => tracing::info!(target: "berth::app", app, "{message}"),
            LOG_DEBUG => tracing::debug!(target: "berth::app", app, "{message}"),
            _ => tracing::trace!(target: "berth::app", app, "{message}"),
        }
    }

    pub(crate) fn sleep(&self, duration: Duration) -> impl Future<Output = u32> + Send + 'static {
        let _guard = (!in_task()).then(|| self.services.runtime.enter());
        let timer = tokio::time::sleep(duration);
        async move {
            timer.await;
            0
        }
    }

    /// Runs an outbound request: in the caller's task when the app polls it on the host's
    /// runtime, as it does unless it runs an executor of its own, else as a host task. Dropping
    /// the returned future cancels the request either way.
    pub(crate) fn fetch(
        &self,
        exchange: Exchange<'_>,
    ) -> impl Future<Output = AbiFetchOutcome> + Send + 'static {
        let services = &self.services;
        // The exchange's timer is made now, on the host's runtime even when the app calls from
        // a thread of its own.
        let in_task = in_task();
        let _guard = (!in_task).then(|| services.runtime.enter());
        let exchange = services
            .outbound
            .fetch(&services.app, exchange, &services.policy);
        // A combinator, not an async block: that would hold the exchange twice.
        let outcome = futures_util::FutureExt::map(exchange, |exchanged| match exchanged {
            Ok((response, permit)) => {
                let (parts, body) = response.into_parts();
                let len = http_body::Body::size_hint(&body).exact();
                // The permit is released when the app is done with the body.
                let stream = futures_util::StreamExt::map(data_stream(body), move |chunk| {
                    let _held = &permit;
                    chunk
                });
                let body = AbiBody::streaming(Relayed::new(stream), len);
                AbiFetchOutcome::ok(AbiResponse::new(parts.status, parts.headers, body))
            }
            Err(failure) => failure.into_outcome(),
        });
        let run = if in_task {
            futures_util::future::Either::Left(outcome)
        } else {
            let task = AbortOnDrop(services.runtime.spawn(outcome));
            futures_util::future::Either::Right(async move {
                task.await.unwrap_or_else(|join_error| {
                    FetchFailure::Other(format!("outbound task failed: {join_error}"))
                        .into_outcome()
                })
            })
        };
        Relayed::new(run)
    }
}

/// Whether this thread is polling a task of a tokio runtime (the host's: it runs no other), so
/// that timers and tasks can be made without entering the runtime first. Cheaper than
/// `Handle::try_current`, which clones the handle, and than entering the runtime every time.
fn in_task() -> bool {
    tokio::task::try_id().is_some()
}

impl FetchFailure {
    fn into_outcome(self) -> AbiFetchOutcome {
        let tag = match &self {
            FetchFailure::InvalidRequest(_) => abi::FETCH_INVALID_REQUEST,
            FetchFailure::Connect(_) => abi::FETCH_CONNECT,
            FetchFailure::Timeout(_) => abi::FETCH_TIMEOUT,
            FetchFailure::Denied(_) => abi::FETCH_DENIED,
            FetchFailure::Other(_) => abi::FETCH_OTHER,
        };
        AbiFetchOutcome::failed(tag, self.to_string())
    }
}

/// Hands a request body to an app as a stream of data chunks (trailers are not passed on),
/// limited to `limit` bytes. The app pulls each chunk, so hyper reads from the socket only as
/// fast as the app consumes. Past the limit the app's stream fails (nothing more is read from
/// the client) and the scope's `body_exceeded` is set, so that the host answers 413 whatever
/// the app made of the error. A request without a body (most GETs) crosses as the empty body,
/// with nothing allocated.
pub fn limited_incoming_to_abi(
    body: hyper::body::Incoming,
    limit: u64,
    scope: &Arc<RequestScope>,
) -> AbiBody {
    use futures_util::StreamExt as _;
    if http_body::Body::is_end_stream(&body) {
        return AbiBody::empty();
    }
    let scope = Arc::clone(scope);
    let len = http_body::Body::size_hint(&body).exact();
    let mut seen: u64 = 0;
    let stream = data_stream(body).scan(false, move |failed, chunk| {
        if *failed {
            return std::future::ready(None);
        }
        let chunk = chunk.and_then(|chunk| {
            seen += chunk.len() as u64;
            if seen > limit {
                scope.body_exceeded.store(true, Ordering::SeqCst);
                Err(berth_app::BodyError::new(format!(
                    "request body is larger than the limit of {limit} bytes"
                )))
            } else {
                Ok(chunk)
            }
        });
        *failed = chunk.is_err();
        std::future::ready(Some(chunk))
    });
    AbiBody::streaming(Relayed::new(stream), len)
}

fn data_stream(
    body: hyper::body::Incoming,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, berth_app::BodyError>> + Send {
    use futures_util::TryStreamExt as _;
    http_body_util::BodyDataStream::new(body).map_err(|e| berth_app::BodyError::new(e.to_string()))
}

/// A spawned task that is aborted when this handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
