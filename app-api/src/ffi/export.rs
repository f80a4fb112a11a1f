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
use crate::ffi::panic::{catch, install_panic_hook};
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

unsafe extern "C" fn handle_glue<A: App>(
    req: *const AbiRequest,
    body: AbiBody,
    host: AbiHost,
) -> FfiFuture<AbiHandleOutcome> {
    install_panic_hook();
    // Take ownership first, so that both are released whatever happens next.
    // SAFETY: `body` and `host` move to us under the ABI contract of `handle`.
    let (body, host) = unsafe { (ForeignBody::from_abi(body), HostHandle::from_abi(host)) };
    let started = catch(move || {
        // SAFETY: `req` is borrowed for the duration of this call, and what it points to is
        // lent for as long as a clone of `host` is held (ABI 1.3).
        let request = unsafe { request_from_abi(&*req, body, &host) };
        request.map(|request| A::handle(request, Host::from_handle(host)))
    });
    let failed = match started {
        Ok(Ok(future)) => return future,
        Ok(Err(err)) => AbiHandleOutcome::failed(OUTCOME_ERROR, format!("bad request: {err}")),
        Err(panic) => AbiHandleOutcome::failed(OUTCOME_PANICKED, panic),
    };
    std::future::ready(failed).into_ffi()
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
    /// The future's output, converted. Runs under the poll's [`catch`].
    fn done(output: T) -> Self::Abi;
    /// A panic in the future or in `done`, with its message.
    fn panicked(message: String) -> Self::Abi;
}

/// A handler's answer.
enum Answer {}

impl<R: IntoResponse> AppOutcome<R> for Answer {
    type Abi = AbiHandleOutcome;
    fn done(answer: R) -> AbiHandleOutcome {
        AbiHandleOutcome::ok(IntoResponse::into_response(answer).into_abi())
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

/// Polls an app's future boxed by [`FfiFuture::boxed`]. A panic, in the author's future or in
/// converting its output, ends it with the panic's message. One [`catch`] covers both, and
/// nothing else wraps it: each layer of a combinator (and `poll_boxed`'s own `catch_unwind`)
/// moved the output once more.
unsafe extern "C" fn poll_app<F, C>(
    fut_ptr: *mut c_void,
    cx: *mut FfiContext<'_>,
) -> FfiPoll<C::Abi>
where
    F: Future,
    C: AppOutcome<F::Output>,
{
    let polled = catch(|| {
        // SAFETY: `fut_ptr` is the box `FfiFuture::boxed` made, pinned there until
        // `drop_boxed`; `cx` is valid for this call (the poll contract).
        let (future, cx) = unsafe { (Pin::new_unchecked(&mut *fut_ptr.cast::<F>()), &mut *cx) };
        cx.with_context(|cx| future.poll(cx)).map(C::done)
    });
    match polled {
        Ok(Poll::Ready(outcome)) => FfiPoll::Ready(outcome),
        Ok(Poll::Pending) => FfiPoll::Pending,
        Err(panic) => FfiPoll::Ready(C::panicked(panic)),
    }
}

unsafe extern "C" fn init_glue<A: App>(
    settings: AbiSettings,
    host: AbiHost,
) -> FfiFuture<AbiHookOutcome> {
    install_panic_hook();
    // SAFETY: `host` moves to us under the ABI contract of `init`.
    let host = unsafe { HostHandle::from_abi(host) };
    let started = catch(move || {
        // SAFETY: `settings` is borrowed for the duration of this call.
        let config = unsafe { settings_from_abi(settings) };
        config.map(|config| A::init(AppConfig::new(config), Host::from_handle(host)))
    });
    match started {
        Ok(Ok(future)) => run_hook(future),
        Ok(Err(err)) => std::future::ready(AbiHookOutcome::failed(OUTCOME_ERROR, err.0)).into_ffi(),
        Err(panic) => {
            std::future::ready(AbiHookOutcome::failed(OUTCOME_PANICKED, panic)).into_ffi()
        }
    }
}

unsafe extern "C" fn shutdown_glue<A: App>(host: AbiHost) -> FfiFuture<AbiHookOutcome> {
    install_panic_hook();
    // SAFETY: `host` moves to us under the ABI contract of `shutdown`.
    let host = unsafe { HostHandle::from_abi(host) };
    match catch(move || A::shutdown(Host::from_handle(host))) {
        Ok(future) => run_hook(future),
        Err(panic) => {
            std::future::ready(AbiHookOutcome::failed(OUTCOME_PANICKED, panic)).into_ffi()
        }
    }
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
