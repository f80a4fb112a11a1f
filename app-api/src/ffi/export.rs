//! The plugin's export glue, above the SDK types: the descriptor [`export_app!`] emits, the
//! handler and hook functions it points to, which build a [`Request`] and a [`Host`] from ABI
//! values, and the futures that hand the app's answer back.
//!
//! [`export_app!`]: crate::export_app

use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crate::abi::*;
use crate::body::Body;
use crate::config::AppConfig;
use crate::ffi::addr::socket_addr_from_abi;
use crate::ffi::body::ForeignBody;
use crate::ffi::buf::BoundaryError;
use crate::ffi::future::IntoFfi;
use crate::ffi::host_handle::HostHandle;
use crate::ffi::lent::LentRequest;
use crate::ffi::panic::install_panic_hook;
use crate::ffi::settings::settings_from_abi;
use crate::host::Host;
use crate::request::{Head, Request};
use crate::response::IntoResponse;

/// The boxed future of a lifecycle hook.
pub type HookFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

/// The app type [`export_app!`](crate::export_app) generates. Not public API.
pub trait App {
    /// Whether the author gave an `init` hook.
    const HAS_INIT: bool = false;
    /// Whether the author gave a `shutdown` hook.
    const HAS_SHUTDOWN: bool = false;

    /// Starts the author's handler; `export_app!` implements it with [`serve`].
    fn handle(req: Request, host: Host) -> FfiFuture<AbiHandleOutcome>;

    /// Runs the author's `init` hook.
    fn init(_config: AppConfig, _host: Host) -> HookFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Runs the author's `shutdown` hook.
    fn shutdown(_host: Host) -> HookFuture {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A plugin's descriptor, as a `static` in the plugin. Not public API.
#[derive(Debug)]
pub struct Descriptor(AppDescriptor);

impl Descriptor {
    /// Builds the descriptor of app `A`.
    pub const fn new<A: App>(name: &'static str, version: &'static str) -> Self {
        Descriptor(AppDescriptor {
            header: DescriptorHeader {
                magic: MAGIC,
                abi_major: ABI_MAJOR,
                abi_minor: ABI_MINOR,
                layout_fingerprint: LAYOUT_FINGERPRINT,
                size: std::mem::size_of::<AppDescriptor>() as u64,
            },
            name: AbiStr::from_static(name),
            version: AbiStr::from_static(version),
            sdk_version: AbiStr::from_static(env!("CARGO_PKG_VERSION")),
            handle: handle_glue::<A>,
            init: if A::HAS_INIT {
                Some(init_glue::<A>)
            } else {
                None
            },
            shutdown: if A::HAS_SHUTDOWN {
                Some(shutdown_glue::<A>)
            } else {
                None
            },
        })
    }

    /// The pointer the exported symbol returns.
    pub const fn as_ptr(&'static self) -> *const AppDescriptor {
        &self.0
    }
}

ffi_fn! {
    /// The descriptor's `handle`: builds the [`Request`] and the [`Host`] and starts the
    /// author's handler. A request that cannot be read, or a panic, is a failed outcome.
    ///
    /// # Safety
    /// The ABI contract of `handle`: `req` is borrowed for the call, and what it points to is
    /// lent while a reference to `host`'s context is held (ABI 1.3); `body` and `host` move to
    /// the plugin.
    unsafe fn handle_glue<A: App>(
        req: *const AbiRequest,
        body: AbiBody,
        host: AbiHost,
    ) -> FfiFuture<AbiHandleOutcome> {
        // Take ownership first, so that both are released whatever happens next.
        // SAFETY: `body` and `host` move to us under the ABI contract of `handle`.
        let (body, host) = unsafe { (ForeignBody::from_abi(body), HostHandle::from_abi(host)) };
        install_panic_hook();
        // SAFETY: `req` is borrowed for the duration of this call, and what it points to is
        // lent for as long as a clone of `host` is held (ABI 1.3).
        match unsafe { request_from_abi(&*req, body, &host) } {
            Ok(request) => A::handle(request, Host::from_handle(host)),
            Err(err) => {
                let failed = AbiHandleOutcome::failed(OUTCOME_ERROR, format!("bad request: {err}"));
                std::future::ready(failed).into_ffi()
            }
        }
    } ?= |panic| std::future::ready(AbiHandleOutcome::failed(OUTCOME_PANICKED, panic)).into_ffi()
}

/// The future the host polls for one request: the author's `future`, boxed as it is (the
/// `FfiFuture`'s box is the only allocation), its answer handed over in ABI form.
pub fn serve<F>(future: F) -> FfiFuture<AbiHandleOutcome>
where
    F: Future + Send + 'static,
    F::Output: IntoResponse,
{
    FfiFuture::boxed(future, poll_app::<F, Answer>)
}

/// What an app's future (a handler's, [`Answer`], or a hook's, [`HookDone`]) ends as across
/// the boundary.
trait AppOutcome<T> {
    /// The ABI outcome.
    type Abi;
    /// The future's output, converted. Runs under the poll's `catch`.
    fn done(output: T) -> Self::Abi;
    /// A panic in the future or in `done`, with its message.
    fn panicked(message: String) -> Self::Abi;
}

/// A handler's answer.
enum Answer {}

impl<R: IntoResponse> AppOutcome<R> for Answer {
    type Abi = AbiHandleOutcome;
    fn done(answer: R) -> AbiHandleOutcome {
        match IntoResponse::into_response(answer).into_abi() {
            Ok(response) => AbiHandleOutcome::ok(response),
            Err(err) => AbiHandleOutcome::failed(OUTCOME_ERROR, format!("response: {err}")),
        }
    }
    fn panicked(message: String) -> AbiHandleOutcome {
        AbiHandleOutcome::failed(OUTCOME_PANICKED, message)
    }
}

/// A lifecycle hook's result.
enum HookDone {}

impl AppOutcome<Result<(), String>> for HookDone {
    type Abi = AbiHookOutcome;
    fn done(result: Result<(), String>) -> AbiHookOutcome {
        match result {
            Ok(()) => AbiHookOutcome::ok(),
            Err(message) => AbiHookOutcome::failed(OUTCOME_ERROR, message),
        }
    }
    fn panicked(message: String) -> AbiHookOutcome {
        AbiHookOutcome::failed(OUTCOME_PANICKED, message)
    }
}

ffi_fn! {
    /// Polls an app's future boxed by [`FfiFuture::boxed`]. A panic, in the author's future or
    /// in converting its output, ends it with the panic's message. The macro's one `catch`
    /// covers both, and nothing else wraps it: each layer of a combinator moved the output
    /// once more.
    ///
    /// # Safety
    /// The future contract: `fut_ptr` is the box `FfiFuture::boxed` made, until `drop_fn`;
    /// `cx` is valid for the call; not polled again after `Ready`.
    unsafe fn poll_app<F: Future, C: AppOutcome<F::Output>>(
        fut_ptr: *mut c_void,
        cx: *mut FfiContext<'_>,
    ) -> FfiPoll<C::Abi> {
        // SAFETY: the caller's promise; the box pins the future until it is dropped.
        let (future, cx) = unsafe { (Pin::new_unchecked(&mut *fut_ptr.cast::<F>()), &mut *cx) };
        match cx.with_context(|cx| future.poll(cx)) {
            Poll::Ready(output) => FfiPoll::Ready(C::done(output)),
            Poll::Pending => FfiPoll::Pending,
        }
    } ?= |panic| FfiPoll::Ready(C::panicked(panic))
}

ffi_fn! {
    /// The descriptor's `init`: runs the author's `init` hook with the app's settings.
    ///
    /// # Safety
    /// The ABI contract of `init`: `settings` is borrowed for the call; `host` moves to the
    /// plugin.
    unsafe fn init_glue<A: App>(settings: AbiSettings, host: AbiHost) -> FfiFuture<AbiHookOutcome> {
        // SAFETY: `host` moves to us under the ABI contract of `init`.
        let host = unsafe { HostHandle::from_abi(host) };
        install_panic_hook();
        // SAFETY: `settings` is borrowed for the duration of this call.
        match unsafe { settings_from_abi(settings) } {
            Ok(config) => run_hook(A::init(AppConfig::new(config), Host::from_handle(host))),
            Err(err) => {
                std::future::ready(AbiHookOutcome::failed(OUTCOME_ERROR, err.0)).into_ffi()
            }
        }
    } ?= |panic| std::future::ready(AbiHookOutcome::failed(OUTCOME_PANICKED, panic)).into_ffi()
}

ffi_fn! {
    /// The descriptor's `shutdown`: runs the author's `shutdown` hook.
    ///
    /// # Safety
    /// The ABI contract of `shutdown`: `host` moves to the plugin.
    unsafe fn shutdown_glue<A: App>(host: AbiHost) -> FfiFuture<AbiHookOutcome> {
        // SAFETY: `host` moves to us under the ABI contract of `shutdown`.
        let host = unsafe { HostHandle::from_abi(host) };
        install_panic_hook();
        run_hook(A::shutdown(Host::from_handle(host)))
    } ?= |panic| std::future::ready(AbiHookOutcome::failed(OUTCOME_PANICKED, panic)).into_ffi()
}

fn run_hook(future: HookFuture) -> FfiFuture<AbiHookOutcome> {
    FfiFuture::boxed(future, poll_app::<HookFuture, HookDone>)
}

/// Reads a borrowed request into an owned [`Request`].
///
/// # Safety
/// `req` must satisfy the ABI's borrowed contract for the duration of this call.
unsafe fn request_from_abi(
    req: &AbiRequest,
    body: ForeignBody,
    host: &HostHandle,
) -> Result<Request, BoundaryError> {
    // SAFETY: the method is borrowed for the duration of this call (the caller's contract).
    let method = unsafe { req.method.as_bytes() };
    let method =
        http::Method::from_bytes(method).map_err(|_| BoundaryError("invalid method".to_owned()))?;
    let version = match req.version {
        HTTP_09 => http::Version::HTTP_09,
        HTTP_10 => http::Version::HTTP_10,
        HTTP_2 => http::Version::HTTP_2,
        HTTP_3 => http::Version::HTTP_3,
        _ => http::Version::HTTP_11,
    };
    // SAFETY: the host lends what `req` points to while `host`'s clone is held (ABI 1.3).
    let lent = unsafe { LentRequest::new(req, host.clone()) };
    Ok(Request {
        method,
        version,
        peer_addr: socket_addr_from_abi(&req.peer_addr),
        local_addr: socket_addr_from_abi(&req.local_addr),
        head: Head::lent(lent),
        body: Body::from_foreign(body),
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use futures_executor::block_on;
    use futures_util::StreamExt as _;
    use futures_util::stream;
    use http::header::{CONTENT_TYPE, HeaderValue};
    use http::{HeaderMap, StatusCode};

    use super::*;

    use crate::ffi::addr::*;
    use crate::ffi::future::Panicked;
    use crate::ffi::headers::*;
    use crate::ffi::outcome::*;
    use crate::ffi::test_support::*;

    /// The per-request host context of the fake host below.
    #[derive(Default)]
    struct FakeCtx {
        logs: Mutex<Vec<(u32, String)>>,
        fetched: Mutex<Vec<String>>,
        /// The app version's state (the fake keeps one per context).
        state: Mutex<Option<AbiAppState>>,
        /// The WebSocket session the request accepted, until the test starts it.
        session: Mutex<Option<AbiWsSession>>,
        /// What the app published, by channel.
        published: Mutex<Vec<(String, Bytes)>>,
    }

    impl Drop for FakeCtx {
        fn drop(&mut self) {
            if let Some(session) = self.session.get_mut().expect("lock").take() {
                // SAFETY: the host owns an accepted session and releases it once.
                unsafe { (session.drop)(session.state) };
            }
            let state = self.state.get_mut().expect("lock").take();
            if let Some(AbiAppState { ptr, release, .. }) = state {
                // SAFETY: the host contract: the host's reference is released once, when the
                // version is gone.
                unsafe { release(ptr) };
            }
        }
    }

    /// Closes of this module's fake sockets.
    static SOCKET_CLOSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_connect(
        _ctx: *mut c_void,
        req: *const AbiConnectRequest,
    ) -> FfiFuture<AbiConnectOutcome> {
        // SAFETY: `req` is borrowed for this call.
        let host = unsafe { (*req).host.to_str("host") }.expect("UTF-8");
        let outcome = match host {
            "denied.test" => {
                AbiConnectOutcome::failed(CONNECT_DENIED, "denied.test:1 is not allowed".to_owned())
            }
            "full.test" => AbiConnectOutcome::failed(CONNECT_LIMIT, "too many sockets".to_owned()),
            _ => AbiConnectOutcome::ok(fake_socket(None, &SOCKET_CLOSES)),
        };
        std::future::ready(outcome).into_ffi()
    }

    /// Runs the task when its join future is polled; dropping the join future drops it.
    ///
    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_spawn(_ctx: *mut c_void, task: FfiFuture<u32>) -> FfiFuture<u32> {
        task.into_ffi()
    }

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_task_ctx(ctx: *mut c_void) -> *mut c_void {
        // SAFETY: as `fake_clone_ctx`: the fake's task context is the same context.
        unsafe { fake_clone_ctx(ctx) }
    }

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_set_app_state(ctx: *mut c_void, state: AbiAppState) -> u32 {
        let mut kept = ctx_ref(ctx).state.lock().expect("lock");
        if kept.is_some() {
            // SAFETY: the state's reference moved to us; a second one is released at once.
            unsafe { (state.release)(state.ptr) };
            return STATE_TAKEN;
        }
        *kept = Some(state);
        STATE_SET
    }

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_app_state(ctx: *mut c_void) -> *const c_void {
        let kept = ctx_ref(ctx).state.lock().expect("lock");
        kept.as_ref().map_or(std::ptr::null(), |state| {
            // SAFETY: we hold the state's reference; the caller gets one of its own.
            unsafe { (state.retain)(state.ptr) };
            state.ptr.cast_const()
        })
    }

    /// Each `ctx` reference is one `Arc<FakeCtx>` strong count.
    fn ctx_ref<'a>(ctx: *mut c_void) -> &'a FakeCtx {
        // SAFETY: `ctx` came from `Arc::into_raw` and its reference is still held by the caller.
        unsafe { &*ctx.cast::<FakeCtx>() }
    }

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_clone_ctx(ctx: *mut c_void) -> *mut c_void {
        // SAFETY: `ctx` is a live `Arc<FakeCtx>` reference.
        unsafe { Arc::increment_strong_count(ctx.cast::<FakeCtx>()) };
        ctx
    }

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_drop_ctx(ctx: *mut c_void) {
        // SAFETY: the plugin releases each reference it owns once.
        unsafe { Arc::decrement_strong_count(ctx.cast::<FakeCtx>()) };
    }

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_log(ctx: *mut c_void, level: u32, msg: AbiStr) {
        // SAFETY: `msg` is borrowed for this call.
        let msg = unsafe { msg.to_str("log message") }.expect("UTF-8");
        let mut logs = ctx_ref(ctx).logs.lock().expect("lock");
        logs.push((level, msg.to_owned()));
    }

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_sleep(_ctx: *mut c_void, _nanos: u64) -> FfiFuture<u32> {
        std::future::ready(0).into_ffi()
    }

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_fetch(
        ctx: *mut c_void,
        req: *const AbiFetchRequest,
        body: AbiBody,
    ) -> FfiFuture<AbiFetchOutcome> {
        drop(receive(body));
        // SAFETY: `req` is borrowed for this call.
        let url = unsafe { (*req).url.to_str("url") }.expect("UTF-8");
        ctx_ref(ctx)
            .fetched
            .lock()
            .expect("lock")
            .push(url.to_owned());
        let outcome = if url.contains("refused") {
            AbiFetchOutcome::failed(FETCH_CONNECT, format!("{url} refused"))
        } else {
            AbiFetchOutcome::ok(AbiResponse::new(
                StatusCode::OK,
                HeaderMap::new(),
                AbiBody::full(Bytes::from("upstream")),
            ))
        };
        std::future::ready(outcome).into_ffi()
    }

    static FAKE_VTABLE: HostVTable = HostVTable {
        size: std::mem::size_of::<HostVTable>(),
        clone_ctx: fake_clone_ctx,
        drop_ctx: fake_drop_ctx,
        log: fake_log,
        sleep: fake_sleep,
        fetch: fake_fetch,
        time_left_ms: fake_time_left_ms,
        max_buffered_response: fake_max_buffered_response,
        connect: fake_connect,
        spawn: fake_spawn,
        task_ctx: fake_task_ctx,
        set_app_state: fake_set_app_state,
        app_state: fake_app_state,
        ws_accept: fake_ws_accept,
        subscribe: fake_subscribe,
        publish: fake_publish,
    };

    /// Keeps the session for the test to start, as the host keeps it until the upgrade. The
    /// subprotocol `refused` is refused, as the host refuses one it finds invalid.
    ///
    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_ws_accept(
        ctx: *mut c_void,
        accept: *const AbiWsAccept,
        session: AbiWsSession,
    ) -> u32 {
        // SAFETY: `accept` is borrowed for this call.
        let protocol = unsafe { (*accept).protocol.to_str("protocol") }.expect("UTF-8");
        let mut kept = ctx_ref(ctx).session.lock().expect("lock");
        if protocol == "refused" || kept.is_some() {
            // SAFETY: the session moved to this fake host, which releases it once.
            unsafe { (session.drop)(session.state) };
            return if kept.is_some() {
                WS_ACCEPT_TWICE
            } else {
                WS_ACCEPT_INVALID
            };
        }
        *kept = Some(session);
        WS_ACCEPT_OK
    }

    /// Channel `news` delivers `a` and `b` (after 3 dropped), then ends; an empty name is
    /// invalid; any other fails.
    ///
    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_subscribe(
        _ctx: *mut c_void,
        channel: AbiStr,
    ) -> FfiFuture<AbiSubscribeOutcome> {
        // SAFETY: `channel` is borrowed for this call.
        let channel = unsafe { channel.to_str("channel") }.expect("UTF-8");
        let outcome = match channel {
            "news" => AbiSubscribeOutcome::ok(fake_subscription(["a", "b"], 3, "retired").0),
            "" => AbiSubscribeOutcome::failed(SUB_INVALID, "empty channel".to_owned()),
            _ => AbiSubscribeOutcome::failed(SUB_FAILED, "no pub/sub in the fake host".to_owned()),
        };
        std::future::ready(outcome).into_ffi()
    }

    /// Records what was published; two subscribers receive it.
    ///
    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_publish(
        ctx: *mut c_void,
        channel: AbiStr,
        payload: AbiBuf,
    ) -> FfiFuture<AbiPublishOutcome> {
        // SAFETY: the payload moved to this fake host, which releases it once.
        let payload = unsafe { payload.into_bytes() };
        // SAFETY: `channel` is borrowed for this call.
        let channel = unsafe { channel.to_str("channel") }.expect("UTF-8");
        let mut published = ctx_ref(ctx).published.lock().expect("lock");
        published.push((channel.to_owned(), payload));
        std::future::ready(AbiPublishOutcome::ok(2)).into_ffi()
    }

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_max_buffered_response(_ctx: *mut c_void) -> u64 {
        NO_LIMIT
    }

    /// # Safety
    /// The host contract, which the plugin glue under test keeps.
    unsafe extern "C" fn fake_time_left_ms(_ctx: *mut c_void) -> u64 {
        1500
    }

    struct GlueApp;

    impl App for GlueApp {
        fn handle(mut req: crate::Request, host: crate::Host) -> crate::__private::HandleFuture {
            crate::__private::serve(async move {
                match req.path() {
                    "/panic" => panic!("boom in the handler"),
                    "/bad-fetch-header" => {
                        let bad = crate::OutboundRequest::get("http://upstream.test/")
                            .header("x-ok", "1")
                            .header("x-note", "line\nbreak");
                        let err = host.fetch(bad).await.expect_err("refused before sending");
                        return crate::Response::text(format!("{:?}: {err}", err.kind()));
                    }
                    "/bad-response-header" => {
                        return crate::Response::text("never sent")
                            .with_header("bad name", "x")
                            .with_header("x-note", "line\nbreak");
                    }
                    _ => {}
                }
                host.sleep(std::time::Duration::from_millis(1)).await;
                crate::info!(host, "handling {}", req.path());
                let upstream = match host.get("http://upstream.test/").await {
                    Ok(upstream) => upstream.text().await.expect("upstream body"),
                    Err(err) => err.to_string(),
                };
                let refused = host.get("http://refused.test/").await.expect_err("refused");
                let body = req.take_body().text().await.expect("request body");
                let summary = format!(
                    "{} {} prefix={} path={} query={} version={:?} peer={:?} x-a={:?} body={} \
                     upstream={} refused={}",
                    req.method(),
                    req.uri(),
                    req.mount_prefix(),
                    req.path(),
                    req.query(),
                    req.version(),
                    req.peer_addr(),
                    req.headers().get_all("x-a").iter().collect::<Vec<_>>(),
                    body,
                    upstream,
                    refused,
                );
                crate::Response::text(summary).with_status(StatusCode::ACCEPTED)
            })
        }
    }

    static GLUE_DESCRIPTOR: Descriptor = Descriptor::new::<GlueApp>("glue", "1.2.3");

    /// The app state of [`SdkApp`]; `dropped` counts its drops.
    struct Counter {
        start: u32,
        _dropped: Arc<()>,
    }

    /// An app that uses the ABI 1.4 capabilities: state from `init`, sockets, tasks.
    struct SdkApp;

    async fn sdk_init(config: crate::AppConfig, _host: crate::Host) -> Result<Counter, String> {
        let start = config
            .get_or("start", "7")
            .parse()
            .map_err(|_| "bad start")?;
        let dropped = Arc::clone(&DROP_WITNESS);
        Ok(Counter {
            start,
            _dropped: dropped,
        })
    }

    /// Held by every `Counter` made: the tests count its strong references.
    static DROP_WITNESS: std::sync::LazyLock<Arc<()>> = std::sync::LazyLock::new(|| Arc::new(()));

    impl App for SdkApp {
        const HAS_INIT: bool = true;

        fn init(config: crate::AppConfig, host: crate::Host) -> HookFuture {
            crate::__private::init_hook(config, host, sdk_init)
        }

        fn handle(req: crate::Request, host: crate::Host) -> crate::__private::HandleFuture {
            crate::__private::serve(async move { sdk_handler(req, host).await })
        }
    }

    async fn sdk_handler(req: crate::Request, host: crate::Host) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        match req.path() {
            "/state" => {
                let wrong = host.state::<String>().is_some();
                let handle = host.state_handle::<Counter>().expect("state");
                format!("start={} wrong_type={wrong}", handle.start)
            }
            "/socket" => {
                let mut stream = host.connect("db.test", 5432).await.expect("connected");
                stream.write_all(b"ping").await.expect("write");
                let mut buf = [0; 4];
                stream.read_exact(&mut buf).await.expect("read");
                let peer = stream.peer_addr().expect("peer");
                let mut tls = stream.start_tls("").await.expect("tls");
                tls.write_all(b"pong").await.expect("write");
                tls.flush().await.expect("flush");
                let mut echoed = String::new();
                tls.read_to_string(&mut echoed).await.expect("read");
                let reset = tls.write_all(b"fail").await.expect_err("reset");
                tls.shutdown().await.expect("shutdown");
                let denied = host.connect("denied.test", 1).await.expect_err("denied");
                let full = host.connect("full.test", 1).await.expect_err("full");
                format!(
                    "{} {peer} {echoed} | {:?} | {:?}: {denied} | {:?}",
                    String::from_utf8_lossy(&buf),
                    reset.kind(),
                    denied.kind(),
                    full.kind()
                )
            }
            "/spawn" => {
                let start = host.state::<Counter>().map_or(0, |c| c.start);
                let sum = host.spawn_with(move |task| async move {
                    task.sleep(std::time::Duration::from_millis(1)).await;
                    start + 35
                });
                let panicked = host.spawn(async { panic!("boom in a task") });
                let err: crate::JoinError = panicked.await.expect_err("panicked");
                format!(
                    "{} {} {}",
                    sum.await.expect("sum"),
                    err.is_panic(),
                    err.message()
                )
            }
            _ => "?".to_owned(),
        }
    }

    static SDK_DESCRIPTOR: Descriptor = Descriptor::new::<SdkApp>("sdk", "1.4.0");

    /// Runs `SdkApp`'s `init` on `ctx` with `settings`, as the host does.
    fn init_sdk(ctx: &Arc<FakeCtx>, settings: &[(&str, &str)]) -> Result<(), HandleFailure> {
        let map = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let list = crate::ffi::settings::SettingList::new(&map);
        let host = AbiHost {
            vtable: &FAKE_VTABLE,
            ctx: Arc::into_raw(Arc::clone(ctx)).cast_mut().cast(),
        };
        // SAFETY: the descriptor is a static.
        let init = unsafe { &*SDK_DESCRIPTOR.as_ptr() }
            .init
            .expect("an init hook");
        // SAFETY: `settings` outlive the call; `host` moves.
        let outcome = block_on(unsafe { init(list.as_abi(), host) });
        // SAFETY: the outcome is ours.
        unsafe { outcome.into_result() }
    }

    /// Calls `SdkApp`'s handler on `ctx` for `path` and returns its text.
    fn call_sdk(ctx: &Arc<FakeCtx>, path: &str) -> String {
        let req = AbiRequest {
            method: AbiStr::new(b"GET"),
            uri: AbiStr::new(path.as_bytes()),
            version: HTTP_11,
            headers: AbiHeaders {
                ptr: std::ptr::null(),
                len: 0,
            },
            peer_addr: socket_addr_to_abi(None),
            local_addr: socket_addr_to_abi(None),
            mount_prefix: AbiStr::new(b""),
            path: AbiStr::new(path.as_bytes()),
            query: AbiStr::new(b""),
        };
        let host = AbiHost {
            vtable: &FAKE_VTABLE,
            ctx: Arc::into_raw(Arc::clone(ctx)).cast_mut().cast(),
        };
        // SAFETY: the descriptor is a static; `req` outlives the call; the body and `host` move.
        let future = unsafe { ((*SDK_DESCRIPTOR.as_ptr()).handle)(&req, AbiBody::empty(), host) };
        // SAFETY: the outcome is ours.
        let (_, _, body) = unsafe { block_on(future).into_result() }.expect("ok outcome");
        String::from_utf8_lossy(&read_all(body).0.concat()).into_owned()
    }

    #[test]
    fn init_hands_its_state_to_the_host_and_requests_read_it_until_the_version_is_gone() {
        let witness = Arc::clone(&DROP_WITNESS);
        let before = Arc::strong_count(&witness);
        let ctx = Arc::new(FakeCtx::default());
        init_sdk(&ctx, &[("start", "40")]).expect("init ok");
        assert_eq!(Arc::strong_count(&witness), before + 1, "kept by the host");
        assert_eq!(call_sdk(&ctx, "/state"), "start=40 wrong_type=false");
        assert_eq!(call_sdk(&ctx, "/spawn").split(' ').next(), Some("75"));
        assert_eq!(
            init_sdk(&ctx, &[]),
            Err(HandleFailure::Failed(
                "the app version has a state already".to_owned()
            ))
        );
        assert_eq!(
            Arc::strong_count(&witness),
            before + 1,
            "the second one was dropped"
        );
        // A failed init hands nothing over.
        let other = Arc::new(FakeCtx::default());
        let failed = init_sdk(&other, &[("start", "x")]);
        assert_eq!(failed, Err(HandleFailure::Failed("bad start".to_owned())));
        assert!(other.state.lock().expect("lock").is_none());
        drop(ctx);
        assert_eq!(
            Arc::strong_count(&witness),
            before,
            "dropped with the version"
        );
    }

    #[test]
    fn a_host_socket_reads_writes_upgrades_to_tls_and_closes_once() {
        use std::sync::atomic::Ordering;
        let before = SOCKET_CLOSES.load(Ordering::SeqCst);
        let ctx = Arc::new(FakeCtx::default());
        assert_eq!(
            call_sdk(&ctx, "/socket"),
            "ping 192.0.2.9:5432 pong (tls connected-name) | ConnectionReset | \
             PermissionDenied: denied.test:1 is not allowed | QuotaExceeded"
        );
        // The plain socket moved to the host with start_tls; the TLS one was closed here.
        assert_eq!(SOCKET_CLOSES.load(Ordering::SeqCst), before + 1);
        assert_eq!(Arc::strong_count(&ctx), 1);
    }

    #[test]
    fn a_spawned_task_returns_its_output_and_a_panic_is_logged_and_returned() {
        let ctx = Arc::new(FakeCtx::default());
        let text = call_sdk(&ctx, "/spawn");
        assert!(
            text.starts_with("35 true boom in a task (at app-api/src/ffi/export.rs:"),
            "{text}"
        );
        let logs = ctx.logs.lock().expect("lock").clone();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].0, LOG_ERROR);
        assert!(
            logs[0].1.starts_with("task panicked: boom in a task"),
            "{logs:?}"
        );
        assert_eq!(
            Arc::strong_count(&ctx),
            1,
            "every task reference was released"
        );
    }

    /// Calls the descriptor's handler the way the host does and waits for its outcome.
    fn call_glue(method: &str, path: &str, body: AbiBody) -> (AbiHandleOutcome, Arc<FakeCtx>) {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_bytes(b"\xff").expect("opaque"));
        let list = HeaderList::new(&headers);
        let uri = format!("/glue{path}?q=1");
        let req = AbiRequest {
            method: AbiStr::new(method.as_bytes()),
            uri: AbiStr::new(uri.as_bytes()),
            version: HTTP_2,
            headers: list.as_abi(),
            peer_addr: socket_addr_to_abi(Some("192.0.2.1:5000".parse().expect("v4"))),
            local_addr: socket_addr_to_abi(None),
            mount_prefix: AbiStr::new(b"/glue"),
            path: AbiStr::new(path.as_bytes()),
            query: AbiStr::new(b"q=1"),
        };
        let ctx = Arc::new(FakeCtx::default());
        let host = AbiHost {
            vtable: &FAKE_VTABLE,
            ctx: Arc::into_raw(Arc::clone(&ctx)).cast_mut().cast(),
        };
        // SAFETY: the descriptor is a static; `req` outlives the call; `body` and `host` move.
        let descriptor = unsafe { &*GLUE_DESCRIPTOR.as_ptr() };
        // SAFETY: as above.
        let future = unsafe { (descriptor.handle)(&req, body, host) };
        (block_on(future), ctx)
    }

    #[test]
    fn a_fetch_with_a_header_that_could_not_be_set_fails_without_reaching_the_host() {
        let (outcome, ctx) = call_glue("GET", "/bad-fetch-header", AbiBody::empty());
        // SAFETY: the outcome is ours.
        let (_, _, body) = unsafe { outcome.into_result() }.expect("ok outcome");
        let (chunks, _) = read_all(body);
        assert_eq!(
            String::from_utf8_lossy(&chunks.concat()),
            "InvalidRequest: invalid request: invalid value for header x-note"
        );
        assert!(ctx.fetched.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_response_with_a_header_that_could_not_be_set_is_an_invalid_outcome() {
        let (outcome, ctx) = call_glue("GET", "/bad-response-header", AbiBody::empty());
        // SAFETY: the outcome is ours.
        let result = unsafe { outcome.into_result() }.map(|_| ());
        assert_eq!(
            result,
            Err(HandleFailure::Invalid(
                "response: invalid header name".to_owned()
            )),
            "the first error is the one reported"
        );
        assert_eq!(Arc::strong_count(&ctx), 1);
    }

    #[test]
    fn descriptor_header_is_current() {
        // SAFETY: a static.
        let descriptor = unsafe { &*GLUE_DESCRIPTOR.as_ptr() };
        let header = descriptor.header;
        assert_eq!(header.magic, MAGIC);
        assert_eq!((header.abi_major, header.abi_minor), (ABI_MAJOR, ABI_MINOR));
        assert_eq!(header.layout_fingerprint, LAYOUT_FINGERPRINT);
        assert_eq!(header.size, std::mem::size_of::<AppDescriptor>() as u64);
        // SAFETY: static strings.
        unsafe {
            assert_eq!(descriptor.name.to_str("name"), Ok("glue"));
            assert_eq!(descriptor.version.to_str("version"), Ok("1.2.3"));
            assert_eq!(
                descriptor.sdk_version.to_str("sdk"),
                Ok(env!("CARGO_PKG_VERSION"))
            );
        }
    }

    #[test]
    fn handler_glue_round_trips_a_request() {
        let (outcome, ctx) = call_glue("POST", "/x", AbiBody::full(Bytes::from("payload")));
        // SAFETY: the outcome is ours.
        let (status, headers, body) = unsafe { outcome.into_result() }.expect("ok outcome");
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(headers[CONTENT_TYPE], "text/plain; charset=utf-8");
        let (chunks, error) = read_all(body);
        assert_eq!(error, None);
        assert_eq!(
            String::from_utf8_lossy(&chunks.concat()),
            "POST /glue/x?q=1 prefix=/glue path=/x query=q=1 version=HTTP/2.0 \
             peer=Some(192.0.2.1:5000) x-a=[\"1\", \"\\xff\"] body=payload upstream=upstream \
             refused=connect error: http://refused.test/ refused"
        );
        assert_eq!(
            *ctx.logs.lock().expect("lock"),
            [(LOG_INFO, "handling /x".to_owned())]
        );
        assert_eq!(
            *ctx.fetched.lock().expect("lock"),
            ["http://upstream.test/", "http://refused.test/"]
        );
        assert_eq!(
            Arc::strong_count(&ctx),
            1,
            "every host reference was released"
        );
    }

    #[test]
    fn handler_panic_is_an_outcome() {
        let witness = Arc::new(());
        let held = Arc::clone(&witness);
        let body = stream::iter([0]).map(move |_| {
            let _keep = &held;
            Ok(Bytes::new())
        });
        let (outcome, ctx) = call_glue("GET", "/panic", AbiBody::from_stream(Box::pin(body), None));
        assert_eq!(outcome.tag, OUTCOME_PANICKED);
        // SAFETY: the outcome is ours.
        let result = unsafe { outcome.into_result() }.map(|_| ());
        // The glue installed the panic hook, so the message carries the panic's location.
        let Err(HandleFailure::Panicked(message)) = result else {
            panic!("expected a panic outcome, got {result:?}");
        };
        assert!(
            message.starts_with("boom in the handler (at app-api/src/ffi/export.rs:"),
            "{message:?}"
        );
        assert_eq!(Arc::strong_count(&ctx), 1);
        assert_eq!(
            Arc::strong_count(&witness),
            1,
            "the request body was released"
        );
    }

    #[test]
    fn unreadable_request_is_an_error_outcome() {
        let witness = Arc::new(());
        let held = Arc::clone(&witness);
        let body = stream::iter([0]).map(move |_| {
            let _keep = &held;
            Ok(Bytes::new())
        });
        let (outcome, ctx) = call_glue(
            "BAD METHOD",
            "/x",
            AbiBody::from_stream(Box::pin(body), None),
        );
        // SAFETY: the outcome is ours.
        let result = unsafe { outcome.into_result() }.map(|_| ());
        assert_eq!(
            result,
            Err(HandleFailure::Invalid(
                "bad request: invalid method".to_owned()
            ))
        );
        assert_eq!(Arc::strong_count(&ctx), 1);
        assert_eq!(Arc::strong_count(&witness), 1);
    }

    /// An app with WebSocket sessions: an echo, one that panics, one that forwards a
    /// subscription, and handshakes the SDK or the host refuse.
    struct WsApp;

    impl App for WsApp {
        fn handle(req: crate::Request, host: crate::Host) -> crate::__private::HandleFuture {
            crate::__private::serve(ws_handler(req, host))
        }
    }

    /// Counts the sessions of [`WsApp`] dropped unstarted.
    static UNSTARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    /// Counts its drops in [`UNSTARTED`].
    struct Unstarted;

    impl Drop for Unstarted {
        fn drop(&mut self) {
            UNSTARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    async fn ws_handler(req: crate::Request, host: crate::Host) -> crate::Response {
        use crate::Message;
        let Some(upgrade) = req.websocket() else {
            return crate::Response::text("not an upgrade")
                .with_status(StatusCode::UPGRADE_REQUIRED);
        };
        match req.path() {
            "/panic" => upgrade.accept(&host, |_socket, _host| async {
                panic!("boom in a session")
            }),
            "/pubsub" => upgrade.accept(&host, |mut socket, host| async move {
                let mut news = host.subscribe("news").await.expect("subscribed");
                while let Some(message) = news.next().await {
                    socket.send(Message::binary(message)).await.expect("sent");
                }
                let receivers = host.publish("news", "bye").await.expect("published");
                let invalid = host.subscribe("").await.expect_err("invalid");
                let failed = host.subscribe("other").await.expect_err("failed");
                let reason = format!(
                    "{} dropped={} {receivers} {invalid} | {failed}",
                    news.end_reason().unwrap_or("?"),
                    news.dropped()
                );
                socket.close(4000, &reason).await.expect("closed");
                assert_eq!(
                    socket.send(Message::text("late")).await,
                    Err(crate::SendError::Closed)
                );
            }),
            path => {
                let upgrade = match path {
                    "/refused" => upgrade.protocol("refused"),
                    "/not-offered" => upgrade.protocol("nope"),
                    _ => upgrade.protocol("chat"),
                };
                let unstarted = Unstarted;
                upgrade.header("x-session", "1").accept(
                    &host,
                    move |mut socket, _host| async move {
                        std::mem::forget(unstarted);
                        while let Some(message) = socket.recv().await {
                            let close = message.is_close();
                            if socket.send(message).await.is_err() || close {
                                break;
                            }
                        }
                    },
                )
            }
        }
    }

    static WS_DESCRIPTOR: Descriptor = Descriptor::new::<WsApp>("ws", "1.5.0");

    /// Calls [`WsApp`]'s handler with a handshake for `path` and returns its status and text,
    /// and the request's context (which keeps an accepted session).
    fn call_ws(path: &str) -> (StatusCode, String, Arc<FakeCtx>) {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-protocol", "chat, refused, other"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        let list = HeaderList::new(&headers);
        let req = AbiRequest {
            method: AbiStr::new(b"GET"),
            uri: AbiStr::new(path.as_bytes()),
            version: HTTP_11,
            headers: list.as_abi(),
            peer_addr: socket_addr_to_abi(None),
            local_addr: socket_addr_to_abi(None),
            mount_prefix: AbiStr::new(b""),
            path: AbiStr::new(path.as_bytes()),
            query: AbiStr::new(b""),
        };
        let ctx = Arc::new(FakeCtx::default());
        let host = AbiHost {
            vtable: &FAKE_VTABLE,
            ctx: Arc::into_raw(Arc::clone(&ctx)).cast_mut().cast(),
        };
        // SAFETY: the descriptor is a static; `req` outlives the call; the body and `host` move.
        let future = unsafe { ((*WS_DESCRIPTOR.as_ptr()).handle)(&req, AbiBody::empty(), host) };
        // SAFETY: the outcome is ours.
        let (status, _, body) = unsafe { block_on(future).into_result() }.expect("ok outcome");
        let text = String::from_utf8_lossy(&read_all(body).0.concat()).into_owned();
        (status, text, ctx)
    }

    /// Starts the session `ctx` kept, as the host does after the upgrade, on `socket` and a
    /// session context of its own, and polls it to its end.
    fn run_session(ctx: &FakeCtx, socket: AbiWebSocket) -> (Result<u32, Panicked>, Arc<FakeCtx>) {
        let session = ctx.session.lock().expect("lock").take().expect("a session");
        let session_ctx = Arc::new(FakeCtx::default());
        let host = AbiHost {
            vtable: &FAKE_VTABLE,
            ctx: Arc::into_raw(Arc::clone(&session_ctx)).cast_mut().cast(),
        };
        // SAFETY: the session is ours and started once; the socket and `host` move.
        let mut future = unsafe { (session.start)(session.state, socket, host) };
        let result = block_on(std::future::poll_fn(|cx| future.poll_caught(cx)));
        drop(future);
        (result, session_ctx)
    }

    #[test]
    fn an_accepted_session_starts_on_upgrade_echoes_and_releases_everything() {
        let (status, text, ctx) = call_ws("/echo");
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::SWITCHING_PROTOCOLS, "")
        );
        let incoming = [
            (WS_TEXT, 0, "hé"),
            (WS_BINARY, 0, "b"),
            (WS_CLOSE, 1001, "away"),
        ];
        let (socket, fake) = fake_websocket(8, incoming);
        let (result, session_ctx) = run_session(&ctx, socket);
        assert_eq!(result, Ok(crate::ffi::SESSION_DONE));
        let sent: Vec<_> = fake
            .sent()
            .into_iter()
            .map(|(k, c, d)| (k, c, String::from_utf8_lossy(&d).into_owned()))
            .collect();
        assert_eq!(
            sent,
            [
                (WS_TEXT, 0, "hé".to_owned()),
                (WS_BINARY, 0, "b".to_owned()),
                (WS_CLOSE, 1001, "away".to_owned())
            ]
        );
        assert_eq!(fake.releases(), 1);
        assert_eq!(
            (Arc::strong_count(&ctx), Arc::strong_count(&session_ctx)),
            (1, 1)
        );
    }

    #[test]
    fn a_refused_handshake_says_why_and_drops_the_session_unstarted() {
        use std::sync::atomic::Ordering;
        let before = UNSTARTED.load(Ordering::SeqCst);
        let (status, text, ctx) = call_ws("/refused");
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            text,
            "WebSocket handshake refused: the host refused the subprotocol or a header of the \
             app's answer\n"
        );
        assert!(ctx.session.lock().expect("lock").is_none());
        let (status, text, _) = call_ws("/not-offered");
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(text.contains("\"nope\" was not offered"), "{text}");
        assert_eq!(UNSTARTED.load(Ordering::SeqCst), before + 2);
        // A session never started (the client went before the upgrade) is dropped by the host.
        let (_, _, ctx) = call_ws("/echo");
        drop(ctx);
        assert_eq!(UNSTARTED.load(Ordering::SeqCst), before + 3);
    }

    #[test]
    fn a_session_that_panics_is_logged_and_resolves_panicked() {
        let (status, _, ctx) = call_ws("/panic");
        assert_eq!(status, StatusCode::SWITCHING_PROTOCOLS);
        let (socket, fake) = fake_websocket(8, []);
        let (result, session_ctx) = run_session(&ctx, socket);
        assert_eq!(result, Err(Panicked));
        let logs = session_ctx.logs.lock().expect("lock").clone();
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].0, LOG_ERROR);
        assert!(
            logs[0].1.starts_with(
                "websocket session panicked: boom in a session (at app-api/src/ffi/export.rs:"
            ),
            "{logs:?}"
        );
        assert_eq!(fake.releases(), 1);
        assert_eq!(Arc::strong_count(&session_ctx), 1);
    }

    #[test]
    fn a_session_subscribes_publishes_and_sees_the_subscription_end() {
        let (_, _, ctx) = call_ws("/pubsub");
        let (socket, fake) = fake_websocket(8, []);
        let (result, session_ctx) = run_session(&ctx, socket);
        assert_eq!(result, Ok(crate::ffi::SESSION_DONE));
        let sent: Vec<_> = fake
            .sent()
            .into_iter()
            .map(|(k, c, d)| (k, c, String::from_utf8_lossy(&d).into_owned()))
            .collect();
        assert_eq!(
            sent,
            [
                (WS_BINARY, 0, "a".to_owned()),
                (WS_BINARY, 0, "b".to_owned()),
                (
                    WS_CLOSE,
                    4000,
                    "retired dropped=3 2 invalid channel: empty channel | pub/sub failed: no pub/sub in the fake host".to_owned()
                ),
            ]
        );
        let published = session_ctx.published.lock().expect("lock").clone();
        assert_eq!(published, [("news".to_owned(), Bytes::from("bye"))]);
        assert_eq!(fake.releases(), 1);
    }
}
