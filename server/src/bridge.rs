//! The host's boundary module: every `unsafe` block of the server lives here.
//!
//! It opens plugin libraries, checks their descriptor before trusting anything else in them,
//! calls their handler, and implements the host capability table ([`HostVTable`]) that plugins
//! call back into. The conversions between ABI values and Rust values are shared with the
//! plugin side in [`berth_app::ffi`].
//!
//! Libraries are opened with `RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE` and never closed: a waker,
//! a future or a thread-local destructor from a plugin may outlive any request, and unmapping
//! its code would turn those into jumps into unmapped memory.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::mem::{ManuallyDrop, size_of};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_app::abi::*;
use berth_app::ffi::{ForeignBody, HandleFailure, HeaderList, IntoFfi as _, headers_from_abi};
use http::{HeaderMap, StatusCode};
use libloading::os::unix::Library;

use crate::outbound::Exchange;
use crate::plugin::{LoadError, RequestScope};

/// A loaded, checked plugin. The library stays mapped for the life of the process.
#[derive(Debug)]
pub struct Plugin {
    /// The app's name from its descriptor.
    pub name: String,
    /// The app's version from its descriptor.
    pub version: String,
    /// The `berth-app` version it was built with.
    pub sdk_version: String,
    /// The ABI minor version it was built against.
    pub abi_minor: u32,
    handle:
        unsafe extern "C" fn(*const AbiRequest, AbiBody, AbiHost) -> FfiFuture<AbiHandleOutcome>,
    init_hook: Option<unsafe extern "C" fn(AbiSettings, AbiHost) -> FfiFuture<AbiHookOutcome>>,
    shutdown_hook: Option<unsafe extern "C" fn(AbiHost) -> FfiFuture<AbiHookOutcome>>,
    _library: ManuallyDrop<Library>,
}

/// Opens `path` and checks its descriptor.
pub fn load(path: &Path) -> Result<Plugin, LoadError> {
    let flags = libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_NODELETE;
    // SAFETY: opening a library runs its initialisers. That is the trust an operator grants by
    // putting a file in the apps directory; Berth cannot check anything before this point.
    let library = unsafe { Library::open(Some(path), flags) }
        .map_err(|source| LoadError::NotALibrary(crate::error_chain(&source)))?;
    let library = ManuallyDrop::new(library);

    // SAFETY: the symbol's type is fixed by the ABI (`DescriptorFn`); if the library exports a
    // symbol of that name with another type, the descriptor checks below refuse it before any
    // other use.
    let descriptor_fn = unsafe { library.get::<DescriptorFn>(DESCRIPTOR_SYMBOL) }
        .map_err(|_| LoadError::MissingSymbol)?;
    // SAFETY: the descriptor function takes no arguments and returns a pointer to a static.
    let descriptor = unsafe { descriptor_fn() };
    if descriptor.is_null() || !descriptor.cast::<DescriptorHeader>().is_aligned() {
        return Err(LoadError::BadDescriptor(
            "null or misaligned pointer".into(),
        ));
    }
    // SAFETY: every ABI version starts with the same `DescriptorHeader` prefix, read on its own
    // before anything version-dependent.
    let header = unsafe { descriptor.cast::<DescriptorHeader>().read() };
    check_header(&header)?;
    // The header matched this host's ABI (magic, major, a known minor, that minor's layout
    // fingerprint), so the descriptor has our layout up to the plugin minor's size. Fields are
    // read through raw pointers, never a reference to the whole struct, because an older
    // minor's descriptor is shorter than ours.
    let read_str = |field: *const AbiStr, what: &str| {
        // SAFETY: `field` lies within the plugin minor's descriptor; the string points into the
        // plugin's static memory.
        unsafe { field.read().to_str(what) }
            .map(str::to_owned)
            .map_err(|e| LoadError::BadDescriptor(e.0))
    };
    // SAFETY (for the field reads below): `descriptor` is valid and aligned, and each field read
    // lies within the size of the plugin's minor, as checked above.
    let (name, version, sdk_version, handle) = unsafe {
        (
            std::ptr::addr_of!((*descriptor).name),
            std::ptr::addr_of!((*descriptor).version),
            std::ptr::addr_of!((*descriptor).sdk_version),
            std::ptr::addr_of!((*descriptor).handle).read(),
        )
    };
    let (init, shutdown) = if header.abi_minor >= 1 {
        // SAFETY: as above; these fields exist from ABI 1.1 on.
        unsafe {
            (
                std::ptr::addr_of!((*descriptor).init).read(),
                std::ptr::addr_of!((*descriptor).shutdown).read(),
            )
        }
    } else {
        (None, None)
    };
    Ok(Plugin {
        name: read_str(name, "app name")?,
        version: read_str(version, "app version")?,
        sdk_version: read_str(sdk_version, "SDK version")?,
        abi_minor: header.abi_minor,
        handle,
        init_hook: init,
        shutdown_hook: shutdown,
        _library: library,
    })
}

fn check_header(header: &DescriptorHeader) -> Result<(), LoadError> {
    if header.magic != MAGIC {
        return Err(LoadError::BadMagic {
            expected: MAGIC,
            found: header.magic,
        });
    }
    if header.abi_major != ABI_MAJOR {
        return Err(LoadError::AbiMajor {
            expected: ABI_MAJOR,
            found: header.abi_major,
        });
    }
    if header.abi_minor > ABI_MINOR {
        return Err(LoadError::AbiMinorTooNew {
            host: ABI_MINOR,
            found: header.abi_minor,
        });
    }
    let expected = LAYOUT_FINGERPRINTS[header.abi_minor as usize];
    if header.layout_fingerprint != expected {
        return Err(LoadError::Fingerprint {
            minor: header.abi_minor,
            expected,
            found: header.layout_fingerprint,
        });
    }
    let expected = DESCRIPTOR_SIZES[header.abi_minor as usize];
    if header.size < expected {
        return Err(LoadError::BadDescriptor(format!(
            "descriptor is {} bytes, expected at least {expected} for ABI 1.{}",
            header.size, header.abi_minor
        )));
    }
    Ok(())
}

/// A request as the server (or an embedder) has it, borrowed to build a [`LentRequest`].
#[derive(Debug)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub uri: &'a http::Uri,
    pub version: http::Version,
    pub headers: &'a HeaderMap,
    pub peer_addr: Option<std::net::SocketAddr>,
    pub local_addr: Option<std::net::SocketAddr>,
    /// The length of the app's mount at the start of the path (the router matched it there
    /// byte for byte).
    pub mount_len: usize,
}

/// A request lent to an app (ABI 1.3). What the app reads of it is copied once, into the
/// request's [`RequestScope`] itself (a request head of up to [`LentRequest::INLINE`] bytes
/// needs no allocation of its own), and stays there until the app drops its last reference to
/// the scope; the app reads it in place.
///
/// Copied, rather than lent from where hyper parsed it: hyper's header values share the
/// connection's read buffer, and a value held while the request waits makes hyper allocate a
/// second buffer for the connection.
///
/// The pointers it hands out point into itself: it is filled only where it stays, inside its
/// scope's `Arc` ([`request_scope`]).
pub struct LentRequest {
    /// The target (which holds the path and the query), the method, then each header's name
    /// and value: in `inline` or, when they do not fit there, in `spilled`. Never changed after
    /// [`request_scope`] filled them.
    inline: [u8; LentRequest::INLINE],
    spilled: Vec<u8>,
    method: AbiStr,
    uri: AbiStr,
    mount_prefix: AbiStr,
    path: AbiStr,
    query: AbiStr,
    /// Points into the text above.
    headers: HeaderList,
    version: u32,
    peer_addr: AbiSocketAddr,
    local_addr: AbiSocketAddr,
}

// SAFETY: the pointers in `LentRequest` point into itself, into its own heap buffer or to
// statics, none of which is written after it was filled; moving it to, or reading it from,
// another thread is like doing so with the bytes it owns.
unsafe impl Send for LentRequest {}
// SAFETY: as above: shared access only ever reads.
unsafe impl Sync for LentRequest {}

impl std::fmt::Debug for LentRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: `uri` points into `self` (or to a static), valid while `self` is borrowed.
        let uri = unsafe { self.uri.as_bytes() };
        f.debug_struct("LentRequest")
            .field("uri", &String::from_utf8_lossy(uri))
            .field("headers", &self.headers.as_slice().len())
            .finish_non_exhaustive()
    }
}

/// A scope for one request of the app behind `services`, with `view` lent in it.
pub fn request_scope(
    services: &Arc<crate::plugin::AppServices>,
    deadline: Option<tokio::time::Instant>,
    view: &RequestView<'_>,
) -> Arc<RequestScope> {
    let mut scope = new_scope(services, deadline);
    // A new `Arc` has no other reference yet.
    let fresh = Arc::get_mut(&mut scope).expect("a new Arc is unique");
    fresh.request.fill(view);
    scope
}

/// A scope for one request (or hook) of the app behind `services`, lending no request yet
/// ([`RequestScope::new`]). Allocated first and built where it stays: built on the stack and
/// moved into its `Arc`, the scope (half a kilobyte) was copied twice per request.
#[inline]
pub fn new_scope(
    services: &Arc<crate::plugin::AppServices>,
    deadline: Option<tokio::time::Instant>,
) -> Arc<RequestScope> {
    let mut scope = Arc::<RequestScope>::new_uninit();
    let fresh = Arc::get_mut(&mut scope)
        .expect("a new Arc is unique")
        .as_mut_ptr();
    // SAFETY: `fresh` points to the new scope's memory, which nothing else can see yet; each
    // field is written once, in place, and the whole is only read after.
    let fresh = unsafe {
        (&raw mut (*fresh).services).write(Arc::clone(services));
        (&raw mut (*fresh).deadline).write(deadline);
        (&raw mut (*fresh).body_exceeded).write(std::sync::atomic::AtomicBool::new(false));
        LentRequest::init(&raw mut (*fresh).request);
        &*fresh
    };
    // Every field is written above; this pattern stops compiling when one is added.
    let RequestScope {
        services: _,
        deadline: _,
        body_exceeded: _,
        request: _,
    } = fresh;
    // SAFETY: every field was written above.
    unsafe { scope.assume_init() }
}

/// Bytes appended to a [`LentRequest`]'s text: `inline` until they no longer fit, then all of
/// them in `spilled`.
struct Text<'a> {
    inline: &'a mut [u8; LentRequest::INLINE],
    spilled: &'a mut Vec<u8>,
    len: usize,
}

impl Text<'_> {
    /// Appends `bytes`; returns where they start.
    fn push(&mut self, bytes: &[u8]) -> usize {
        let at = self.len;
        self.len += bytes.len();
        match self.inline.get_mut(at..self.len) {
            Some(slot) if self.spilled.is_empty() => slot.copy_from_slice(bytes),
            _ => {
                if self.spilled.is_empty() {
                    self.spilled.reserve(self.len.max(2 * LentRequest::INLINE));
                    self.spilled.extend_from_slice(&self.inline[..at]);
                }
                self.spilled.extend_from_slice(bytes);
            }
        }
        at
    }

    fn bytes(&self) -> &[u8] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            self.spilled
        }
    }
}

impl LentRequest {
    /// The request head size (method, target, header names and values) that needs no
    /// allocation: a curl or load-generator request fits, a browser's with cookies may not.
    pub const INLINE: usize = 128;

    /// No request, as [`LentRequest::init`] writes it.
    #[cfg(test)]
    fn none() -> Self {
        let mut none = std::mem::MaybeUninit::uninit();
        // SAFETY: `init` writes every field.
        unsafe {
            Self::init(none.as_mut_ptr());
            none.assume_init()
        }
    }

    /// Writes no request to `at` (what a lifecycle hook's scope carries, and a request's before
    /// it is filled), field by field: the value whole would be built elsewhere and copied.
    ///
    /// # Safety
    /// `at` must be valid for writes and properly aligned.
    unsafe fn init(at: *mut LentRequest) {
        // SAFETY: forwarded to the caller.
        unsafe {
            (&raw mut (*at).inline).write_bytes(0, 1);
            (&raw mut (*at).spilled).write(Vec::new());
            for text in [
                &raw mut (*at).method,
                &raw mut (*at).uri,
                &raw mut (*at).mount_prefix,
                &raw mut (*at).path,
                &raw mut (*at).query,
            ] {
                text.write(AbiStr::from_static(""));
            }
            (&raw mut (*at).headers).write(HeaderList::empty());
            (&raw mut (*at).version).write(HTTP_11);
            (&raw mut (*at).peer_addr).write(berth_app::ffi::socket_addr_to_abi(None));
            (&raw mut (*at).local_addr).write(berth_app::ffi::socket_addr_to_abi(None));
        }
        // Every field is written above; this pattern stops compiling when one is added.
        // SAFETY: written above.
        let LentRequest {
            inline: _,
            spilled: _,
            method: _,
            uri: _,
            mount_prefix: _,
            path: _,
            query: _,
            headers: _,
            version: _,
            peer_addr: _,
            local_addr: _,
        } = unsafe { &*at };
    }

    /// Copies `view` in, in one walk over its headers. The target is written as an app sees
    /// it (origin form as received, anything else formatted like `Uri`'s `Display`), and the
    /// mount prefix, the path below it and the query are read out of it, not copied again.
    fn fill(&mut self, view: &RequestView<'_>) {
        let uri = view.uri;
        let mut text = Text {
            inline: &mut self.inline,
            spilled: &mut self.spilled,
            len: 0,
        };
        if let Some(scheme) = uri.scheme_str() {
            text.push(scheme.as_bytes());
            text.push(b"://");
        }
        if let Some(authority) = uri.authority() {
            text.push(authority.as_str().as_bytes());
        }
        let path = uri.path();
        let path_at = text.push(path.as_bytes());
        let query = uri.query().map(|query| {
            text.push(b"?");
            (text.push(query.as_bytes()), query.len())
        });
        let target_len = text.len;
        let method_at = text.push(view.method.as_bytes());
        let mount_len = view.mount_len.min(path.len());
        let headers_at = text.len;
        for (name, value) in view.headers {
            let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
            text.push(name);
            text.push(value);
            // Lengths only for now: the text may still move to `spilled`.
            self.headers.push(AbiHeader {
                name: AbiStr {
                    ptr: std::ptr::null(),
                    len: name.len(),
                },
                value: AbiStr {
                    ptr: std::ptr::null(),
                    len: value.len(),
                },
            });
        }
        // Pointers only now that the text is complete: it never changes again.
        let bytes = text.bytes();
        let piece = |at: usize, len: usize| AbiStr::new(&bytes[at..at + len]);
        let mut at = headers_at;
        for header in self.headers.as_mut_slice() {
            let (name_len, value_len) = (header.name.len, header.value.len);
            header.name = piece(at, name_len);
            header.value = piece(at + name_len, value_len);
            at += name_len + value_len;
        }
        self.uri = piece(0, target_len);
        self.method = piece(method_at, view.method.len());
        self.mount_prefix = piece(path_at, mount_len);
        // The part below the mount, `/` when the request named the mount itself.
        self.path = match path.len() - mount_len {
            0 => AbiStr::from_static("/"),
            below => piece(path_at + mount_len, below),
        };
        self.query = query.map_or(AbiStr::from_static(""), |(at, len)| piece(at, len));
        self.version = version_to_abi(view.version);
        self.peer_addr = berth_app::ffi::socket_addr_to_abi(view.peer_addr);
        self.local_addr = berth_app::ffi::socket_addr_to_abi(view.local_addr);
    }

    /// The ABI view. Its pointers are valid for as long as `self` stays where it is: inside
    /// its scope's `Arc`, until the scope's last reference is dropped.
    fn abi(&self) -> AbiRequest {
        AbiRequest {
            method: self.method,
            uri: self.uri,
            version: self.version,
            headers: self.headers.as_abi(),
            peer_addr: self.peer_addr,
            local_addr: self.local_addr,
            mount_prefix: self.mount_prefix,
            path: self.path,
            query: self.query,
        }
    }
}

impl Plugin {
    /// Starts the app's handler on the request lent in `scope`. `body` and one reference to
    /// `scope` move to the plugin.
    pub fn handle(&self, scope: Arc<RequestScope>, body: AbiBody) -> FfiFuture<AbiHandleOutcome> {
        let request = scope.request.abi();
        let host = host_for(scope);
        // SAFETY: `handle` came from a checked descriptor; `request` points into the scope,
        // which stays where it is (in its `Arc`) for as long as the plugin holds a reference
        // to it, as ABI 1.3 promises; `body` and `host` are owned values handed over.
        unsafe { (self.handle)(&request, body, host) }
    }
}

impl Plugin {
    /// Starts the app's `init` hook, if it has one. One reference to `scope` moves to the plugin.
    pub fn init(
        &self,
        settings: &std::collections::BTreeMap<String, String>,
        scope: Arc<RequestScope>,
    ) -> Option<FfiFuture<AbiHookOutcome>> {
        let init = self.init_hook?;
        let list = berth_app::ffi::SettingList::new(settings);
        // SAFETY: `init` came from a checked descriptor of ABI 1.1 or later; the settings live
        // until the call returns; the host reference is handed over.
        Some(unsafe { init(list.as_abi(), host_for(scope)) })
    }

    /// Starts the app's `shutdown` hook, if it has one.
    pub fn shutdown(&self, scope: Arc<RequestScope>) -> Option<FfiFuture<AbiHookOutcome>> {
        let shutdown = self.shutdown_hook?;
        // SAFETY: as for `init`.
        Some(unsafe { shutdown(host_for(scope)) })
    }
}

/// Hands one reference to `scope` over as a host handle.
fn host_for(scope: Arc<RequestScope>) -> AbiHost {
    AbiHost {
        vtable: &HOST_VTABLE,
        ctx: Arc::into_raw(scope).cast_mut().cast(),
    }
}

/// Takes ownership of a hook's outcome.
pub fn hook_result(outcome: AbiHookOutcome) -> Result<(), HandleFailure> {
    // SAFETY: the outcome was produced by the plugin's hook future and is owned by us.
    unsafe { outcome.into_result() }
}

/// Takes ownership of a handler's outcome.
pub fn outcome_into_parts(
    outcome: AbiHandleOutcome,
) -> Result<(StatusCode, HeaderMap, ForeignBody), HandleFailure> {
    // SAFETY: the outcome was produced by the plugin's handler future and is owned by us.
    unsafe { outcome.into_result() }
}

fn version_to_abi(version: http::Version) -> u32 {
    match version {
        http::Version::HTTP_09 => HTTP_09,
        http::Version::HTTP_10 => HTTP_10,
        http::Version::HTTP_2 => HTTP_2,
        http::Version::HTTP_3 => HTTP_3,
        _ => HTTP_11,
    }
}

// ---------------------------------------------------------------------------------------------
// The host capability table
// ---------------------------------------------------------------------------------------------

static HOST_VTABLE: HostVTable = HostVTable {
    size: size_of::<HostVTable>(),
    clone_ctx,
    drop_ctx,
    log,
    sleep,
    fetch,
    time_left_ms,
    max_buffered_response,
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
/// `ctx` must be a live reference made by `Arc::into_raw` in [`Plugin::handle`] or `clone_ctx`.
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
        scope.log(level, &String::from_utf8_lossy(message));
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
        scope.sleep(Duration::from_nanos(nanos)).into_ffi()
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
                scope.fetch(exchange).into_ffi()
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The bytes behind `text`.
    ///
    /// # Safety
    /// `text` must point into memory that outlives the returned copy's creation.
    unsafe fn bytes(text: AbiStr) -> Vec<u8> {
        // SAFETY: forwarded to the caller.
        unsafe { text.as_bytes() }.to_vec()
    }

    #[test]
    fn a_lent_request_reads_back_exactly_whether_inline_or_spilled() {
        // (request target, mount length): (target as the app sees it, prefix, path, query).
        let cases = [
            ("/app/sub?q=1", 4, ("/app/sub?q=1", "/app", "/sub", "q=1")),
            ("/app", 4, ("/app", "/app", "/", "")),
            ("/app/?", 4, ("/app/?", "/app", "/", "")),
            (
                "http://example.com:8080/app/x?a=b",
                4,
                ("http://example.com:8080/app/x?a=b", "/app", "/x", "a=b"),
            ),
        ];
        for value_len in [1, LentRequest::INLINE, 3 * LentRequest::INLINE] {
            for (target, mount_len, (want_target, prefix, path, query)) in cases {
                let uri: http::Uri = target.parse().expect("valid target");
                let mut headers = HeaderMap::new();
                let long = HeaderValue::from_bytes(&vec![b'v'; value_len]).expect("valid");
                headers.append("x-long", long);
                headers.append("x-dup", HeaderValue::from_static("one"));
                headers.append("x-dup", HeaderValue::from_bytes(b"t\xffo").expect("opaque"));
                for name in ["a", "b", "c", "d"] {
                    headers.append(name, HeaderValue::from_static("e"));
                }
                let view = RequestView {
                    method: "PATCH",
                    uri: &uri,
                    version: http::Version::HTTP_2,
                    headers: &headers,
                    peer_addr: None,
                    local_addr: None,
                    mount_len,
                };
                let mut lent = Box::new(LentRequest::none());
                lent.fill(&view);
                let abi = lent.abi();
                // SAFETY: every pointer points into `lent` (or to a static), alive and unmoved.
                let got = unsafe {
                    let list = std::slice::from_raw_parts(abi.headers.ptr, abi.headers.len);
                    let pairs: Vec<(Vec<u8>, Vec<u8>)> = list
                        .iter()
                        .map(|h| (bytes(h.name), bytes(h.value)))
                        .collect();
                    let strs = [abi.method, abi.uri, abi.mount_prefix, abi.path, abi.query];
                    (strs.map(|s| bytes(s)), pairs)
                };
                let want_strs = [
                    b"PATCH".to_vec(),
                    want_target.into(),
                    prefix.into(),
                    path.into(),
                    query.into(),
                ];
                let want_pairs: Vec<(Vec<u8>, Vec<u8>)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str().into(), v.as_bytes().into()))
                    .collect();
                let context = format!("{target} with a value of {value_len} bytes");
                assert_eq!(got, (want_strs, want_pairs), "{context}");
                assert_eq!(abi.version, HTTP_2);
            }
        }
    }

    fn good() -> DescriptorHeader {
        DescriptorHeader {
            magic: MAGIC,
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            layout_fingerprint: LAYOUT_FINGERPRINT,
            size: size_of::<AppDescriptor>() as u64,
        }
    }

    #[test]
    fn accepts_this_hosts_abi() {
        assert_eq!(check_header(&good()), Ok(()));
    }

    #[test]
    fn refusals_name_expected_and_found() {
        let cases = [
            (
                DescriptorHeader { magic: 7, ..good() },
                "expected 0x4245525448415050, found 0x0000000000000007",
            ),
            (
                DescriptorHeader {
                    abi_major: 2,
                    ..good()
                },
                "host expects 1, plugin has 2",
            ),
            (
                DescriptorHeader {
                    abi_minor: ABI_MINOR + 1,
                    ..good()
                },
                "supports up to 3",
            ),
            (
                DescriptorHeader {
                    layout_fingerprint: 1,
                    ..good()
                },
                "found 0x0000000000000001",
            ),
            (
                DescriptorHeader { size: 8, ..good() },
                "descriptor is 8 bytes, expected at least 104 for ABI 1.3",
            ),
        ];
        for (header, needle) in cases {
            let message = check_header(&header)
                .expect_err("must be refused")
                .to_string();
            assert!(
                message.contains(needle),
                "{message:?} should contain {needle:?}"
            );
        }
    }
}
