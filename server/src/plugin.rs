//! Loading apps from the apps directory, and the per-request state apps call back into.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_app::abi::{
    self, AbiBody, AbiFetchOutcome, AbiResponse, LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN,
};

use crate::outbound::{Exchange, FetchFailure, Outbound};

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

/// Host state behind the `ctx` pointer an app receives with each request: who the app is and the
/// services it may call. Reference-counted across the boundary.
#[derive(Debug)]
pub struct RequestScope {
    /// The app's name, for log lines.
    pub app: Arc<str>,
    /// The outbound HTTP client.
    pub outbound: Outbound,
    /// The host's runtime, so capabilities work even when called off a runtime thread.
    pub runtime: tokio::runtime::Handle,
}

impl RequestScope {
    pub(crate) fn log(&self, level: u32, message: &str) {
        let app = &*self.app;
        match level {
            LOG_ERROR => tracing::error!(target: "berth::app", app, "{message}"),
            LOG_WARN => tracing::warn!(target: "berth::app", app, "{message}"),
            LOG_INFO => tracing::info!(target: "berth::app", app, "{message}"),
            LOG_DEBUG => tracing::debug!(target: "berth::app", app, "{message}"),
            _ => tracing::trace!(target: "berth::app", app, "{message}"),
        }
    }

    pub(crate) fn sleep(&self, duration: Duration) -> impl Future<Output = u32> + Send + 'static {
        let _guard = self.runtime.enter();
        let timer = tokio::time::sleep(duration);
        async move {
            timer.await;
            0
        }
    }

    /// Runs an outbound request as a host task; dropping the returned future aborts the task.
    pub(crate) fn fetch(
        &self,
        exchange: Exchange<'_>,
    ) -> impl Future<Output = AbiFetchOutcome> + Send + 'static {
        let exchange = self.outbound.fetch(exchange);
        let task = AbortOnDrop(self.runtime.spawn(async move {
            match exchange.await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    let body = incoming_to_abi(body);
                    AbiFetchOutcome::ok(AbiResponse::new(parts.status, parts.headers, body))
                }
                Err(failure) => failure.into_outcome(),
            }
        }));
        async move {
            task.await.unwrap_or_else(|join_error| {
                FetchFailure::Other(format!("outbound task failed: {join_error}")).into_outcome()
            })
        }
    }
}

impl FetchFailure {
    fn into_outcome(self) -> AbiFetchOutcome {
        let tag = match &self {
            FetchFailure::InvalidRequest(_) => abi::FETCH_INVALID_REQUEST,
            FetchFailure::Connect(_) => abi::FETCH_CONNECT,
            FetchFailure::Timeout(_) => abi::FETCH_TIMEOUT,
            FetchFailure::Other(_) => abi::FETCH_OTHER,
        };
        AbiFetchOutcome::failed(tag, self.to_string())
    }
}

/// Hands a hyper body to an app as a stream of data chunks (trailers are not passed on). The
/// app pulls each chunk, so hyper reads from the socket only as fast as the app consumes.
pub fn incoming_to_abi(body: hyper::body::Incoming) -> AbiBody {
    use futures_util::TryStreamExt as _;
    use http_body::Body as _;
    let len = body.size_hint().exact();
    let stream = http_body_util::BodyDataStream::new(body)
        .map_err(|e| berth_app::BodyError::new(e.to_string()));
    AbiBody::from_stream(Box::pin(stream), len)
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
