//! The state behind the `ctx` pointer an app receives with each request or hook.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::host::websocket::Handshake;
use crate::host::{AppServices, SessionSocket};
use crate::plugin::lent::{LentRequest, RequestView};

/// Host state behind the `ctx` pointer an app receives with each request (or hook).
/// Reference-counted across the boundary: the app holds references through
/// [`HostVTable`](berth_app::abi::HostVTable)'s `clone_ctx` and `drop_ctx`.
#[derive(Debug)]
pub struct RequestScope {
    /// The app version's shared services: what the app's calls back into the host reach.
    pub services: Arc<AppServices>,
    /// When the request (or hook) this scope serves must be done: then the host drops the
    /// app's future, and with it every outbound call it made.
    pub deadline: Option<tokio::time::Instant>,
    /// Set when the request body went over its size limit, so that the host answers 413
    /// whatever the app made of the failed stream.
    body_exceeded: AtomicBool,
    /// The request the app reads in place (empty for a hook): lent for as long as the app
    /// holds a reference to this scope (ABI 1.3), so it lives here.
    pub(crate) request: LentRequest,
    /// For the scope a WebSocket session's `start` receives (ABI 1.5): its socket, which host
    /// capabilities the session uses may close.
    pub session: Option<Arc<dyn SessionSocket>>,
    /// For an upgrade request (ABI 1.5): its WebSocket handshake, which the app accepts
    /// through `ws_accept` while its handler runs.
    pub handshake: Option<Box<Handshake>>,
}

impl RequestScope {
    /// A scope for a lifecycle hook of the app behind `services`: it lends no request.
    pub fn new(services: &Arc<AppServices>, deadline: Option<tokio::time::Instant>) -> Arc<Self> {
        Self::with_request(services, deadline, LentRequest::none(), None)
    }

    /// A scope for one request of the app behind `services`, with `view` lent in it.
    pub fn for_request(
        services: &Arc<AppServices>,
        deadline: Option<tokio::time::Instant>,
        view: &RequestView<'_>,
    ) -> Arc<Self> {
        Self::with_request(services, deadline, LentRequest::new(view), None)
    }

    /// A scope for one WebSocket upgrade request of the app behind `services`, with `view`
    /// lent in it and its `handshake` for the app to accept.
    pub fn for_upgrade(
        services: &Arc<AppServices>,
        deadline: Option<tokio::time::Instant>,
        view: &RequestView<'_>,
        handshake: Box<Handshake>,
    ) -> Arc<Self> {
        Self::with_request(services, deadline, LentRequest::new(view), Some(handshake))
    }

    /// A scope for a WebSocket session of the app behind `services`: no deadline, nothing lent,
    /// and the session's socket.
    pub fn for_session(services: &Arc<AppServices>, socket: Arc<dyn SessionSocket>) -> Arc<Self> {
        Arc::new(RequestScope {
            services: Arc::clone(services),
            deadline: None,
            body_exceeded: AtomicBool::new(false),
            request: LentRequest::none(),
            session: Some(socket),
            handshake: None,
        })
    }

    fn with_request(
        services: &Arc<AppServices>,
        deadline: Option<tokio::time::Instant>,
        request: LentRequest,
        handshake: Option<Box<Handshake>>,
    ) -> Arc<Self> {
        Arc::new(RequestScope {
            services: Arc::clone(services),
            deadline,
            body_exceeded: AtomicBool::new(false),
            request,
            session: None,
            handshake,
        })
    }

    /// Whether the request body went over its limit.
    pub fn body_exceeded(&self) -> bool {
        self.body_exceeded.load(Ordering::SeqCst)
    }

    /// Records that the request body went over its limit.
    pub fn set_body_exceeded(&self) {
        self.body_exceeded.store(true, Ordering::SeqCst);
    }
}
