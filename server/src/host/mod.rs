//! What apps call back into: each capability of the host capability table, implemented on
//! the host's runtime.
//!
//! * [`AppServices`]: what every request of one app version shares, and the capabilities
//!   themselves (log, sleep, fetch, connect, spawn, the version's state);
//! * [`outbound`]: the pooled HTTP client apps fetch through, and each app's rules for it;
//! * [`allowlist`]: the upstreams an app may call and the hosts it may open sockets to;
//! * [`socket`]: apps' TCP sockets, closed by the host when their version is retired;
//! * [`tasks`]: the tasks an app version spawns, cancelled when it is retired;
//! * [`body`]: bodies crossing to an app as streams (request bodies, fetched responses);
//! * [`websocket`]: WebSockets: the handshake an app accepts, and the session task that runs
//!   the protocol (codec, pings, limits, closing) under the app's whole messages;
//! * [`pubsub`]: the process's pub/sub broker (in memory or through Redis), fanning each
//!   channel out to its subscribers through bounded queues;
//! * [`calls`]: the call table, where each thread records the app call it is inside, for the
//!   watchdog of a supervisor or of `/healthz`;
//! * `relay`: wakers for futures an app polls with wakers of its own.

pub mod allowlist;
pub mod body;
pub mod calls;
pub mod outbound;
pub mod pubsub;
mod relay;
pub mod socket;
pub mod tasks;
pub mod websocket;

use std::ffi::c_void;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use std::time::Duration;

use berth_app::ffi::Panicked;

use berth_app::abi::{
    self, AbiBody, AbiFetchOutcome, AbiResponse, LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN,
};

pub use outbound::{Exchange, FetchFailure, Outbound, OutboundPolicy, SocketLimits};
pub use pubsub::{AppPubSub, Broker};
pub(crate) use relay::Relayed;
pub use socket::{ConnectError, ConnectRequest, Socket, Sockets};
pub use tasks::Tasks;

/// What every request of one app version shares: who the app is, the services it may call,
/// and what the version owns beyond any request (its sockets, tasks and state). Built once per
/// load, so that a request's own state is one small block.
///
/// It lives as long as anything of the version holds it: the version itself while mounted,
/// and every host reference (request scope) the plugin holds. Its sockets and tasks do not
/// hold it (see [`socket`] and [`tasks`]). The app's state may (a pool keeps a host handle for
/// its connections), which would keep both alive for ever: so retiring the version
/// ([`AppServices::retire`]) releases the host's reference to the state, and the plugin frees
/// it once its own last reference goes.
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
    /// The version's open sockets.
    pub sockets: Sockets,
    /// The version's spawned tasks.
    pub tasks: Tasks,
    /// The version's open WebSockets.
    pub websockets: websocket::Sessions,
    /// The version's way to the process's pub/sub broker; its subscriptions end when it is
    /// retired.
    pub pubsub: AppPubSub,
    /// The host's reference to the version's state, set once by the app (ABI 1.4), released
    /// when the version is retired (or with these services).
    state: ArcSwapOption<Box<dyn AppState>>,
    /// Whether a state was ever set: a second one is refused even after the first is gone.
    state_set: AtomicBool,
}

/// The WebSocket a session's host handle belongs to, as the host capabilities that session
/// uses see it (ABI 1.5): a subscription that falls behind under the close policy closes it
/// with 1008, so the client learns it missed messages instead of silently losing them.
pub trait SessionSocket: Send + Sync + fmt::Debug {
    /// Starts closing the socket with `code` and `reason` (a no-op once it is closing).
    fn close(&self, code: u16, reason: &str);
}

/// The host's reference to an app version's state: opaque, its references counted by whoever
/// made it, released when dropped (`plugin` implements it over the ABI's `AbiAppState`).
pub trait AppState: Send + Sync + fmt::Debug {
    /// Takes a reference for the plugin, and returns the pointer to hand it.
    fn retained(&self) -> *const c_void;
}

impl AppServices {
    /// The services of one version of `app`, with no socket, task, subscription or state yet.
    pub fn new(
        app: Arc<str>,
        outbound: Outbound,
        policy: OutboundPolicy,
        runtime: tokio::runtime::Handle,
        broker: &Broker,
    ) -> Arc<Self> {
        Arc::new(AppServices {
            app,
            outbound,
            policy,
            runtime,
            sockets: Sockets::default(),
            tasks: Tasks::default(),
            websockets: websocket::Sessions::default(),
            pubsub: AppPubSub::new(broker),
            state: ArcSwapOption::empty(),
            state_set: AtomicBool::new(false),
        })
    }

    /// Retires the version's resources, after its `shutdown` hook has run: cancels every task,
    /// closes every socket and ends every pub/sub subscription it still has, refuses new ones,
    /// and releases the host's reference to its state (requests and tasks that took one keep
    /// theirs). Requests still holding the services keep working otherwise (logging, timers,
    /// fetches, publishing).
    pub fn retire(&self) {
        self.tasks.cancel_all();
        self.sockets.close_all();
        self.pubsub.retire();
        drop(self.state.swap(None));
    }

    /// Keeps `state` as the version's state, unless it has had one already: then `state` is
    /// released at once and `false` returned.
    pub fn set_state(&self, state: Box<dyn AppState>) -> bool {
        if self.state_set.swap(true, Ordering::SeqCst) {
            drop(state);
            return false;
        }
        self.state.store(Some(Arc::new(state)));
        true
    }

    /// The version's state pointer with a reference taken for the caller, or null when it has
    /// none (or no longer: it was retired). The reference is taken while the host's own is
    /// held, so a retirement at the same moment cannot free the state under it.
    pub fn retained_state(&self) -> *const c_void {
        self.state
            .load()
            .as_ref()
            .map_or(std::ptr::null(), |state| state.retained())
    }

    /// Opens a socket for the app (see [`socket::connect`]): checked at once, then connected
    /// in the caller's task when it runs on the host's runtime, else as a host task. Dropping
    /// the returned future abandons the attempt either way.
    pub fn connect(
        &self,
        request: ConnectRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> impl Future<Output = Result<Socket, ConnectError>> + Send + use<> {
        let in_task = in_task();
        let _guard = (!in_task).then(|| self.runtime.enter());
        let connector = socket::Connector {
            app: &self.app,
            policy: &self.policy,
            tls: self.outbound.socket_tls(),
            sockets: &self.sockets,
        };
        let connecting = socket::connect(&connector, request, deadline);
        if in_task {
            futures_util::future::Either::Left(connecting)
        } else {
            let task = AbortOnDrop(self.runtime.spawn(connecting));
            futures_util::future::Either::Right(async move {
                task.await.unwrap_or_else(|join_error| {
                    Err(ConnectError::Other(format!(
                        "connect task failed: {join_error}"
                    )))
                })
            })
        }
    }

    /// Runs `task` as a task of this version (see [`Tasks::spawn`]).
    pub fn spawn<F>(&self, task: F) -> impl Future<Output = u32> + Send + use<F>
    where
        F: Future<Output = Result<u32, Panicked>> + Send + 'static,
    {
        self.tasks.spawn(&self.runtime, &self.app, task)
    }

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
