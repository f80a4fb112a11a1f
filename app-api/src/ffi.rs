//! The boundary module: every `unsafe` block of this crate lives here.
//!
//! It turns the raw [`abi`](crate::abi) types into safe Rust values and back, for both sides: the
//! plugin glue behind [`export_app!`](crate::export_app) uses it, and so does the host, so the two
//! directions of every conversion are one piece of code. App authors never need it.
//!
//! Rules kept throughout:
//! * every `extern "C"` function defined here catches panics and turns them into a defined value
//!   (an error chunk, an error outcome, or nothing), so no unwind ever crosses the boundary;
//! * every owned pointer received is released exactly once, through the function carried next to
//!   it, on every path including errors.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::fmt;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use bytes::Bytes;
use futures_core::Stream;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::abi::*;
use crate::body::BodyError;

// SAFETY (for all the `Send`/`Sync` impls below): the structs only carry pointers whose targets
// the ABI contract makes thread-safe to move — bodies, buffers, responses and host contexts are
// used by one thread at a time and their release functions may run on any thread; descriptors and
// vtables are immutable statics.
unsafe impl Send for AbiBuf {}
unsafe impl Send for AbiBody {}
unsafe impl Send for AbiResponse {}
unsafe impl Send for AbiHandleOutcome {}
unsafe impl Send for AbiFetchOutcome {}
unsafe impl Send for AbiHookOutcome {}
unsafe impl Send for AbiHost {}
unsafe impl Sync for AbiHost {}
unsafe impl Sync for HostVTable {}
unsafe impl Sync for AppDescriptor {}

/// An error found while reading what the other side handed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundaryError(pub String);

impl fmt::Display for BoundaryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BoundaryError {}

// ---------------------------------------------------------------------------------------------
// Panics
// ---------------------------------------------------------------------------------------------

/// The text of a panic payload (`&str` and `String` payloads; anything else is named as such).
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// Runs `f`, turning a panic into its message. The payload is dropped under a second guard
/// because a payload's own destructor may panic.
#[inline]
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    CATCHING.with(|depth| depth.set(depth.get() + 1));
    let result = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|depth| depth.set(depth.get() - 1));
    result.map_err(|payload| {
        let message = LAST_PANIC
            .with(|last| last.borrow_mut().take())
            .unwrap_or_else(|| panic_message(&*payload));
        if let Err(inner) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(inner);
        }
        message
    })
}

thread_local! {
    /// How many [`catch`] scopes are active on this thread.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
    /// The message and location of the last panic the hook saw inside a [`catch`] scope.
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Makes panics that [`catch`] will handle quiet in the plugin: instead of the plugin's own
/// copy of std printing them to stderr (beside, and without, the host's log), the message and
/// location are kept for the host, which logs them with the app's name. Panics anywhere else
/// still reach the previous hook. Installed once per plugin, by the first request.
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) == 0 {
                return previous(info);
            }
            let message = panic_message(info.payload());
            let text = match info.location() {
                Some(at) => format!("{message} (at {}:{})", at.file(), at.line()),
                None => message,
            };
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(text));
        }));
    });
}

// ---------------------------------------------------------------------------------------------
// Futures and wakers
// ---------------------------------------------------------------------------------------------
//
// async-ffi's ABI (see `abi::FfiFuture`), with one difference: a waker that crosses back to the
// side that made it arrives as itself instead of wrapped once more. The host polls an app's
// future with its task's waker, and the app polls host futures (a fetch, a timer, a body) with
// the same context: the host futures now get the task's own waker, whose clones are reference
// counts and which `will_wake` recognises from one poll to the next. Wrapped at each crossing, as
// async-ffi does, every clone of it allocated on both sides, every wake walked both, and each
// poll's fresh wrapper made hyper's and tokio's waker slots clone again.

/// A waker of this side as the other side sees it: the base, then the waker, borrowed for one
/// call ([`REF_VTABLE`]) or owned ([`OWNED_VTABLE`]).
#[repr(C)]
struct LocalWaker {
    base: FfiWakerBase,
    waker: WakerSlot,
}

#[repr(C)]
union WakerSlot {
    reference: *const Waker,
    owned: ManuallyDrop<Waker>,
}

/// The vtable of a waker lent for one call: the other side may clone it or wake it by
/// reference, never consume it.
static REF_VTABLE: FfiWakerVTable = FfiWakerVTable {
    clone: clone_local,
    wake: misused_local,
    wake_by_ref: wake_local_by_ref,
    drop: misused_local,
};

/// The vtable of a waker the other side owns (a clone).
static OWNED_VTABLE: FfiWakerVTable = FfiWakerVTable {
    clone: clone_local,
    wake: wake_owned,
    wake_by_ref: wake_local_by_ref,
    drop: drop_owned,
};

/// A waker of the other side's, as a Rust waker of this side: `data` is its base.
static FOREIGN_VTABLE: RawWakerVTable = RawWakerVTable::new(
    clone_foreign,
    wake_foreign,
    wake_foreign_by_ref,
    drop_foreign,
);

/// The waker of this side behind `base`, when this side made it.
///
/// # Safety
/// `base` is a live waker base (the ABI's waker contract), and stays so for `'a`.
unsafe fn local_waker<'a>(base: *const FfiWakerBase) -> Option<&'a Waker> {
    // SAFETY: a live base (the caller's promise). One of this side's vtables means this side
    // made it as a `LocalWaker`, whose slot the vtable names.
    unsafe {
        let local = base.cast::<LocalWaker>();
        let vtable = (*base).vtable;
        if ptr::eq(vtable, &REF_VTABLE) {
            Some(&*(*local).waker.reference)
        } else if ptr::eq(vtable, &OWNED_VTABLE) {
            Some(&(*local).waker.owned)
        } else {
            None
        }
    }
}

/// Runs a waker operation for the other side: a panic must not unwind into it.
fn abort_on_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| abort_with(&format!("berth: a waker panicked in {what}; aborting\n")))
}

unsafe extern "C" fn clone_local(base: *const FfiWakerBase) -> *const FfiWakerBase {
    abort_on_panic("clone", || {
        // SAFETY: the other side calls this only through one of our vtables, on a live base.
        let waker = unsafe { local_waker(base) }
            .unwrap_or_else(Waker::noop)
            .clone();
        let owned = LocalWaker {
            base: FfiWakerBase {
                vtable: &OWNED_VTABLE,
            },
            waker: WakerSlot {
                owned: ManuallyDrop::new(waker),
            },
        };
        Box::into_raw(Box::new(owned)).cast_const().cast()
    })
}

unsafe extern "C" fn wake_local_by_ref(base: *const FfiWakerBase) {
    abort_on_panic("wake_by_ref", || {
        // SAFETY: as in `clone_local`.
        if let Some(waker) = unsafe { local_waker(base) } {
            waker.wake_by_ref();
        }
    });
}

/// `wake` or `drop` of a lent waker: the other side broke the contract.
unsafe extern "C" fn misused_local(_: *const FfiWakerBase) {
    abort_with("berth: a lent waker was consumed across the boundary; aborting\n");
}

/// Says why on stderr (without panicking if it cannot), then aborts.
fn abort_with(message: &str) -> ! {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(message.as_bytes());
    std::process::abort()
}

unsafe extern "C" fn wake_owned(base: *const FfiWakerBase) {
    abort_on_panic("wake", || {
        // SAFETY: `base` is an owned `LocalWaker` made by `clone_local` (OWNED_VTABLE), handed
        // back once: `wake` consumes it.
        let waker = unsafe {
            let mut local = Box::from_raw(base.cast::<LocalWaker>().cast_mut());
            ManuallyDrop::take(&mut local.waker.owned)
        };
        waker.wake();
    });
}

unsafe extern "C" fn drop_owned(base: *const FfiWakerBase) {
    abort_on_panic("drop", || {
        // SAFETY: as in `wake_owned`.
        unsafe {
            let mut local = Box::from_raw(base.cast::<LocalWaker>().cast_mut());
            ManuallyDrop::drop(&mut local.waker.owned);
        }
    });
}

// SAFETY (for the four functions below): `data` is a live waker base of the other side, which
// keeps the waker contract; an owned one is consumed exactly once, by `wake` or `drop`.
unsafe fn clone_foreign(data: *const ()) -> RawWaker {
    let base = data.cast::<FfiWakerBase>();
    // SAFETY: see above.
    let cloned = unsafe { ((*(*base).vtable).clone)(base) };
    RawWaker::new(cloned.cast(), &FOREIGN_VTABLE)
}

unsafe fn wake_foreign(data: *const ()) {
    let base = data.cast::<FfiWakerBase>();
    // SAFETY: see above.
    unsafe { ((*(*base).vtable).wake)(base) }
}

unsafe fn wake_foreign_by_ref(data: *const ()) {
    let base = data.cast::<FfiWakerBase>();
    // SAFETY: see above.
    unsafe { ((*(*base).vtable).wake_by_ref)(base) }
}

unsafe fn drop_foreign(data: *const ()) {
    let base = data.cast::<FfiWakerBase>();
    // SAFETY: see above.
    unsafe { ((*(*base).vtable).drop)(base) }
}

impl FfiContext<'_> {
    /// Runs `f` with this context as a Rust one: the waker itself when this side made it, else
    /// a Rust waker that forwards to the other side's functions.
    pub fn with_context<T>(&mut self, f: impl FnOnce(&mut Context<'_>) -> T) -> T {
        // SAFETY: the waker is live for the call this context was passed to (the poll
        // contract), which outlasts `f`.
        if let Some(waker) = unsafe { local_waker(self.waker) } {
            return f(&mut Context::from_waker(waker));
        }
        // SAFETY: FOREIGN_VTABLE keeps the `RawWaker` contract by forwarding to the other side's
        // functions. The waker is lent for this call: `ManuallyDrop` never releases it.
        let waker = unsafe { Waker::new(self.waker.cast(), &FOREIGN_VTABLE) };
        f(&mut Context::from_waker(&ManuallyDrop::new(waker)))
    }
}

/// Whether `waker` is one of the other side's, rather than one this side made and lent across
/// (which comes back as itself).
pub fn is_foreign_waker(waker: &Waker) -> bool {
    ptr::eq(waker.vtable(), &FOREIGN_VTABLE)
}

/// Polling across the boundary with a Rust [`Context`].
pub trait ContextExt {
    /// Runs `f` with this context in ABI form: a waker of the other side's goes back as its own
    /// base, any other is lent for the call.
    fn with_ffi_context<T>(&mut self, f: impl FnOnce(&mut FfiContext<'_>) -> T) -> T;
}

impl ContextExt for Context<'_> {
    fn with_ffi_context<T>(&mut self, f: impl FnOnce(&mut FfiContext<'_>) -> T) -> T {
        let waker = self.waker();
        if is_foreign_waker(waker) {
            let mut cx = FfiContext {
                waker: waker.data().cast(),
                _marker: std::marker::PhantomData,
            };
            return f(&mut cx);
        }
        let local = LocalWaker {
            base: FfiWakerBase {
                vtable: &REF_VTABLE,
            },
            waker: WakerSlot { reference: waker },
        };
        let mut cx = FfiContext {
            waker: ptr::from_ref(&local).cast(),
            _marker: std::marker::PhantomData,
        };
        f(&mut cx)
    }
}

impl<T> FfiFuture<T> {
    /// Boxes `future` for the other side to poll and drop.
    pub fn new<F: Future<Output = T> + Send + 'static>(future: F) -> Self {
        Self::boxed(future, poll_boxed::<F>)
    }

    /// Boxes `future` (any `Send` value `poll_fn` knows how to poll), freed by `drop_boxed`.
    fn boxed<F: Send + 'static>(
        future: F,
        poll_fn: unsafe extern "C" fn(*mut c_void, *mut FfiContext<'_>) -> FfiPoll<T>,
    ) -> Self {
        FfiFuture {
            fut_ptr: Box::into_raw(Box::new(future)).cast(),
            poll_fn,
            drop_fn: drop_boxed::<F>,
        }
    }
}

/// `future.into_ffi()`: [`FfiFuture::new`] as a method.
pub trait IntoFfi: Future + Send + Sized + 'static {
    /// See [`FfiFuture::new`].
    fn into_ffi(self) -> FfiFuture<Self::Output> {
        FfiFuture::new(self)
    }
}

impl<F: Future + Send + 'static> IntoFfi for F {}

unsafe extern "C" fn poll_boxed<F: Future>(
    fut_ptr: *mut c_void,
    cx: *mut FfiContext<'_>,
) -> FfiPoll<F::Output> {
    let polled = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `fut_ptr` is the box `FfiFuture::boxed` made, pinned there until
        // `drop_boxed`; `cx` is valid for this call (the poll contract).
        let (future, cx) = unsafe { (Pin::new_unchecked(&mut *fut_ptr.cast::<F>()), &mut *cx) };
        cx.with_context(|cx| future.poll(cx))
    }));
    match polled {
        Ok(Poll::Ready(output)) => FfiPoll::Ready(output),
        Ok(Poll::Pending) => FfiPoll::Pending,
        Err(payload) => {
            if let Err(inner) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
                std::mem::forget(inner);
            }
            FfiPoll::Panicked
        }
    }
}

unsafe extern "C" fn drop_boxed<F>(fut_ptr: *mut c_void) {
    // SAFETY: the box `FfiFuture::boxed` made; the receiver drops it exactly once.
    abort_on_panic("a future's drop", || {
        drop(unsafe { Box::from_raw(fut_ptr.cast::<F>()) })
    });
}

// SAFETY: `FfiFuture::new` takes only `Send` futures, and the other side's futures are `Send`
// under the ABI contract (a host or app future may be polled from any runtime thread).
unsafe impl<T> Send for FfiFuture<T> {}

/// A poll that panicked on the other side of the boundary (see [`FfiFuture::poll_caught`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panicked;

impl<T> FfiFuture<T> {
    /// Polls it, with a poll that panicked on the other side as `Err(Panicked)` rather than
    /// a panic here, as polling it as a `Future` resumes it: catching that costs the caller a
    /// `catch_unwind` around every poll. After `Ready` or `Err`, only drop it.
    #[inline]
    pub fn poll_caught(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Panicked>> {
        let (poll, fut_ptr) = (self.poll_fn, self.fut_ptr);
        // SAFETY: the future contract: `poll_fn(fut_ptr, cx)` with a context valid for the call,
        // until it is ready or has panicked (after which the caller only drops it).
        match cx.with_ffi_context(|cx| unsafe { poll(fut_ptr, cx) }) {
            FfiPoll::Ready(output) => Poll::Ready(Ok(output)),
            FfiPoll::Pending => Poll::Pending,
            FfiPoll::Panicked => Poll::Ready(Err(Panicked)),
        }
    }
}

impl<T> Future for FfiFuture<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        self.poll_caught(cx).map(|polled| {
            polled.unwrap_or_else(|Panicked| {
                panic!("a future panicked on the other side of the boundary")
            })
        })
    }
}

impl<T> Drop for FfiFuture<T> {
    fn drop(&mut self) {
        // SAFETY: `drop_fn(fut_ptr)`, once, by the owner (the future contract).
        unsafe { (self.drop_fn)(self.fut_ptr) }
    }
}

impl<T> fmt::Debug for FfiFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FfiFuture")
    }
}

impl fmt::Debug for FfiContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FfiContext")
    }
}

// ---------------------------------------------------------------------------------------------
// Borrowed bytes and headers
// ---------------------------------------------------------------------------------------------

impl AbiStr {
    /// Borrows `bytes` for the duration of a call.
    pub fn new(bytes: &[u8]) -> Self {
        AbiStr {
            ptr: bytes.as_ptr(),
            len: bytes.len(),
        }
    }

    /// A `'static` string (descriptor fields).
    pub const fn from_static(s: &'static str) -> Self {
        AbiStr {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// Reads the bytes.
    ///
    /// # Safety
    /// `ptr[..len]` must be readable for `'a` (the ABI's borrowed contract), or `len` must be 0.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.len == 0 {
            &[]
        } else {
            // SAFETY: the caller guarantees `ptr[..len]` is readable for `'a`.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }

    /// Reads the bytes as UTF-8, naming `what` in the error.
    ///
    /// # Safety
    /// As for [`AbiStr::as_bytes`].
    pub unsafe fn to_str<'a>(&self, what: &str) -> Result<&'a str, BoundaryError> {
        // SAFETY: forwarded to the caller.
        let bytes = unsafe { self.as_bytes() };
        std::str::from_utf8(bytes).map_err(|_| BoundaryError(format!("{what} is not UTF-8")))
    }
}

/// Borrowed header array built from a [`HeaderMap`]; keep it alive, and where it is, while the
/// [`AbiHeaders`] from [`HeaderList::as_abi`] is in use. Up to [`HeaderList::INLINE`] headers
/// live in the list itself, so most requests and responses cross without allocating for it.
#[derive(Debug)]
pub struct HeaderList {
    len: usize,
    inline: [AbiHeader; HeaderList::INLINE],
    spilled: Vec<AbiHeader>,
}

impl HeaderList {
    /// How many headers fit without a heap allocation.
    pub const INLINE: usize = 4;

    const NONE: AbiHeader = AbiHeader {
        name: AbiStr::from_static(""),
        value: AbiStr::from_static(""),
    };

    /// No headers.
    pub const fn empty() -> Self {
        HeaderList {
            len: 0,
            inline: [Self::NONE; Self::INLINE],
            spilled: Vec::new(),
        }
    }

    /// Borrows every header of `map` in order (repeated names once per value).
    pub fn new(map: &HeaderMap) -> Self {
        let mut list = HeaderList::empty();
        for (name, value) in map {
            list.push(AbiHeader {
                name: AbiStr::new(name.as_str().as_bytes()),
                value: AbiStr::new(value.as_bytes()),
            });
        }
        list
    }

    /// Appends a header; past [`HeaderList::INLINE`] the list moves to the heap.
    #[inline]
    pub fn push(&mut self, header: AbiHeader) {
        if self.spilled.is_empty() && self.len < Self::INLINE {
            self.inline[self.len] = header;
            self.len += 1;
            return;
        }
        if self.spilled.is_empty() {
            self.spilled.reserve(2 * Self::INLINE);
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.push(header);
    }

    /// The headers, in order.
    pub fn as_slice(&self) -> &[AbiHeader] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }

    /// The headers, to point them elsewhere (at copies of what they point to).
    pub fn as_mut_slice(&mut self) -> &mut [AbiHeader] {
        if self.spilled.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spilled
        }
    }

    /// The ABI view of the list.
    pub fn as_abi(&self) -> AbiHeaders {
        let items = self.as_slice();
        AbiHeaders {
            ptr: items.as_ptr(),
            len: items.len(),
        }
    }
}

/// The borrowed array behind `headers`.
///
/// # Safety
/// `headers` must satisfy the ABI's borrowed contract for as long as the slice is used.
unsafe fn header_slice<'a>(headers: AbiHeaders) -> &'a [AbiHeader] {
    if headers.ptr.is_null() || headers.len == 0 {
        &[]
    } else {
        // SAFETY: borrowed contract: `ptr[..len]` is a readable array of `AbiHeader`.
        unsafe { std::slice::from_raw_parts(headers.ptr, headers.len) }
    }
}

/// Copies the valid headers of `headers` into a [`HeaderMap`], skipping any other: for headers
/// the other side promises are valid, read long after they arrived, where an error would have
/// no one to go to.
///
/// # Safety
/// `headers` must be readable for the duration of this call.
unsafe fn valid_headers(headers: AbiHeaders) -> HeaderMap {
    // SAFETY: forwarded to the caller.
    let list = unsafe { header_slice(headers) };
    let mut map = HeaderMap::with_capacity(list.len());
    for header in list {
        // SAFETY: each name and value is readable as long as the array.
        let (name, value) = unsafe { (header.name.as_bytes(), header.value.as_bytes()) };
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// Copies borrowed headers into a [`HeaderMap`], validating names and values.
///
/// # Safety
/// `headers` must satisfy the ABI's borrowed contract for the duration of this call.
pub unsafe fn headers_from_abi(headers: AbiHeaders) -> Result<HeaderMap, BoundaryError> {
    // SAFETY: forwarded to the caller.
    let list = unsafe { header_slice(headers) };
    // Room for the few headers a server adds on the way out (HTTP/2: content-length, date), so
    // that they do not make the map grow.
    let mut map = HeaderMap::with_capacity(list.len() + 2);
    for header in list {
        // SAFETY: each name and value is borrowed under the same contract as the array.
        let (name, value) = unsafe { (header.name.as_bytes(), header.value.as_bytes()) };
        let name = HeaderName::from_bytes(name).map_err(|_| {
            BoundaryError(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(name)
            ))
        })?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| BoundaryError(format!("invalid value for header {name}")))?;
        map.append(name, value);
    }
    Ok(map)
}

// ---------------------------------------------------------------------------------------------
// Owned buffers
// ---------------------------------------------------------------------------------------------

unsafe extern "C" fn release_boxed<T>(owner: *mut c_void) {
    // SAFETY: `owner` came from `Box::<T>::into_raw` in this module and is released once.
    let dropped = catch(|| drop(unsafe { Box::from_raw(owner.cast::<T>()) }));
    // A destructor that panics leaks instead of unwinding into the other side.
    let _ = dropped;
}

/// Moves `value` to the heap and returns the `(owner, release)` pair that frees it.
fn boxed_owner<T>(value: T) -> (*mut c_void, Option<unsafe extern "C" fn(*mut c_void)>) {
    owner_of(Box::new(value))
}

/// The `(owner, release)` pair that frees `boxed`.
fn owner_of<T>(boxed: Box<T>) -> (*mut c_void, Option<unsafe extern "C" fn(*mut c_void)>) {
    (Box::into_raw(boxed).cast(), Some(release_boxed::<T>))
}

impl AbiBuf {
    /// No bytes, nothing to release.
    pub const fn empty() -> Self {
        AbiBuf {
            ptr: ptr::null(),
            len: 0,
            owner: ptr::null_mut(),
            release: None,
        }
    }

    /// Hands `bytes` over without copying; the receiver's `release` drops them here.
    pub fn from_bytes(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            return AbiBuf::empty();
        }
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        let (owner, release) = boxed_owner(bytes);
        AbiBuf {
            ptr,
            len,
            owner,
            release,
        }
    }

    /// Hands a UTF-8 message over.
    pub fn from_string(message: String) -> Self {
        AbiBuf::from_bytes(Bytes::from(message))
    }

    /// Takes ownership of a received buffer as [`Bytes`] without copying; dropping the `Bytes`
    /// calls the producer's `release`.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's owned-buffer contract and not be released elsewhere.
    pub unsafe fn into_bytes(self) -> Bytes {
        ForeignBuf(self).into_bytes()
    }

    /// Copies a received message into a `String` (lossily) and releases the buffer.
    ///
    /// # Safety
    /// As for [`AbiBuf::into_bytes`].
    pub unsafe fn into_string_lossy(self) -> String {
        // SAFETY: forwarded to the caller.
        let bytes = unsafe { self.into_bytes() };
        if bytes.is_empty() {
            // Every successful outcome carries an empty message.
            return String::new();
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A received [`AbiBuf`] that releases itself when dropped.
struct ForeignBuf(AbiBuf);

impl AsRef<[u8]> for ForeignBuf {
    fn as_ref(&self) -> &[u8] {
        let view = AbiStr {
            ptr: self.0.ptr,
            len: self.0.len,
        };
        // SAFETY: an owned buffer's bytes stay readable until it is released, which only `Drop`
        // does.
        unsafe { view.as_bytes() }
    }
}

impl ForeignBuf {
    /// The buffer as [`Bytes`], without copying: dropping them releases it. An empty buffer
    /// with nothing to release needs no owner.
    fn into_bytes(self) -> Bytes {
        if self.0.release.is_none() && self.as_ref().is_empty() {
            return Bytes::new();
        }
        Bytes::from_owner(self)
    }
}

impl Drop for ForeignBuf {
    fn drop(&mut self) {
        if let Some(release) = self.0.release {
            // SAFETY: the owned-buffer contract: call `release(owner)` exactly once.
            unsafe { release(self.0.owner) };
        }
    }
}

/// A chunk of a body received from the other side, read where it is and released when dropped.
/// Making it a [`Bytes`] ([`ForeignChunk::into_bytes`]) costs an allocation; a server that
/// only writes the chunk out can take it as it is ([`ForeignBody::poll_chunk_in_place`]).
#[derive(Debug)]
pub struct ForeignChunk {
    buf: ForeignBuf,
    /// How much of it has been consumed ([`bytes::Buf::advance`]).
    at: usize,
}

impl ForeignChunk {
    /// The chunk as [`Bytes`], without copying it.
    pub fn into_bytes(self) -> Bytes {
        let mut bytes = self.buf.into_bytes();
        bytes::Buf::advance(&mut bytes, self.at);
        bytes
    }
}

impl bytes::Buf for ForeignChunk {
    fn remaining(&self) -> usize {
        self.buf.as_ref().len() - self.at
    }

    fn chunk(&self) -> &[u8] {
        &self.buf.as_ref()[self.at..]
    }

    fn advance(&mut self, cnt: usize) {
        assert!(cnt <= self.remaining(), "advanced past the end of a chunk");
        self.at += cnt;
    }
}

impl fmt::Debug for ForeignBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForeignBuf")
            .field("len", &self.0.len)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// The stream type every body crosses the boundary as.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send>>;

unsafe extern "C" fn poll_stream<S>(state: *mut c_void, cx: *mut FfiContext<'_>) -> AbiChunkPoll
where
    S: Stream<Item = Result<Bytes, BodyError>>,
{
    let polled = catch(|| {
        // SAFETY: `state` is the `Box<S>` made by `AbiBody::streaming`, which never moves it,
        // alive until the body's `drop`; `cx` is valid for this call (the ABI's poll contract).
        let (stream, cx) = unsafe { (Pin::new_unchecked(&mut *state.cast::<S>()), &mut *cx) };
        cx.with_context(|cx| stream.poll_next(cx))
    });
    match polled {
        Ok(Poll::Pending) => chunk(CHUNK_PENDING, AbiBuf::empty()),
        Ok(Poll::Ready(None)) => chunk(CHUNK_END, AbiBuf::empty()),
        Ok(Poll::Ready(Some(Ok(data)))) => chunk(CHUNK_DATA, AbiBuf::from_bytes(data)),
        Ok(Poll::Ready(Some(Err(err)))) => chunk(CHUNK_ERROR, AbiBuf::from_string(err.to_string())),
        Err(panic) => chunk(
            CHUNK_ERROR,
            AbiBuf::from_string(format!("body stream panicked: {panic}")),
        ),
    }
}

fn chunk(tag: u32, data: AbiBuf) -> AbiChunkPoll {
    AbiChunkPoll { tag, data }
}

impl AbiBody {
    /// An empty body.
    pub const fn empty() -> Self {
        AbiBody {
            state: ptr::null_mut(),
            poll_chunk: None,
            drop: None,
            len_hint: 0,
        }
    }

    /// Hands a stream over; the receiver polls it through this module's glue. `len_hint` is the
    /// exact total length when known.
    pub fn from_stream(stream: ChunkStream, len_hint: Option<u64>) -> Self {
        Self::streaming(stream, len_hint)
    }

    /// [`AbiBody::from_stream`] for a stream of any type, boxed as it is: one allocation where
    /// a [`ChunkStream`] (itself a box) takes two.
    pub fn streaming<S>(stream: S, len_hint: Option<u64>) -> Self
    where
        S: Stream<Item = Result<Bytes, BodyError>> + Send + 'static,
    {
        let (state, drop) = boxed_owner(stream);
        AbiBody {
            state,
            poll_chunk: Some(poll_stream::<S>),
            drop,
            len_hint: len_hint.unwrap_or(LEN_UNKNOWN),
        }
    }

    /// Hands one buffer over as a stream of one chunk. The body's state and the chunk's owner
    /// are one reference-counted block, so a whole body costs one allocation.
    pub fn full(data: Bytes) -> Self {
        if data.is_empty() {
            return AbiBody::empty();
        }
        FullBody::share(&Arc::new(FullBody::new(data, ())))
    }
}

/// The state of a body of one chunk: the bytes, whether the chunk has been handed out, and
/// `extra`, anything else that lives as long (a response's header storage). The body, its
/// chunk and the response each hold a reference.
struct FullBody<X> {
    data: Bytes,
    taken: AtomicBool,
    extra: X,
}

impl<X: Send + Sync + 'static> FullBody<X> {
    fn new(data: Bytes, extra: X) -> Self {
        FullBody {
            data,
            taken: AtomicBool::new(false),
            extra,
        }
    }

    /// A body that polls `this` (empty if there is no data), holding a reference of its own.
    fn share(this: &Arc<Self>) -> AbiBody {
        if this.data.is_empty() {
            return AbiBody::empty();
        }
        AbiBody {
            state: Arc::into_raw(Arc::clone(this)).cast_mut().cast(),
            poll_chunk: Some(poll_full::<X>),
            drop: Some(release_full::<X>),
            len_hint: this.data.len() as u64,
        }
    }
}

unsafe extern "C" fn poll_full<X>(state: *mut c_void, _cx: *mut FfiContext<'_>) -> AbiChunkPoll {
    // Nothing here can panic: no `catch` needed.
    let full = state.cast::<FullBody<X>>().cast_const();
    // SAFETY: `state` is an `Arc<FullBody<X>>` reference made by `FullBody::share`, alive until
    // `release_full` drops the body's reference.
    let body = unsafe { &*full };
    if body.taken.swap(true, Ordering::Relaxed) {
        return chunk(CHUNK_END, AbiBuf::empty());
    }
    // SAFETY: as above; the chunk gets a reference of its own, released with the chunk.
    unsafe { Arc::increment_strong_count(full) };
    let data = AbiBuf {
        ptr: body.data.as_ptr(),
        len: body.data.len(),
        owner: state,
        release: Some(release_full::<X>),
    };
    chunk(CHUNK_DATA, data)
}

/// Drops one reference to a [`FullBody`]: the body's (its `drop`), its chunk's or its
/// response's (their `release`).
unsafe extern "C" fn release_full<X>(state: *mut c_void) {
    let full = state.cast::<FullBody<X>>().cast_const();
    // SAFETY: `state` came from `Arc::into_raw` in `FullBody::share` or
    // `AbiResponse::with_full_body`, and each reference is released once.
    let last = catch(|| unsafe { Arc::decrement_strong_count(full) });
    // A destructor that panics leaks instead of unwinding into the other side.
    let _ = last;
}

/// A body received from the other side, polled through its C functions. Dropping it calls the
/// producer's `drop` exactly once.
#[derive(Debug)]
pub struct ForeignBody {
    raw: AbiBody,
    done: bool,
    /// Bytes still to come when the producer gave an exact length, else `LEN_UNKNOWN`. At 0 the
    /// body reports its end without another poll: hyper then ends an HTTP/2 stream with the
    /// last data frame instead of sending an empty one after it.
    remaining: u64,
}

impl ForeignBody {
    /// Takes ownership of a received body.
    ///
    /// # Safety
    /// `raw` must satisfy the ABI's body contract and not be used elsewhere afterwards.
    pub unsafe fn from_abi(raw: AbiBody) -> Self {
        let done = raw.poll_chunk.is_none();
        let remaining = raw.len_hint;
        ForeignBody {
            raw,
            done,
            remaining,
        }
    }

    /// Exact length in bytes of what is still to come, when the producer knows it.
    pub fn len_hint(&self) -> Option<u64> {
        (self.remaining != LEN_UNKNOWN).then_some(self.remaining)
    }

    /// Whether the stream has ended (or never had data).
    pub fn is_end(&self) -> bool {
        self.done
    }

    /// Polls for the next chunk; empty chunks are skipped.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        self.poll_chunk_in_place(cx)
            .map(|chunk| chunk.map(|chunk| chunk.map(ForeignChunk::into_bytes)))
    }

    /// [`ForeignBody::poll_chunk`], with each chunk left where the producer has it.
    pub fn poll_chunk_in_place(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<ForeignChunk, BodyError>>> {
        loop {
            let Some(poll) = self.raw.poll_chunk.filter(|_| !self.done) else {
                return Poll::Ready(None);
            };
            let state = self.raw.state;
            // SAFETY: the body contract: `poll_chunk(state, cx)` may be called until it returns
            // END or ERROR, which `done` records; `cx` is valid for the call.
            let result = cx.with_ffi_context(|fcx| unsafe { poll(state, fcx) });
            // The returned buffer is ours under the owned-buffer contract: released on drop.
            let data = ForeignBuf(result.data);
            return match result.tag {
                CHUNK_PENDING => Poll::Pending,
                CHUNK_DATA if data.as_ref().is_empty() => continue,
                CHUNK_DATA => {
                    let len = data.as_ref().len() as u64;
                    if self.remaining != LEN_UNKNOWN {
                        self.remaining = self.remaining.saturating_sub(len);
                    }
                    Poll::Ready(Some(Ok(ForeignChunk { buf: data, at: 0 })))
                }
                CHUNK_END => {
                    self.done = true;
                    Poll::Ready(None)
                }
                CHUNK_ERROR => {
                    self.done = true;
                    let message = String::from_utf8_lossy(data.as_ref()).into_owned();
                    Poll::Ready(Some(Err(BodyError::new(message))))
                }
                other => {
                    self.done = true;
                    Poll::Ready(Some(Err(BodyError::new(format!(
                        "body stream returned unknown chunk tag {other}"
                    )))))
                }
            };
        }
    }

    /// Gives the raw body back without dropping it (to forward it unchanged).
    pub fn into_abi(self) -> AbiBody {
        let this = std::mem::ManuallyDrop::new(self);
        AbiBody {
            state: this.raw.state,
            poll_chunk: if this.done { None } else { this.raw.poll_chunk },
            drop: this.raw.drop,
            len_hint: this.remaining,
        }
    }
}

impl Drop for ForeignBody {
    fn drop(&mut self) {
        if let Some(drop) = self.raw.drop {
            // SAFETY: the body contract: `drop(state)` exactly once, which `Drop` guarantees.
            unsafe { drop(self.raw.state) };
        }
    }
}

impl Stream for ForeignBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_chunk(cx)
    }
}

impl http_body::Body for ForeignBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
        self.get_mut()
            .poll_chunk(cx)
            .map(|chunk| chunk.map(|r| r.map(http_body::Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.remaining == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.len_hint() {
            Some(len) => http_body::SizeHint::with_exact(len),
            None => http_body::SizeHint::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Responses (both the app's answer and an outbound fetch's result)
// ---------------------------------------------------------------------------------------------

impl AbiResponse {
    /// Hands a response over: the headers stay in a heap block released by the receiver.
    pub fn new(status: StatusCode, headers: HeaderMap, body: AbiBody) -> Self {
        let mut head = Box::new(ResponseHead::new(headers));
        let abi_headers = head.lend();
        let (owner, release) = owner_of(head);
        AbiResponse {
            status: status.as_u16(),
            headers: abi_headers,
            body,
            owner,
            release,
        }
    }

    /// A response whose body is `data`, held whole: headers, body state and bytes are one
    /// reference-counted block, which the response, its body and the body's one chunk share,
    /// so that the whole answer costs one allocation.
    pub(crate) fn with_full_body(status: StatusCode, headers: HeaderMap, data: Bytes) -> Self {
        let mut block = Arc::new(FullBody::new(data, ResponseHead::new(headers)));
        let abi_headers = Arc::get_mut(&mut block)
            .expect("a new Arc is unique")
            .extra
            .lend();
        let body = FullBody::share(&block);
        AbiResponse {
            status: status.as_u16(),
            headers: abi_headers,
            body,
            owner: Arc::into_raw(block).cast_mut().cast(),
            release: Some(release_full::<ResponseHead>),
        }
    }

    /// An empty placeholder (used next to a non-OK tag).
    pub const fn none() -> Self {
        AbiResponse {
            status: 0,
            headers: AbiHeaders {
                ptr: ptr::null(),
                len: 0,
            },
            body: AbiBody::empty(),
            owner: ptr::null_mut(),
            release: None,
        }
    }

    /// Takes ownership of a received response: copies and validates status and headers, releases
    /// the producer's storage, and wraps the body. Everything is released on error too.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's response contract and not be used elsewhere afterwards.
    pub unsafe fn into_parts(self) -> Result<(StatusCode, HeaderMap, ForeignBody), BoundaryError> {
        // SAFETY: forwarded to the caller.
        let (status, headers, body) = unsafe { self.into_lent_parts() }?;
        // SAFETY: the headers stay with their producer until `headers` is dropped, below.
        let map = unsafe { headers_from_abi(headers.list) }?;
        Ok((status, map, body))
    }

    /// [`AbiResponse::into_parts`] with the headers kept where they are, to be read in place
    /// until the returned [`LentHeaders`] is dropped.
    ///
    /// # Safety
    /// As for [`AbiResponse::into_parts`].
    unsafe fn into_lent_parts(
        self,
    ) -> Result<(StatusCode, LentHeaders, ForeignBody), BoundaryError> {
        // SAFETY: the body moves to us under the body contract.
        let body = unsafe { ForeignBody::from_abi(self.body) };
        let headers = LentHeaders {
            list: self.headers,
            owner: self.owner,
            release: self.release,
        };
        let status = StatusCode::from_u16(self.status)
            .map_err(|_| BoundaryError(format!("invalid status code {}", self.status)))?;
        Ok((status, headers, body))
    }
}

/// A received response's headers, read in place until dropped, which releases the producer's
/// storage: the response contract has the receiver release it once, whenever it is done.
pub(crate) struct LentHeaders {
    list: AbiHeaders,
    owner: *mut c_void,
    release: Option<unsafe extern "C" fn(owner: *mut c_void)>,
}

// SAFETY: the headers are immutable until released, and the response contract lets the
// receiver read them and release them from any thread.
unsafe impl Send for LentHeaders {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for LentHeaders {}

impl LentHeaders {
    /// The headers as a map (values copied). The producer built them from valid names and
    /// values; one that is not would be skipped, not trusted.
    pub(crate) fn to_map(&self) -> HeaderMap {
        // SAFETY: borrowed from `owner`, which is released only when `self` is dropped.
        unsafe { valid_headers(self.list) }
    }
}

impl Drop for LentHeaders {
    fn drop(&mut self) {
        if let Some(release) = self.release {
            // SAFETY: the response contract: `release(owner)` exactly once, here.
            unsafe { release(self.owner) };
        }
    }
}

impl fmt::Debug for LentHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentHeaders")
            .field("len", &self.list.len)
            .finish_non_exhaustive()
    }
}

/// Where a response's headers live until the receiver releases them: the map, and the list
/// that borrows from it once both are where they stay ([`ResponseHead::lend`]). Freed by the
/// receiver's `release`.
struct ResponseHead {
    headers: HeaderMap,
    list: HeaderList,
}

impl ResponseHead {
    fn new(headers: HeaderMap) -> Self {
        ResponseHead {
            headers,
            list: HeaderList::empty(),
        }
    }

    /// Points the list at the headers and returns its ABI view, valid while `self` neither
    /// moves nor changes: call it once `self` is in the heap block the receiver releases.
    fn lend(&mut self) -> AbiHeaders {
        self.list = HeaderList::new(&self.headers);
        self.list.as_abi()
    }
}

// SAFETY: `list` only points into `headers` (or at static strings), which move and are
// shared with it.
unsafe impl Send for ResponseHead {}
// SAFETY: as above; nothing in `list` is written through.
unsafe impl Sync for ResponseHead {}

// ---------------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------------

impl AbiHandleOutcome {
    /// A successful handler outcome.
    pub fn ok(response: AbiResponse) -> Self {
        AbiHandleOutcome {
            tag: OUTCOME_OK,
            response,
            message: AbiBuf::empty(),
        }
    }

    /// A failed handler outcome (`tag` is `OUTCOME_PANICKED` or `OUTCOME_ERROR`).
    pub fn failed(tag: u32, message: String) -> Self {
        AbiHandleOutcome {
            tag,
            response: AbiResponse::none(),
            message: AbiBuf::from_string(message),
        }
    }

    /// Takes ownership of a received outcome.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's outcome contract.
    pub unsafe fn into_result(self) -> Result<(StatusCode, HeaderMap, ForeignBody), HandleFailure> {
        // SAFETY: the message and the response are owned by us now.
        let message = unsafe { self.message.into_string_lossy() };
        // SAFETY: as above.
        let response = unsafe { self.response.into_parts() };
        match self.tag {
            OUTCOME_OK => response.map_err(|e| HandleFailure::Invalid(e.0)),
            OUTCOME_PANICKED => Err(HandleFailure::Panicked(message)),
            OUTCOME_ERROR => Err(HandleFailure::Invalid(message)),
            other => Err(HandleFailure::Invalid(format!(
                "unknown outcome tag {other}"
            ))),
        }
    }
}

/// Why a handler (or hook) produced no usable result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandleFailure {
    /// The app panicked; the message is the panic's.
    Panicked(String),
    /// The app's answer (or the plugin glue) was not valid.
    Invalid(String),
    /// The app reported a failure (a lifecycle hook returned an error).
    Failed(String),
}

impl fmt::Display for HandleFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandleFailure::Panicked(message) => write!(f, "panicked: {message}"),
            HandleFailure::Invalid(message) => write!(f, "invalid result: {message}"),
            HandleFailure::Failed(message) => f.write_str(message),
        }
    }
}

impl AbiFetchOutcome {
    /// A successful fetch.
    pub fn ok(response: AbiResponse) -> Self {
        AbiFetchOutcome {
            tag: FETCH_OK,
            response,
            message: AbiBuf::empty(),
        }
    }

    /// A failed fetch with one of the `FETCH_*` error tags.
    pub fn failed(tag: u32, message: String) -> Self {
        AbiFetchOutcome {
            tag,
            response: AbiResponse::none(),
            message: AbiBuf::from_string(message),
        }
    }

    /// Takes ownership of a received outcome: the response, or the error tag and message.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's outcome contract.
    pub unsafe fn into_result(self) -> Result<(StatusCode, HeaderMap, ForeignBody), (u32, String)> {
        // SAFETY: forwarded to the caller.
        unsafe { self.into_result_with(|response| response.into_parts()) }
    }

    /// [`AbiFetchOutcome::into_result`] with the response taken by `take`.
    ///
    /// # Safety
    /// As for [`AbiFetchOutcome::into_result`]; `take` gets an owned response.
    unsafe fn into_result_with<T>(
        self,
        take: impl FnOnce(AbiResponse) -> Result<T, BoundaryError>,
    ) -> Result<T, (u32, String)> {
        // SAFETY: the message and the response are owned by us now.
        let message = unsafe { self.message.into_string_lossy() };
        let response = take(self.response);
        match self.tag {
            FETCH_OK => response.map_err(|e| (FETCH_OTHER, format!("invalid response: {e}"))),
            tag => Err((tag, message)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Plugin side: the descriptor and the handler glue used by `export_app!`
// ---------------------------------------------------------------------------------------------

/// The app type [`export_app!`](crate::export_app) generates. Not public API.
pub trait App {
    /// Whether the author gave an `init` hook.
    const HAS_INIT: bool = false;
    /// Whether the author gave a `shutdown` hook.
    const HAS_SHUTDOWN: bool = false;

    /// Starts the author's handler; `export_app!` implements it with [`serve`].
    fn handle(req: crate::Request, host: crate::Host) -> FfiFuture<AbiHandleOutcome>;

    /// Runs the author's `init` hook.
    fn init(_config: crate::AppConfig, _host: crate::Host) -> crate::__private::HookFuture {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Runs the author's `shutdown` hook.
    fn shutdown(_host: crate::Host) -> crate::__private::HookFuture {
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
        request.map(|request| A::handle(request, crate::Host::from_handle(host)))
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
    F::Output: crate::IntoResponse,
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

impl<R: crate::IntoResponse> AppOutcome<R> for Answer {
    type Abi = AbiHandleOutcome;
    fn done(answer: R) -> AbiHandleOutcome {
        AbiHandleOutcome::ok(crate::IntoResponse::into_response(answer).into_abi())
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
        config.map(|config| A::init(config, crate::Host::from_handle(host)))
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
    match catch(move || A::shutdown(crate::Host::from_handle(host))) {
        Ok(future) => run_hook(future),
        Err(panic) => {
            std::future::ready(AbiHookOutcome::failed(OUTCOME_PANICKED, panic)).into_ffi()
        }
    }
}

fn run_hook(future: crate::__private::HookFuture) -> FfiFuture<AbiHookOutcome> {
    FfiFuture::boxed(future, poll_app::<crate::__private::HookFuture, HookDone>)
}

/// Borrowed settings built from a map; keep it alive while the [`AbiSettings`] from
/// [`SettingList::as_abi`] is in use.
#[derive(Debug, Default)]
pub struct SettingList(Vec<AbiSetting>);

impl SettingList {
    /// Borrows every entry of `settings`.
    pub fn new(settings: &std::collections::BTreeMap<String, String>) -> Self {
        SettingList(
            settings
                .iter()
                .map(|(key, value)| AbiSetting {
                    key: AbiStr::new(key.as_bytes()),
                    value: AbiStr::new(value.as_bytes()),
                })
                .collect(),
        )
    }

    /// The ABI view of the list.
    pub fn as_abi(&self) -> AbiSettings {
        AbiSettings {
            ptr: self.0.as_ptr(),
            len: self.0.len(),
        }
    }
}

/// Copies borrowed settings into an [`AppConfig`](crate::AppConfig).
///
/// # Safety
/// `settings` must satisfy the ABI's borrowed contract for the duration of this call.
unsafe fn settings_from_abi(settings: AbiSettings) -> Result<crate::AppConfig, BoundaryError> {
    let list: &[AbiSetting] = if settings.ptr.is_null() || settings.len == 0 {
        &[]
    } else {
        // SAFETY: borrowed contract: `ptr[..len]` is a readable array of `AbiSetting`.
        unsafe { std::slice::from_raw_parts(settings.ptr, settings.len) }
    };
    let mut map = std::collections::BTreeMap::new();
    for setting in list {
        // SAFETY: each key and value is borrowed under the same contract as the array.
        let (key, value) = unsafe {
            (
                setting.key.to_str("setting name")?,
                setting.value.to_str("setting value")?,
            )
        };
        map.insert(key.to_owned(), value.to_owned());
    }
    Ok(crate::AppConfig::new(map))
}

impl AbiHookOutcome {
    /// The hook succeeded.
    pub fn ok() -> Self {
        AbiHookOutcome {
            tag: OUTCOME_OK,
            message: AbiBuf::empty(),
        }
    }

    /// The hook failed (`OUTCOME_ERROR`) or panicked (`OUTCOME_PANICKED`).
    pub fn failed(tag: u32, message: String) -> Self {
        AbiHookOutcome {
            tag,
            message: AbiBuf::from_string(message),
        }
    }

    /// Takes ownership of a received outcome.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's outcome contract.
    pub unsafe fn into_result(self) -> Result<(), HandleFailure> {
        // SAFETY: the message is owned by us now.
        let message = unsafe { self.message.into_string_lossy() };
        match self.tag {
            OUTCOME_OK => Ok(()),
            OUTCOME_PANICKED => Err(HandleFailure::Panicked(message)),
            OUTCOME_ERROR => Err(HandleFailure::Failed(message)),
            other => Err(HandleFailure::Invalid(format!(
                "unknown outcome tag {other}"
            ))),
        }
    }
}

/// Converts a host's fetch outcome into the SDK's result.
pub(crate) fn fetch_result(
    outcome: AbiFetchOutcome,
    buffer_limit: Option<u64>,
) -> Result<crate::FetchResponse, crate::FetchError> {
    use crate::FetchErrorKind as Kind;
    // SAFETY: the outcome was returned by the host's fetch future and is owned by us; its
    // headers stay lent to the response until it drops them.
    let taken = unsafe { outcome.into_result_with(|response| response.into_lent_parts()) };
    match taken {
        Ok((status, headers, body)) => {
            let headers = crate::headers::Headers::lent(headers);
            Ok(
                crate::FetchResponse::new(status, headers, crate::Body::from_foreign(body))
                    .with_buffer_limit(buffer_limit),
            )
        }
        Err((tag, message)) => {
            let kind = match tag {
                FETCH_INVALID_REQUEST => Kind::InvalidRequest,
                FETCH_CONNECT => Kind::Connect,
                FETCH_TIMEOUT => Kind::Timeout,
                FETCH_DENIED => Kind::Denied,
                _ => Kind::Other,
            };
            Err(crate::FetchError::new(kind, message))
        }
    }
}

/// Reads a borrowed request into an owned [`Request`](crate::Request).
///
/// # Safety
/// `req` must satisfy the ABI's borrowed contract for the duration of this call.
unsafe fn request_from_abi(
    req: &AbiRequest,
    body: ForeignBody,
    host: &HostHandle,
) -> Result<crate::Request, BoundaryError> {
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
    let lent = LentRequest {
        target: req.uri,
        prefix: req.mount_prefix,
        path: req.path,
        query: req.query,
        headers: req.headers,
        _lender: host.clone(),
    };
    Ok(crate::Request {
        method,
        version,
        peer_addr: socket_addr_from_abi(&req.peer_addr),
        local_addr: socket_addr_from_abi(&req.local_addr),
        head: crate::request::Head::lent(lent),
        body: crate::Body::from_foreign(body),
    })
}

/// The parts of a request the host lends (ABI 1.3), read in place: the target, the mount
/// prefix, the path, the query and the headers stay valid, unchanged, for as long as a host
/// reference is held, and this holds one. Copying them here instead, during `handle`, took
/// two allocations and a check of every byte per request; the host's one copy into the
/// request's scope needs neither.
pub(crate) struct LentRequest {
    target: AbiStr,
    prefix: AbiStr,
    path: AbiStr,
    query: AbiStr,
    headers: AbiHeaders,
    _lender: HostHandle,
}

// SAFETY: the lent memory is immutable and owned by the host's request scope, which the host
// shares between threads (it is reference-counted with atomics); reading it from any thread,
// and releasing the reference from any thread, is what the ABI allows.
unsafe impl Send for LentRequest {}
// SAFETY: as above: nothing here is ever written through.
unsafe impl Sync for LentRequest {}

impl LentRequest {
    fn text(&self, text: AbiStr) -> &str {
        // SAFETY: lent memory, valid while `_lender` is held (ABI 1.3), which outlives `&self`;
        // the ABI promises UTF-8 for a lent request's strings.
        unsafe { std::str::from_utf8_unchecked(text.as_bytes()) }
    }

    /// The request target as received.
    pub(crate) fn target(&self) -> &str {
        self.text(self.target)
    }

    /// The mount prefix.
    pub(crate) fn prefix(&self) -> &str {
        self.text(self.prefix)
    }

    /// The path below the mount.
    pub(crate) fn path(&self) -> &str {
        self.text(self.path)
    }

    /// The query, without `?`.
    pub(crate) fn query(&self) -> &str {
        self.text(self.query)
    }

    /// The headers as a map (values copied). The ABI promises valid names and values; one that
    /// is not would be skipped, not trusted.
    pub(crate) fn header_map(&self) -> HeaderMap {
        // SAFETY: lent memory, valid while `_lender` is held (ABI 1.3).
        unsafe { valid_headers(self.headers) }
    }
}

impl fmt::Debug for LentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentRequest")
            .field("target", &self.target())
            .field("prefix", &self.prefix())
            .finish_non_exhaustive()
    }
}

/// Converts a socket address for the ABI.
#[inline]
pub fn socket_addr_to_abi(addr: Option<std::net::SocketAddr>) -> AbiSocketAddr {
    let mut out = AbiSocketAddr {
        family: ADDR_NONE,
        port: 0,
        ip: [0; 16],
        scope_id: 0,
    };
    match addr {
        Some(std::net::SocketAddr::V4(v4)) => {
            out.family = ADDR_V4;
            out.port = v4.port();
            out.ip[..4].copy_from_slice(&v4.ip().octets());
        }
        Some(std::net::SocketAddr::V6(v6)) => {
            out.family = ADDR_V6;
            out.port = v6.port();
            out.ip = v6.ip().octets();
            out.scope_id = v6.scope_id();
        }
        None => {}
    }
    out
}

/// Reads a socket address from the ABI (`None` for [`ADDR_NONE`] or an unknown family).
pub fn socket_addr_from_abi(addr: &AbiSocketAddr) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match addr.family {
        ADDR_V4 => {
            let ip = Ipv4Addr::new(addr.ip[0], addr.ip[1], addr.ip[2], addr.ip[3]);
            Some(SocketAddrV4::new(ip, addr.port).into())
        }
        ADDR_V6 => {
            let ip = Ipv6Addr::from(addr.ip);
            Some(SocketAddrV6::new(ip, addr.port, 0, addr.scope_id).into())
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Plugin side: calling the host
// ---------------------------------------------------------------------------------------------

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
    pub fn fetch(
        &self,
        method: &str,
        url: &str,
        headers: &HeaderMap,
        body: AbiBody,
        timeout_ms: u64,
    ) -> FfiFuture<AbiFetchOutcome> {
        let list = HeaderList::new(headers);
        let req = AbiFetchRequest {
            method: AbiStr::new(method.as_bytes()),
            url: AbiStr::new(url.as_bytes()),
            headers: list.as_abi(),
            timeout_ms,
        };
        // SAFETY: `ctx` is a live reference we own; `req` and everything it points to outlive
        // the call; `body` moves to the host.
        unsafe { (self.vtable().fetch)(self.0.ctx, &req, body) }
    }
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

#[cfg(test)]
mod tests;
