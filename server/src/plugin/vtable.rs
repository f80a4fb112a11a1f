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
    ws_accept: super::websocket::ws_accept,
    subscribe: super::pubsub::subscribe,
    publish: super::pubsub::publish,
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

/// The host's reference to an app version's state, as the plugin handed it over: released
/// through the plugin's own `release` when dropped.
#[derive(Debug)]
struct PluginState(AbiAppState);

// SAFETY: the host never reads through the pointer; it hands the pointer back to the plugin,
// on any thread, and counts references with the plugin's functions. The ABI makes the state
// the plugin's to share between threads (the SDK requires it to be `Send + Sync`).
unsafe impl Sync for PluginState {}

impl AppState for PluginState {
    fn retained(&self) -> *const c_void {
        // SAFETY: we hold a reference to the state for the call (the caller holds `self`), so
        // the plugin may take another one (the ABI contract of `AbiAppState`).
        unsafe { (self.0.retain)(self.0.ptr) };
        self.0.ptr.cast_const()
    }
}

impl Drop for PluginState {
    fn drop(&mut self) {
        // SAFETY: the host's one reference (handed over by `set_app_state`), released once,
        // here, through the function the plugin gave with it (plugin code, which catches its
        // own panics).
        unsafe { (self.0.release)(self.0.ptr) }
    }
}

berth_app::ffi_fn! {
    /// Keeps the app version's state, or releases it when the version has had one.
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
    /// The app version's state pointer with a reference taken for the caller, or null (also
    /// should it panic).
    ///
    /// # Safety
    /// As for [`max_buffered_response`].
    unsafe fn app_state(ctx: *mut c_void) -> *const c_void {
        // SAFETY: `ctx` is live for this call (the host contract).
        unsafe { scope(ctx) }.services.retained_state()
    } ?= |_| std::ptr::null()
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Poll;

    use berth_app::ffi::ContextExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::*;
    use crate::host::allowlist::Allowlist;
    use crate::host::tasks::until;
    use crate::host::{AppServices, Outbound, OutboundPolicy, SocketLimits};

    fn services(entries: &[&str]) -> Arc<AppServices> {
        let tls = crate::tls::client_config(None).expect("TLS settings");
        let outbound = Outbound::new(Duration::from_secs(5), Duration::from_secs(5), tls);
        let allowlist = Allowlist::parse(entries).expect("valid entries");
        let policy = OutboundPolicy::new(allowlist, 8, 1024, SocketLimits::default());
        let runtime = tokio::runtime::Handle::current();
        let broker = crate::host::Broker::memory(&Default::default());
        AppServices::new(Arc::from("abi-app"), outbound, policy, runtime, &broker)
    }

    /// A `ctx` reference to a hook scope of `services`, as `host_for` hands one over.
    fn ctx_for(services: &Arc<AppServices>) -> *mut c_void {
        Arc::into_raw(RequestScope::new(services, None))
            .cast_mut()
            .cast()
    }

    /// A plugin's state in these tests: counts its drop on `drops`, and may hold a `ctx`
    /// reference as a pool does.
    struct Probe {
        drops: Arc<AtomicUsize>,
        _held: Option<HeldCtx>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    berth_app::ffi_fn! {
        /// # Safety
        /// `ptr` came from `Arc::into_raw` in `probe_state`, and the caller holds a reference.
        unsafe fn retain_probe(ptr: *mut c_void) {
            // SAFETY: the caller's promise.
            unsafe { Arc::increment_strong_count(ptr.cast_const().cast::<Probe>()) }
        } ?= |_| ()
    }

    berth_app::ffi_fn! {
        /// # Safety
        /// As for `retain_probe`; the caller gives up its reference.
        unsafe fn release_probe(ptr: *mut c_void) {
            // SAFETY: the caller's promise.
            unsafe { Arc::decrement_strong_count(ptr.cast_const().cast::<Probe>()) }
        } ?= |_| ()
    }

    /// A state whose drop counts on `drops`, as a plugin would hand it over (one reference).
    fn probe_state(drops: &Arc<AtomicUsize>, held: Option<HeldCtx>) -> AbiAppState {
        let probe = Arc::new(Probe {
            drops: Arc::clone(drops),
            _held: held,
        });
        AbiAppState {
            ptr: Arc::into_raw(probe).cast_mut().cast(),
            retain: retain_probe,
            release: release_probe,
        }
    }

    /// A `ctx` reference held by a plugin future, released when the future is dropped.
    struct HeldCtx(*mut c_void);

    // SAFETY: a `ctx` reference may be used and released from any thread (the host contract).
    unsafe impl Send for HeldCtx {}
    // SAFETY: a shared `&HeldCtx` can do nothing with the reference (only `Drop` uses it).
    unsafe impl Sync for HeldCtx {}

    impl Drop for HeldCtx {
        fn drop(&mut self) {
            // SAFETY: an owned reference, released once.
            unsafe { drop_ctx(self.0) }
        }
    }

    #[test]
    fn the_table_has_the_size_of_this_abi() {
        assert_eq!(HOST_VTABLE.size, size_of::<HostVTable>());
    }

    #[tokio::test]
    async fn app_state_is_kept_once_lent_counted_and_released_at_retirement() {
        let services = services(&[]);
        let drops = Arc::new(AtomicUsize::new(0));
        let ctx = ctx_for(&services);
        let first = probe_state(&drops, None);
        let first_ptr = first.ptr.cast_const();
        // SAFETY: `ctx` is a live reference; the states are handed over.
        let lent = unsafe {
            assert!(app_state(ctx).is_null());
            assert_eq!(set_app_state(ctx, first), STATE_SET);
            assert_eq!(set_app_state(ctx, probe_state(&drops, None)), STATE_TAKEN);
            app_state(ctx)
        };
        assert_eq!(lent, first_ptr);
        // The refused one is released at once.
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // Retiring releases the host's reference; the one lent above keeps the state.
        services.retire();
        // SAFETY: as above.
        assert!(
            unsafe { app_state(ctx) }.is_null(),
            "no state after retirement"
        );
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // SAFETY: the reference `app_state` took for us, released once.
        unsafe { release_probe(lent.cast_mut()) };
        assert_eq!(
            drops.load(Ordering::SeqCst),
            2,
            "freed with its last reference"
        );
        // SAFETY: our reference, released once.
        unsafe { drop_ctx(ctx) };
        drop(services);
        assert_eq!(drops.load(Ordering::SeqCst), 2, "exactly once");
    }

    #[tokio::test]
    async fn a_state_that_holds_a_host_reference_is_freed_at_retirement_and_frees_its_version() {
        let services = services(&[]);
        let weak = Arc::downgrade(&services);
        let drops = Arc::new(AtomicUsize::new(0));
        let ctx = ctx_for(&services);
        // A pool keeps a task reference to open its connections: state -> ctx -> services.
        // SAFETY: `ctx` is a live reference; the new one is the state's.
        let held = HeldCtx(unsafe { task_ctx(ctx) });
        // SAFETY: `ctx` is a live reference; the state is handed over.
        let set = unsafe { set_app_state(ctx, probe_state(&drops, Some(held))) };
        assert_eq!(set, STATE_SET);
        // SAFETY: our reference, released once.
        unsafe { drop_ctx(ctx) };
        drop(services);
        assert!(weak.upgrade().is_some(), "the state keeps its version");
        if let Some(services) = weak.upgrade() {
            services.retire();
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(weak.upgrade().is_none(), "and goes with it");
    }

    #[tokio::test]
    async fn a_task_keeps_its_version_only_until_it_is_retired() {
        let services = services(&[]);
        let drops = Arc::new(AtomicUsize::new(0));
        let ctx = ctx_for(&services);
        // SAFETY: `ctx` is a live reference; the state is handed over.
        assert_eq!(
            unsafe { set_app_state(ctx, probe_state(&drops, None)) },
            STATE_SET
        );
        // SAFETY: as above.
        let task_ctx = HeldCtx(unsafe { task_ctx(ctx) });
        // SAFETY: a live reference, from `task_ctx`.
        assert_eq!(unsafe { time_left_ms(task_ctx.0) }, NO_DEADLINE);
        // A task that holds its host reference and never ends, as an app's background loop.
        let task = FfiFuture::new(async move {
            let _held = task_ctx;
            std::future::pending::<()>().await;
            0
        });
        // SAFETY: as above; the task is handed over.
        let joined = unsafe { spawn(ctx, task) };
        // SAFETY: our reference, released once.
        unsafe { drop_ctx(ctx) };
        let weak = Arc::downgrade(&services);
        assert_eq!(services.tasks.live(), 1);
        drop(services);
        // Only the task's reference keeps the version's services now.
        assert!(weak.upgrade().is_some());
        assert_eq!(drops.load(Ordering::SeqCst), 0);

        // Retiring cancels the task, whose reference goes with its future: so do the services;
        // the state goes at once.
        if let Some(services) = weak.upgrade() {
            services.retire();
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(joined.await, TASK_CANCELLED);
        until(|| weak.upgrade().is_none()).await;
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn spawned_tasks_end_done_or_panicked() {
        let services = services(&[]);
        let ctx = ctx_for(&services);
        // SAFETY: `ctx` is a live reference; the tasks are handed over.
        let (done, panicked) = unsafe {
            (
                spawn(ctx, FfiFuture::new(async { 0 })),
                spawn(
                    ctx,
                    FfiFuture::new(std::future::poll_fn(|_| -> Poll<u32> {
                        panic!("the task's bug")
                    })),
                ),
            )
        };
        assert_eq!(done.await, TASK_DONE);
        assert_eq!(panicked.await, TASK_PANICKED);
        // SAFETY: our reference, released once.
        unsafe { drop_ctx(ctx) };
    }

    /// Polls a socket function until it is ready.
    async fn io(mut call: impl FnMut(*mut FfiContext<'_>) -> AbiIoPoll) -> io::Result<usize> {
        poll_fn(|cx| {
            // SAFETY: the poll result comes from the host's socket table, owned by us.
            cx.with_ffi_context(|fcx| unsafe { call(fcx).into_poll() })
        })
        .await
    }

    fn connect_request(host: &str, port: u16, tls: u32) -> AbiConnectRequest {
        AbiConnectRequest {
            host: AbiStr::new(host.as_bytes()),
            port,
            tls,
            server_name: AbiStr::new(b""),
            timeout_ms: 0,
        }
    }

    #[tokio::test]
    async fn sockets_through_the_abi_until_their_version_is_retired() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let services = services(&["tcp://127.0.0.1:*"]);
        let ctx = ctx_for(&services);

        let request = connect_request("127.0.0.1", addr.port(), CONNECT_PLAIN);
        // SAFETY: `ctx` is live, `request` borrowed for the call; the outcome is ours.
        let socket = unsafe { connect(ctx, &request).await.into_result() }.expect("connected");
        let (mut peer, _) = listener.accept().await.expect("accepted");
        // SAFETY: a socket from the host: its vtable is a static.
        let table = unsafe { &*socket.vtable };
        assert_eq!(table.size, size_of::<AbiSocketVTable>());
        // SAFETY: a live socket.
        let peer_addr = unsafe { (table.peer_addr)(socket.state) };
        assert_eq!(berth_app::ffi::socket_addr_from_abi(&peer_addr), Some(addr));

        let data = b"ping";
        // SAFETY: a live socket; `data` is readable for each call.
        let written = io(|cx| unsafe { (table.poll_write)(socket.state, cx, data.as_ptr(), 4) });
        assert_eq!(written.await.expect("written"), 4);
        // SAFETY: a live socket.
        io(|cx| unsafe { (table.poll_flush)(socket.state, cx) })
            .await
            .expect("flushed");
        let mut got = [0u8; 4];
        peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        peer.write_all(b"pong").await.expect("written");
        let mut buf = [0u8; 16];
        let into = buf.as_mut_ptr();
        // SAFETY: a live socket; `buf` is writable for each call.
        let read = io(|cx| unsafe { (table.poll_read)(socket.state, cx, into, 16) }).await;
        assert_eq!(&buf[..read.expect("read")], b"pong");
        assert_eq!(services.sockets.open(), 1);

        // The version is retired: the host closes the socket under the plugin.
        services.retire();
        assert_eq!(services.sockets.open(), 0);
        assert_eq!(peer.read(&mut got).await.expect("EOF"), 0);
        // SAFETY: still a live socket (the plugin has not dropped it).
        let read = io(|cx| unsafe { (table.poll_read)(socket.state, cx, into, 16) }).await;
        let error = read.expect_err("closed");
        assert_eq!(error.kind(), io::ErrorKind::NotConnected);
        assert!(error.to_string().contains("retired"), "{error}");
        // SAFETY: the plugin drops its socket once.
        unsafe { (table.drop)(socket.state) };

        // SAFETY: our reference, released once.
        unsafe { drop_ctx(ctx) };
    }

    #[tokio::test]
    async fn refused_connects_carry_their_tags() {
        let services = services(&["tcp://127.0.0.1:9"]);
        let ctx = ctx_for(&services);
        for (request, tag) in [
            (
                connect_request("127.0.0.1", 10, CONNECT_PLAIN),
                CONNECT_DENIED,
            ),
            (connect_request("127.0.0.1", 9, 7), CONNECT_INVALID),
            (connect_request("", 9, CONNECT_PLAIN), CONNECT_INVALID),
        ] {
            // SAFETY: `ctx` is live, `request` borrowed for the call; the outcome is ours.
            let result = unsafe { connect(ctx, &request).await.into_result() };
            assert_eq!(result.map(|_| ()).map_err(|(tag, _)| tag), Err(tag));
        }
        // SAFETY: our reference, released once.
        unsafe { drop_ctx(ctx) };
    }
}
