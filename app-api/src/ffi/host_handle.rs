//! The plugin side's calls into the host's capability table ([`HostHandle`]).

use std::any::Any;
use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, StatusCode};

use crate::abi::*;
use crate::ffi::body::ForeignBody;
use crate::ffi::headers::HeaderList;
use crate::ffi::pubsub::{HostPublish, HostSubscribe};
use crate::ffi::response::LentHeaders;
use crate::ffi::socket::SocketConnect;

/// The offset just past function `$field` of the host's table: a host whose table is at least
/// that large has the function.
macro_rules! end_of {
    ($field:ident) => {
        std::mem::offset_of!(HostVTable, $field) + std::mem::size_of::<usize>()
    };
}

/// An app version's state as the plugin shares it with the host: a thin pointer (the `Arc`'s)
/// to the boxed value, its references counted by the `Arc`.
pub(crate) type SharedState = Arc<Box<dyn Any + Send + Sync>>;

/// What [`HostHandle::connect`] opens.
#[derive(Debug)]
pub(crate) struct ConnectArgs<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: u16,
    pub(crate) tls: bool,
    pub(crate) server_name: &'a str,
    /// 0: the host's default.
    pub(crate) timeout_ms: u64,
}

/// One reference to the host's per-request context plus its capability table.
#[derive(Debug)]
pub struct HostHandle(AbiHost);

impl HostHandle {
    /// Takes ownership of a received host reference.
    ///
    /// # Safety
    /// `raw` must satisfy the ABI's host contract: a valid vtable and one owned `ctx` reference.
    pub unsafe fn from_abi(raw: AbiHost) -> Self {
        HostHandle(raw)
    }

    fn vtable(&self) -> &HostVTable {
        // SAFETY: the host contract: the vtable is a static in host code.
        unsafe { &*self.0.vtable }
    }

    /// Whether the host's table is large enough to contain a function ending at `end` bytes.
    pub fn has_capability(&self, end: usize) -> bool {
        self.vtable().size >= end
    }

    /// Time left until the request's deadline; `None` without one, or from a host older than
    /// ABI 1.2.
    pub fn time_left(&self) -> Option<std::time::Duration> {
        let end = std::mem::offset_of!(HostVTable, time_left_ms) + std::mem::size_of::<usize>();
        if !self.has_capability(end) {
            return None;
        }
        // SAFETY: the table is large enough to hold `time_left_ms` (checked above); `ctx` is a
        // live reference we own.
        let millis = unsafe { (self.vtable().time_left_ms)(self.0.ctx) };
        (millis != NO_DEADLINE).then(|| std::time::Duration::from_millis(millis))
    }

    /// The largest outbound response body the app may buffer; `None` without a limit, or from
    /// a host older than ABI 1.2.
    pub fn max_buffered_response(&self) -> Option<u64> {
        let end =
            std::mem::offset_of!(HostVTable, max_buffered_response) + std::mem::size_of::<usize>();
        if !self.has_capability(end) {
            return None;
        }
        // SAFETY: the table is large enough to hold the function (checked above); `ctx` is a
        // live reference we own.
        let limit = unsafe { (self.vtable().max_buffered_response)(self.0.ctx) };
        (limit != NO_LIMIT).then_some(limit)
    }

    /// Logs `message` in the host's log at a `LOG_*` level.
    pub fn log(&self, level: u32, message: &str) {
        // SAFETY: `ctx` is a live reference we own; `msg` is borrowed for the call.
        unsafe { (self.vtable().log)(self.0.ctx, level, AbiStr::new(message.as_bytes())) }
    }

    /// Starts a host timer.
    pub fn sleep(&self, nanos: u64) -> FfiFuture<u32> {
        // SAFETY: `ctx` is a live reference we own.
        unsafe { (self.vtable().sleep)(self.0.ctx, nanos) }
    }

    /// Starts an outbound request; `body` moves to the host.
    pub(crate) fn fetch(
        &self,
        method: &str,
        url: &str,
        headers: &HeaderMap,
        body: AbiBody,
        timeout_ms: u64,
    ) -> HostFetch {
        let list = HeaderList::new(headers);
        let req = AbiFetchRequest {
            method: AbiStr::new(method.as_bytes()),
            url: AbiStr::new(url.as_bytes()),
            headers: list.as_abi(),
            timeout_ms,
        };
        // SAFETY: `ctx` is a live reference we own; `req` and everything it points to outlive
        // the call; `body` moves to the host.
        HostFetch(unsafe { (self.vtable().fetch)(self.0.ctx, &req, body) })
    }
}

impl HostHandle {
    /// Opens a socket through the host (ABI 1.4).
    pub(crate) fn connect(&self, args: &ConnectArgs<'_>) -> SocketConnect {
        if !self.has_capability(end_of!(connect)) {
            return SocketConnect::failed(CONNECT_OTHER, "this host has no sockets (ABI < 1.4)");
        }
        let req = AbiConnectRequest {
            host: AbiStr::new(args.host.as_bytes()),
            port: args.port,
            tls: if args.tls { CONNECT_TLS } else { CONNECT_PLAIN },
            server_name: AbiStr::new(args.server_name.as_bytes()),
            timeout_ms: args.timeout_ms,
        };
        // SAFETY: the table holds `connect` (checked above); `ctx` is a live reference we own;
        // `req` and the strings it points to outlive the call.
        SocketConnect::pending(unsafe { (self.vtable().connect)(self.0.ctx, &req) })
    }

    /// Runs `task` on the host (ABI 1.4); the returned join future cancels it when dropped.
    /// `None` (and `task` dropped) from a host without tasks.
    pub(crate) fn spawn(&self, task: FfiFuture<u32>) -> Option<FfiFuture<u32>> {
        if !self.has_capability(end_of!(spawn)) {
            return None;
        }
        // SAFETY: the table holds `spawn` (checked above); `ctx` is a live reference we own;
        // `task` moves to the host.
        Some(unsafe { (self.vtable().spawn)(self.0.ctx, task) })
    }

    /// A reference to the app version's context without the request (ABI 1.4): no deadline,
    /// nothing lent. `None` from an older host.
    pub(crate) fn task_handle(&self) -> Option<HostHandle> {
        if !self.has_capability(end_of!(task_ctx)) {
            return None;
        }
        // SAFETY: the table holds `task_ctx` (checked above); `ctx` is a live reference we
        // own; the new reference is ours, released by the new handle's `Drop`.
        let ctx = unsafe { (self.vtable().task_ctx)(self.0.ctx) };
        Some(HostHandle(AbiHost {
            vtable: self.0.vtable,
            ctx,
        }))
    }

    /// Hands a reference to the app version's state to the host (ABI 1.4), which releases it
    /// (in this plugin's code) when the version is retired.
    pub(crate) fn set_app_state(&self, state: Box<dyn Any + Send + Sync>) -> Result<(), String> {
        if !self.has_capability(end_of!(set_app_state)) {
            return Err("this host cannot keep an app's state (ABI < 1.4)".to_owned());
        }
        let shared: SharedState = Arc::new(state);
        let state = AbiAppState {
            ptr: Arc::into_raw(shared).cast_mut().cast(),
            retain: retain_app_state,
            release: release_app_state,
        };
        // SAFETY: the table holds `set_app_state` (checked above); `ctx` is a live reference we
        // own; the state's one reference moves to the host, which releases it once.
        match unsafe { (self.vtable().set_app_state)(self.0.ctx, state) } {
            STATE_SET => Ok(()),
            STATE_TAKEN => Err("the app version has a state already".to_owned()),
            other => Err(format!("the host answered set_app_state with {other}")),
        }
    }

    /// A reference of our own to the app version's state, if `init` left one and the version
    /// is not retired yet.
    pub(crate) fn app_state(&self) -> Option<SharedState> {
        if !self.has_capability(end_of!(app_state)) {
            return None;
        }
        // SAFETY: the table holds `app_state` (checked above); `ctx` is a live reference we own.
        let ptr = unsafe { (self.vtable().app_state)(self.0.ctx) };
        if ptr.is_null() {
            return None;
        }
        // SAFETY: a non-null state of this app version was made by `set_app_state` above, in
        // this same library (one version is one library), with `Arc::into_raw`; the host took
        // one reference for us (`retain_app_state`), which the returned `Arc` now owns.
        Some(unsafe { Arc::from_raw(ptr.cast::<Box<dyn Any + Send + Sync>>()) })
    }
}

impl HostHandle {
    /// Accepts the WebSocket handshake of the request this handle serves (ABI 1.5), with
    /// `protocol` (empty: none) and extra `headers` for the `101`: a `WS_ACCEPT_*` tag. The
    /// host takes `session` in every case; `None` (and `session` dropped here) from a host
    /// without WebSockets.
    pub(crate) fn ws_accept(
        &self,
        protocol: &str,
        headers: &HeaderMap,
        session: AbiWsSession,
    ) -> Option<u32> {
        if !self.has_capability(end_of!(ws_accept)) {
            crate::ffi::websocket::discard(session);
            return None;
        }
        let list = HeaderList::new(headers);
        let accept = AbiWsAccept {
            protocol: AbiStr::new(protocol.as_bytes()),
            headers: list.as_abi(),
        };
        // SAFETY: the table holds `ws_accept` (checked above); `ctx` is a live reference we
        // own; `accept` and what it points to outlive the call; `session` moves to the host.
        Some(unsafe { (self.vtable().ws_accept)(self.0.ctx, &accept, session) })
    }

    /// Subscribes to `channel` (ABI 1.5).
    pub(crate) fn subscribe(&self, channel: &str) -> HostSubscribe {
        if !self.has_capability(end_of!(subscribe)) {
            return HostSubscribe::failed(SUB_FAILED, "this host has no pub/sub (ABI < 1.5)");
        }
        // SAFETY: the table holds `subscribe` (checked above); `ctx` is a live reference we
        // own; the channel is borrowed for the call.
        let future =
            unsafe { (self.vtable().subscribe)(self.0.ctx, AbiStr::new(channel.as_bytes())) };
        HostSubscribe::pending(future)
    }

    /// Publishes `payload` on `channel` (ABI 1.5).
    pub(crate) fn publish(&self, channel: &str, payload: bytes::Bytes) -> HostPublish {
        if !self.has_capability(end_of!(publish)) {
            return HostPublish::failed(SUB_FAILED, "this host has no pub/sub (ABI < 1.5)");
        }
        let channel = AbiStr::new(channel.as_bytes());
        // SAFETY: the table holds `publish` (checked above); `ctx` is a live reference we own;
        // the channel is borrowed for the call and the payload moves to the host.
        let future =
            unsafe { (self.vtable().publish)(self.0.ctx, channel, AbiBuf::from_bytes(payload)) };
        HostPublish::pending(future)
    }
}

ffi_fn! {
    /// Takes one more reference to an app state that [`HostHandle::set_app_state`] shared.
    /// Counting cannot panic; should it, there is no reference to hand back: abort.
    ///
    /// # Safety
    /// `ptr` is that state, and the caller holds a reference to it for the call.
    unsafe fn retain_app_state(ptr: *mut c_void) {
        // SAFETY: the caller's promise: a live `Arc` made by `Arc::into_raw`.
        unsafe { Arc::increment_strong_count(ptr.cast_const().cast::<Box<dyn Any + Send + Sync>>()) }
    } ?= |_| std::process::abort()
}

ffi_fn! {
    /// Releases one reference to an app state; the last one drops it. A panic in the state's
    /// `Drop` is caught and the rest is leaked.
    ///
    /// # Safety
    /// `ptr` is that state, and the caller gives up one reference it holds.
    unsafe fn release_app_state(ptr: *mut c_void) {
        // SAFETY: the caller's promise.
        unsafe { Arc::decrement_strong_count(ptr.cast_const().cast::<Box<dyn Any + Send + Sync>>()) }
    } ?= |_| ()
}

impl Clone for HostHandle {
    fn clone(&self) -> Self {
        // SAFETY: `ctx` is a live reference; `clone_ctx` returns a new one we then own.
        let ctx = unsafe { (self.vtable().clone_ctx)(self.0.ctx) };
        HostHandle(AbiHost {
            vtable: self.0.vtable,
            ctx,
        })
    }
}

impl Drop for HostHandle {
    fn drop(&mut self) {
        // SAFETY: we own exactly one reference, released here once.
        unsafe { (self.vtable().drop_ctx)(self.0.ctx) }
    }
}

/// What the host answered an outbound request with: the status, the headers (read in place
/// until dropped) and the body; or a `FETCH_*` error tag and its message.
pub(crate) type FetchParts = Result<(StatusCode, LentHeaders, ForeignBody), (u32, String)>;

/// An outbound request in flight on the host ([`HostHandle::fetch`]); dropping it aborts the
/// request there.
pub(crate) struct HostFetch(FfiFuture<AbiFetchOutcome>);

impl HostFetch {
    /// A fetch that the host has answered with `outcome` already.
    #[cfg(test)]
    pub(crate) fn ready(outcome: AbiFetchOutcome) -> Self {
        use crate::ffi::future::IntoFfi as _;
        HostFetch(std::future::ready(outcome).into_ffi())
    }
}

impl Future for HostFetch {
    type Output = FetchParts;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<FetchParts> {
        Pin::new(&mut self.0).poll(cx).map(|outcome| {
            // SAFETY: the outcome was returned by the host's fetch future and is owned by us;
            // its headers stay lent until the `LentHeaders` is dropped.
            unsafe { outcome.into_result_with(|response| response.into_lent_parts()) }
        })
    }
}

impl std::fmt::Debug for HostFetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostFetch")
    }
}

#[cfg(test)]
mod tests {

    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use futures_executor::block_on;
    use http::header::{CONTENT_TYPE, HeaderValue};
    use http::{HeaderMap, StatusCode};

    use super::*;

    use crate::ffi::test_support::*;

    /// Counts the releases of this module's responses.
    static LENT_RELEASES: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn a_fetch_responses_headers_are_read_in_place_and_released_once_when_dropped() {
        let map: &'static HeaderMap = Box::leak(Box::new(HeaderMap::from_iter([
            (CONTENT_TYPE, HeaderValue::from_static("text/plain")),
            (
                http::header::HeaderName::from_static("x-opaque"),
                HeaderValue::from_bytes(b"a\xffb").expect("opaque"),
            ),
        ])));
        let before = LENT_RELEASES.load(Ordering::SeqCst);
        let abi = counted_response(
            &LENT_RELEASES,
            200,
            map,
            AbiBody::full(Bytes::from("upstream")),
        );
        let response = fetch_result(AbiFetchOutcome::ok(abi), None).expect("ok");
        assert_eq!(
            LENT_RELEASES.load(Ordering::SeqCst),
            before,
            "lent until the response is dropped"
        );
        assert_eq!(response.headers(), map);
        assert_eq!(response.headers(), map, "the map is built once");
        let body = response.into_body();
        assert_eq!(LENT_RELEASES.load(Ordering::SeqCst), before + 1);
        assert_eq!(block_on(body.text()).expect("body"), "upstream");
        assert_eq!(LENT_RELEASES.load(Ordering::SeqCst), before + 1);

        // An error outcome releases nothing twice either.
        let abi = counted_response(&LENT_RELEASES, 1000, map, AbiBody::empty());
        let err = fetch_result(AbiFetchOutcome::ok(abi), None).expect_err("invalid status");
        assert_eq!(err.message(), "invalid response: invalid status code 1000");
        assert_eq!(LENT_RELEASES.load(Ordering::SeqCst), before + 2);
    }

    #[test]
    fn fetch_result_maps_tags_to_kinds() {
        use crate::FetchErrorKind as Kind;
        let cases = [
            (FETCH_INVALID_REQUEST, Kind::InvalidRequest),
            (FETCH_CONNECT, Kind::Connect),
            (FETCH_TIMEOUT, Kind::Timeout),
            (FETCH_DENIED, Kind::Denied),
            (FETCH_OTHER, Kind::Other),
            (99, Kind::Other),
        ];
        for (tag, kind) in cases {
            let err = fetch_result(AbiFetchOutcome::failed(tag, format!("tag {tag}")), None)
                .expect_err("failed");
            assert_eq!(
                (err.kind(), err.message()),
                (kind, format!("tag {tag}").as_str())
            );
        }
        let ok = AbiFetchOutcome::ok(AbiResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            AbiBody::full(Bytes::from("upstream")),
        ));
        let response = fetch_result(ok, None).expect("ok");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(block_on(response.text()).expect("body"), "upstream");
    }
}
