//! A mock host, to unit-test a handler with `cargo test` and no server (feature `testing`).
//!
//! ```
//! use berth_app::testing::MockHost;
//! use berth_app::{Host, Method, Request, Response};
//!
//! async fn app(req: Request, host: Host) -> Response {
//!     let upstream = host.get("http://example.test/").await.expect("mocked");
//!     let body = upstream.text().await.expect("mocked");
//!     Response::text(format!("{} says {body}", req.path()))
//! }
//!
//! let mock = MockHost::new().on_fetch(|req| {
//!     assert_eq!(req.url(), "http://example.test/");
//!     Ok(Response::text("hi"))
//! });
//! let response = mock.call(app, Request::builder(Method::GET, "/x").build().expect("valid request"));
//! assert_eq!(berth_app::testing::block_on(response.into_body().text()).unwrap(), "/x says hi");
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

pub use futures_executor::block_on;

use crate::ffi::host_handle::SharedState;
use crate::headers::Headers;
use crate::host::{
    FetchError, FetchErrorKind, FetchResponse, Host, Level, MockBackend, OutboundRequest,
};
use crate::request::Request;
use crate::response::{IntoResponse, Response};

type FetchFn = dyn Fn(OutboundRequest) -> Result<Response, FetchError> + Send + Sync;

/// A host that answers fetches with a closure, completes sleeps at once (adding them to a
/// virtual clock), records log lines, holds the app's state if given one, and runs spawned
/// tasks on threads of their own. It opens no sockets: [`Host::connect`](crate::Host::connect)
/// fails with `Unsupported`.
pub struct MockHost {
    fetch: Option<Box<FetchFn>>,
    time_left: Option<Duration>,
    logs: Mutex<Vec<(Level, String)>>,
    slept: Mutex<Duration>,
    state: Option<SharedState>,
}

impl MockHost {
    /// A host whose fetches fail with [`FetchErrorKind::Connect`].
    pub fn new() -> Self {
        MockHost {
            fetch: None,
            time_left: None,
            logs: Mutex::new(Vec::new()),
            slept: Mutex::new(Duration::ZERO),
            state: None,
        }
    }

    /// Gives the app's state, as `init` would have: [`Host::state`](crate::Host::state)
    /// returns it. Build it with the app's own `init` (`block_on(init(config, host))`) or by
    /// hand.
    pub fn with_state<S: Any + Send + Sync>(mut self, state: S) -> Self {
        self.state = Some(Arc::new(Box::new(state)));
        self
    }

    /// Answers every fetch with `handler`.
    pub fn on_fetch<F>(mut self, handler: F) -> Self
    where
        F: Fn(OutboundRequest) -> Result<Response, FetchError> + Send + Sync + 'static,
    {
        self.fetch = Some(Box::new(handler));
        self
    }

    /// Reports `time_left` from [`Host::time_left`](crate::Host::time_left) (default: no
    /// deadline).
    pub fn with_time_left(mut self, time_left: Duration) -> Self {
        self.time_left = Some(time_left);
        self
    }

    /// Runs `handler` on `request` to completion with this host.
    pub fn call<H, F, R>(self, handler: H, request: Request) -> Response
    where
        H: FnOnce(Request, Host) -> F,
        F: Future<Output = R>,
        R: IntoResponse,
    {
        Arc::new(self).call_shared(handler, request)
    }

    /// Like [`MockHost::call`], keeping the host to inspect its logs afterwards.
    pub fn call_shared<H, F, R>(self: &Arc<Self>, handler: H, request: Request) -> Response
    where
        H: FnOnce(Request, Host) -> F,
        F: Future<Output = R>,
        R: IntoResponse,
    {
        block_on(handler(request, self.host())).into_response()
    }

    /// A [`Host`] backed by this mock.
    pub fn host(self: &Arc<Self>) -> Host {
        Host::from_mock(Arc::clone(self) as Arc<dyn MockBackend>)
    }

    /// The log lines so far.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The total time handlers slept (virtual: sleeps complete at once).
    pub fn slept(&self) -> Duration {
        *self.slept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MockBackend for MockHost {
    fn log(&self, level: Level, message: &str) {
        let mut logs = self.logs.lock().unwrap_or_else(PoisonError::into_inner);
        logs.push((level, message.to_owned()));
    }

    fn time_left(&self) -> Option<Duration> {
        self.time_left
    }

    fn sleep(&self, duration: Duration) {
        *self.slept.lock().unwrap_or_else(PoisonError::into_inner) += duration;
    }

    fn fetch(&self, request: OutboundRequest) -> Result<FetchResponse, FetchError> {
        let handler = self.fetch.as_ref().ok_or_else(|| {
            FetchError::new(
                FetchErrorKind::Connect,
                "the mock host has no fetch handler",
            )
        })?;
        let (status, headers, body) = handler(request)?.into_parts().map_err(|err| {
            FetchError::new(FetchErrorKind::Other, format!("the mock's response: {err}"))
        })?;
        Ok(FetchResponse::new(status, Headers::from_map(headers), body))
    }

    fn state(&self) -> Option<SharedState> {
        self.state.clone()
    }
}

impl Default for MockHost {
    fn default() -> Self {
        MockHost::new()
    }
}

impl fmt::Debug for MockHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockHost")
            .field("has_fetch", &self.fetch.is_some())
            .field("slept", &self.slept())
            .field("has_state", &self.state.is_some())
            .finish()
    }
}
