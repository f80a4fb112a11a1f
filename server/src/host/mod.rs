//! What apps call back into: each capability of the host capability table, implemented on
//! the host's runtime.
//!
//! * [`AppServices`]: what every request of one app version shares, and the capabilities
//!   themselves (log, sleep, fetch);
//! * [`outbound`]: the pooled HTTP client apps fetch through, and each app's rules for it;
//! * [`allowlist`]: the upstreams an app may call;
//! * [`body`]: bodies crossing to an app as streams (request bodies, fetched responses);
//! * `relay`: wakers for futures an app polls with wakers of its own.

pub mod allowlist;
pub mod body;
pub mod outbound;
mod relay;

use std::sync::Arc;
use std::time::Duration;

use berth_app::abi::{
    self, AbiBody, AbiFetchOutcome, AbiResponse, LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN,
};

pub use outbound::{Exchange, FetchFailure, Outbound, OutboundPolicy};
pub(crate) use relay::Relayed;

/// What every request of one app version shares: who the app is and the services it may call.
/// Built once per load, so that a request's own state is one small block.
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

impl AppServices {
    /// Logs `message` at the app's `level` (an ABI `LOG_*` value), tagged with its name.
    pub fn log(&self, level: u32, message: &str) {
        let app = &*self.app;
        match level {
            LOG_ERROR => tracing::error!(target: "berth::app", app, "{message}"),
            LOG_WARN => tracing::warn!(target: "berth::app", app, "{message}"),
            LOG_INFO => tracing::info!(target: "berth::app", app, "{message}"),
            LOG_DEBUG => tracing::debug!(target: "berth::app", app, "{message}"),
            _ => tracing::trace!(target: "berth::app", app, "{message}"),
        }
    }

    /// A timer on the host's runtime, for an app that has no reactor of its own.
    pub fn sleep(&self, duration: Duration) -> impl Future<Output = u32> + Send + 'static {
        let _guard = (!in_task()).then(|| self.runtime.enter());
        let timer = tokio::time::sleep(duration);
        async move {
            timer.await;
            0
        }
    }

    /// Runs an outbound request: in the caller's task when the app polls it on the host's
    /// runtime, as it does unless it runs an executor of its own, else as a host task. Dropping
    /// the returned future cancels the request either way.
    pub fn fetch(
        &self,
        exchange: Exchange<'_>,
    ) -> impl Future<Output = AbiFetchOutcome> + Send + 'static {
        let services = self;
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
                let stream = futures_util::StreamExt::map(body::data_stream(body), move |chunk| {
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
