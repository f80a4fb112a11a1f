//! The host capability table ([`HostVTable`]): the functions a plugin calls back into, each
//! with the `ctx` pointer of a [`RequestScope`] it holds.

use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Arc;
use std::time::Duration;

use berth_app::abi::*;
use berth_app::ffi::{ForeignBody, IntoFfi as _, headers_from_abi};

use crate::host::{AppState, ConnectRequest, Exchange};
use crate::plugin::RequestScope;

/// The table every host handle points to.
pub(super) static HOST_VTABLE: HostVTable = HostVTable {
    size: size_of::<HostVTable>(),
    clone_ctx,
    drop_ctx,
    log,
    sleep,
    fetch,
    time_left_ms,
    max_buffered_response,
    connect,
    spawn,
    task_ctx,
    set_app_state,
    app_state,
};

berth_app::ffi_fn! {
    /// The app's limit on a buffered outbound response (0, failing closed, should it panic).
    ///
    /// # Safety
    /// The host contract: `ctx` is a live reference the plugin holds.
    unsafe fn max_buffered_response(ctx: *mut c_void) -> u64 {
        // SAFETY: `ctx` is live for this call (the host contract).
        unsafe { scope(ctx) }.services.policy.max_buffered
    } ?= |_| 0
}

berth_app::ffi_fn! {
    /// Milliseconds left until the request's deadline (none left should it panic).
    ///
    /// # Safety
    /// As for [`max_buffered_response`].
    unsafe fn time_left_ms(ctx: *mut c_void) -> u64 {
        // SAFETY: `ctx` is live for this call (the host contract).
        let scope = unsafe { scope(ctx) };
        scope.deadline.map_or(NO_DEADLINE, |deadline| {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            u64::try_from(left.as_millis()).unwrap_or(NO_DEADLINE - 1)
        })
    } ?= |_| 0
}

/// Borrows the scope behind a `ctx` reference the plugin holds.
///
/// # Safety
/// `ctx` must be a live reference made by `Arc::into_raw` in `host_for` or `clone_ctx`.
unsafe fn scope<'a>(ctx: *mut c_void) -> &'a RequestScope {
    // SAFETY: forwarded to the caller.
    unsafe { &*ctx.cast::<RequestScope>() }
}

berth_app::ffi_fn! {
    /// A new reference to the scope. There is nothing to hand back should it panic: abort.
    ///
    /// # Safety
    /// As for [`max_buffered_response`].
    unsafe fn clone_ctx(ctx: *mut c_void) -> *mut c_void {
        // SAFETY: `ctx` is a live `Arc<RequestScope>` reference (the host contract).
        unsafe { Arc::increment_strong_count(ctx.cast::<RequestScope>()) };
        ctx
    } ?= |_| std::process::abort()
}

berth_app::ffi_fn! {
    /// Releases one reference to the scope; a destructor that panics leaks it instead.
    ///
    /// # Safety
    /// The plugin releases each reference it owns exactly once (the host contract).
    unsafe fn drop_ctx(ctx: *mut c_void) {
        // SAFETY: the caller's promise.
        unsafe { Arc::decrement_strong_count(ctx.cast::<RequestScope>()) }
    } ?= |_| ()
}

berth_app::ffi_fn! {
    /// Logs a line for the app.
    ///
    /// # Safety
    /// As for [`max_buffered_response`]; `message` is borrowed for the call.
    unsafe fn log(ctx: *mut c_void, level: u32, message: AbiStr) {
        // SAFETY: `ctx` is live and `message` borrowed for this call (the host contract).
        let (scope, message) = unsafe { (scope(ctx), message.as_bytes()) };
        scope.services.log(level, &String::from_utf8_lossy(message));
    } ?= |_| ()
}

berth_app::ffi_fn! {
    /// Starts a timer on the host's runtime; one that cannot start is done at once.
    ///
    /// # Safety
    /// As for [`max_buffered_response`].
    unsafe fn sleep(ctx: *mut c_void, nanos: u64) -> FfiFuture<u32> {
        // SAFETY: `ctx` is live for this call (the host contract).
        let scope = unsafe { scope(ctx) };
        scope.services.sleep(Duration::from_nanos(nanos)).into_ffi()
    } ?= |_| std::future::ready(0).into_ffi()
}

berth_app::ffi_fn! {
    /// Starts an outbound request for the app.
    ///
    /// # Safety
    /// As for [`max_buffered_response`]; `req` is borrowed for the call; `body` moves to the
    /// host.
    unsafe fn fetch(
        ctx: *mut c_void,
        req: *const AbiFetchRequest,
        body: AbiBody,
    ) -> FfiFuture<AbiFetchOutcome> {
        // SAFETY: `body` moves to us (the host contract); wrapping it first guarantees its
        // release.
        let body = unsafe { ForeignBody::from_abi(body) };
        // SAFETY: `ctx` is live and `req` borrowed for this call (the host contract).
        let (scope, req) = unsafe { (scope(ctx), &*req) };
        // SAFETY: as above, every field of `req` is borrowed for this call. The method and the
        // URL are checked as they are parsed (`Exchange`).
        let (method, url, headers) = unsafe {
            (
                req.method.as_bytes(),
                req.url.as_bytes(),
                headers_from_abi(req.headers),
            )
        };
        match headers {
            Ok(headers) => {
                let timeout = (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms));
                let exchange = Exchange {
                    method,
                    url,
                    headers,
                    body,
                    timeout,
                };
                scope.services.fetch(exchange).into_ffi()
            }
            Err(e) => {
                std::future::ready(AbiFetchOutcome::failed(FETCH_INVALID_REQUEST, e.0)).into_ffi()
            }
        }
    } ?= |panic| {
        let message = format!("host panicked starting the fetch: {panic}");
        std::future::ready(AbiFetchOutcome::failed(FETCH_OTHER, message)).into_ffi()
    }
}

berth_app::ffi_fn! {
    /// Opens a socket for the app.
    ///
    /// # Safety
    /// As for [`max_buffered_response`]; `req` is borrowed for the call.
    unsafe fn connect(ctx: *mut c_void, req: *const AbiConnectRequest) -> FfiFuture<AbiConnectOutcome> {
        // SAFETY: `ctx` is live and `req` borrowed for this call (the host contract).
        let (scope, req) = unsafe { (scope(ctx), &*req) };
        // SAFETY: as above, the strings of `req` are borrowed for this call; they are copied.
        let (host, server_name) = unsafe {
            (req.host.to_str("the host name"), req.server_name.to_str("the TLS server name"))
        };
        let (host, server_name) = match (host, server_name) {
            (Ok(host), Ok(name)) => (host.to_owned(), (!name.is_empty()).then(|| name.to_owned())),
            (Err(e), _) | (_, Err(e)) => {
                return std::future::ready(AbiConnectOutcome::failed(CONNECT_INVALID, e.0))
                    .into_ffi();
            }
        };
        let tls = match req.tls {
            CONNECT_PLAIN => false,
            CONNECT_TLS => true,
            other => {
                let message = format!("unknown TLS mode {other} (CONNECT_PLAIN or CONNECT_TLS)");
                return std::future::ready(AbiConnectOutcome::failed(CONNECT_INVALID, message))
                    .into_ffi();
            }
        };
        let request = ConnectRequest {
            host,
            port: req.port,
            tls,
            server_name,
            timeout: (req.timeout_ms > 0).then(|| Duration::from_millis(req.timeout_ms)),
        };
        let connecting = scope.services.connect(request, scope.deadline);
        futures_util::FutureExt::map(connecting, super::socket::outcome).into_ffi()
    } ?= |panic| {
        let message = format!("the host panicked opening the socket: {panic}");
        std::future::ready(AbiConnectOutcome::failed(CONNECT_OTHER, message)).into_ffi()
    }
}

berth_app::ffi_fn! {
    /// Runs the app's task as a task of its version.
    ///
    /// # Safety
    /// As for [`max_buffered_response`]; `task` moves to the host.
    unsafe fn spawn(ctx: *mut c_void, task: FfiFuture<u32>) -> FfiFuture<u32> {
        // Owned from here: dropped on every path, the panicking one included.
        let mut task = task;
        // SAFETY: `ctx` is live for this call (the host contract).
        let scope = unsafe { scope(ctx) };
        let task = std::future::poll_fn(move |cx| task.poll_caught(cx));
        scope.services.spawn(task).into_ffi()
    } ?= |_| std::future::ready(TASK_PANICKED).into_ffi()
}

berth_app::ffi_fn! {
    /// A new reference to a scope of the same version, with no deadline and no request.
    /// There is nothing to hand back should it panic: abort.
    ///
    /// # Safety
    /// As for [`max_buffered_response`].
    unsafe fn task_ctx(ctx: *mut c_void) -> *mut c_void {
        // SAFETY: `ctx` is live for this call (the host contract).
        let scope = unsafe { scope(ctx) };
        let task_scope = RequestScope::new(&scope.services, None);
        Arc::into_raw(task_scope).cast_mut().cast()
    } ?= |_| std::process::abort()
}

/// An app version's state as the plugin handed it over: freed through its own `drop` when the
/// version's services go.
#[derive(Debug)]
struct PluginState(AbiAppState);

// SAFETY: the host never reads through the pointer; it hands the pointer back to the plugin,
// on any thread, and frees it once. The ABI makes the state the plugin's to share between
// threads (the SDK requires it to be `Send + Sync`).
unsafe impl Sync for PluginState {}

impl AppState for PluginState {
    fn ptr(&self) -> *const c_void {
        self.0.ptr.cast_const()
    }
}

impl Drop for PluginState {
    fn drop(&mut self) {
        if let Some(free) = self.0.drop {
            // SAFETY: the state is owned by the host (handed over by `set_app_state`) and
            // freed once, here, through the function the plugin gave with it (plugin code,
            // which catches its own panics).
            unsafe { free(self.0.ptr) }
        }
    }
}

berth_app::ffi_fn! {
    /// Keeps the app version's state, or drops it when the version has one.
    ///
    /// # Safety
    /// As for [`max_buffered_response`]; `state` moves to the host.
    unsafe fn set_app_state(ctx: *mut c_void, state: AbiAppState) -> u32 {
        // Owned from here: freed on every path, the panicking one included.
        let state = Box::new(PluginState(state));
        // SAFETY: `ctx` is live for this call (the host contract).
        let scope = unsafe { scope(ctx) };
        if scope.services.set_state(state) {
            STATE_SET
        } else {
            STATE_TAKEN
        }
    } ?= |_| STATE_TAKEN
}

berth_app::ffi_fn! {
    /// The app version's state pointer, or null (also should it panic).
    ///
    /// # Safety
    /// As for [`max_buffered_response`].
    unsafe fn app_state(ctx: *mut c_void) -> *const c_void {
        // SAFETY: `ctx` is live for this call (the host contract).
        unsafe { scope(ctx) }.services.state_ptr()
    } ?= |_| std::ptr::null()
}
