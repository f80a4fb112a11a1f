//! Futures and wakers across the boundary.
//!
//! async-ffi's ABI (see `abi::FfiFuture`), with one difference: a waker that crosses back to the
//! side that made it arrives as itself instead of wrapped once more. The host polls an app's
//! future with its task's waker, and the app polls host futures (a fetch, a timer, a body) with
//! the same context: the host futures now get the task's own waker, whose clones are reference
//! counts and which `will_wake` recognises from one poll to the next. Wrapped at each crossing, as
//! async-ffi does, every clone of it allocated on both sides, every wake walked both, and each
//! poll's fresh wrapper made hyper's and tokio's waker slots clone again.

use std::ffi::c_void;
use std::fmt;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::ptr;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use crate::abi::{FfiContext, FfiFuture, FfiPoll, FfiWakerBase, FfiWakerVTable};

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

/// A waker or a future panicked in a function the other side called: its state is unknown to
/// both sides, so neither may go on.
fn abort_after_panic(what: &str, panic: &str) -> ! {
    abort_with(&format!("berth: {what} panicked ({panic}); aborting\n"))
}

ffi_fn! {
    /// Clones one of this side's wakers as an owned one ([`OWNED_VTABLE`]).
    ///
    /// # Safety
    /// The ABI's waker contract: the other side calls it only through the vtable it came with,
    /// on a live base.
    unsafe fn clone_local(base: *const FfiWakerBase) -> *const FfiWakerBase {
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
    } ?= |panic| abort_after_panic("a waker's clone", &panic)
}

ffi_fn! {
    /// Wakes one of this side's wakers, keeping it.
    ///
    /// # Safety
    /// The ABI's waker contract: the other side calls it only through the vtable it came with,
    /// on a live base.
    unsafe fn wake_local_by_ref(base: *const FfiWakerBase) {
        // SAFETY: as in `clone_local`.
        if let Some(waker) = unsafe { local_waker(base) } {
            waker.wake_by_ref();
        }
    } ?= |panic| abort_after_panic("a waker's wake_by_ref", &panic)
}

ffi_fn! {
    /// `wake` or `drop` of a lent waker: the other side broke the contract.
    ///
    /// # Safety
    /// None: it aborts.
    unsafe fn misused_local(_: *const FfiWakerBase) {
        abort_with("berth: a lent waker was consumed across the boundary; aborting\n")
    } ?= |_| ()
}

/// Says why on stderr (without panicking if it cannot), then aborts.
fn abort_with(message: &str) -> ! {
    use std::io::Write as _;
    let _ = std::io::stderr().write_all(message.as_bytes());
    std::process::abort()
}

ffi_fn! {
    /// Wakes and frees an owned waker that [`clone_local`] made.
    ///
    /// # Safety
    /// `base` is an owned `LocalWaker` made by `clone_local` ([`OWNED_VTABLE`]), handed back
    /// once, by this or [`drop_owned`].
    unsafe fn wake_owned(base: *const FfiWakerBase) {
        // SAFETY: the caller's promise: `wake` consumes it.
        let waker = unsafe {
            let mut local = Box::from_raw(base.cast::<LocalWaker>().cast_mut());
            ManuallyDrop::take(&mut local.waker.owned)
        };
        waker.wake();
    } ?= |panic| abort_after_panic("a waker's wake", &panic)
}

ffi_fn! {
    /// Frees an owned waker that [`clone_local`] made.
    ///
    /// # Safety
    /// As for [`wake_owned`].
    unsafe fn drop_owned(base: *const FfiWakerBase) {
        // SAFETY: the caller's promise.
        unsafe {
            let mut local = Box::from_raw(base.cast::<LocalWaker>().cast_mut());
            ManuallyDrop::drop(&mut local.waker.owned);
        }
    } ?= |panic| abort_after_panic("a waker's drop", &panic)
}

// The four functions of FOREIGN_VTABLE: a Rust waker whose `data` is a waker base of the other
// side's, each forwarding to that base's own function.

/// Clones the other side's waker.
///
/// # Safety
/// `data` is a live waker base of the other side, which keeps the waker contract.
unsafe fn clone_foreign(data: *const ()) -> RawWaker {
    let base = data.cast::<FfiWakerBase>();
    // SAFETY: `data` is a live base (the caller's promise), its vtable the other side's.
    let cloned = unsafe { ((*(*base).vtable).clone)(base) };
    RawWaker::new(cloned.cast(), &FOREIGN_VTABLE)
}

/// Wakes and consumes the other side's waker.
///
/// # Safety
/// As for [`clone_foreign`]; an owned base is consumed exactly once, by this or
/// [`drop_foreign`].
unsafe fn wake_foreign(data: *const ()) {
    let base = data.cast::<FfiWakerBase>();
    // SAFETY: as in `clone_foreign`; the caller consumes an owned base only once.
    unsafe { ((*(*base).vtable).wake)(base) }
}

/// Wakes the other side's waker, keeping it.
///
/// # Safety
/// As for [`clone_foreign`].
unsafe fn wake_foreign_by_ref(data: *const ()) {
    let base = data.cast::<FfiWakerBase>();
    // SAFETY: as in `clone_foreign`.
    unsafe { ((*(*base).vtable).wake_by_ref)(base) }
}

/// Releases the other side's waker.
///
/// # Safety
/// As for [`wake_foreign`].
unsafe fn drop_foreign(data: *const ()) {
    let base = data.cast::<FfiWakerBase>();
    // SAFETY: as in `clone_foreign`; the caller consumes an owned base only once.
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
    pub(super) fn boxed<F: Send + 'static>(
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

ffi_fn! {
    /// The `poll_fn` of [`FfiFuture::new`]: polls `F`; a panic is `FfiPoll::Panicked`.
    ///
    /// # Safety
    /// The future contract: `fut_ptr` is the box [`FfiFuture::boxed`] made, until `drop_fn`;
    /// `cx` is valid for the call; not polled again after `Ready` or `Panicked`.
    unsafe fn poll_boxed<F: Future>(
        fut_ptr: *mut c_void,
        cx: *mut FfiContext<'_>,
    ) -> FfiPoll<F::Output> {
        // SAFETY: the caller's promise; the box pins the future until `drop_boxed`.
        let (future, cx) = unsafe { (Pin::new_unchecked(&mut *fut_ptr.cast::<F>()), &mut *cx) };
        match cx.with_context(|cx| future.poll(cx)) {
            Poll::Ready(output) => FfiPoll::Ready(output),
            Poll::Pending => FfiPoll::Pending,
        }
    } ?= |_| FfiPoll::Panicked
}

ffi_fn! {
    /// The `drop_fn` of [`FfiFuture::boxed`]: frees the box.
    ///
    /// # Safety
    /// `fut_ptr` is the box `FfiFuture::boxed` made, dropped exactly once, by its owner.
    unsafe fn drop_boxed<F>(fut_ptr: *mut c_void) {
        // SAFETY: the caller's promise.
        drop(unsafe { Box::from_raw(fut_ptr.cast::<F>()) })
    } ?= |panic| abort_after_panic("a future's drop", &panic)
}

// SAFETY: `FfiFuture::new` takes only `Send` futures, and the other side's futures are `Send`
// under the ABI contract (a host or app future may be polled from any runtime thread).
unsafe impl<T> Send for FfiFuture<T> {}

// SAFETY: a shared `&FfiFuture` can do nothing: polling takes `&mut` (through `Pin`) and dropping
// takes ownership, so sharing one between threads shares no access to the future behind it
// (as with tokio's `JoinHandle`, which is `Sync` for the same reason). This lets a type that
// holds one (a task's handle kept beside a pooled connection) be borrowed across an `.await`.
unsafe impl<T> Sync for FfiFuture<T> {}

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

#[cfg(test)]
mod tests {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::abi::*;

    /// A future that stays pending until opened, keeping the waker it was last polled with.
    #[derive(Clone, Default)]
    struct Gate(Arc<Mutex<(bool, Option<Waker>)>>);

    impl Gate {
        fn wait(&self) -> impl Future<Output = u32> + Send + 'static {
            let gate = self.clone();
            std::future::poll_fn(move |cx| {
                let mut state = gate.0.lock().expect("gate");
                if state.0 {
                    return Poll::Ready(7);
                }
                state.1 = Some(cx.waker().clone());
                Poll::Pending
            })
        }

        fn kept(&self) -> Option<Waker> {
            self.0.lock().expect("gate").1.clone()
        }

        fn open(&self) {
            let waker = {
                let mut state = self.0.lock().expect("gate");
                state.0 = true;
                state.1.take()
            };
            waker.expect("polled before").wake();
        }
    }

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct CountingWake(AtomicUsize);

    impl std::task::Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waker_that_crosses_back_to_its_maker_arrives_as_itself() {
        let counter = Arc::new(CountingWake::default());
        let waker = Waker::from(Arc::clone(&counter));
        let gate = Gate::default();
        // As the host polls an app's future, which polls a host future with the same context.
        let inner = FfiFuture::new(gate.wait());
        let mut outer = FfiFuture::new(async move { inner.await + 1 });
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut outer).poll(&mut cx).is_pending());
        let kept = gate.kept().expect("polled");
        assert!(
            kept.will_wake(&waker),
            "the innermost future got the poller's own waker"
        );
        gate.open();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut outer).poll(&mut cx), Poll::Ready(8));
    }

    #[test]
    fn futures_and_wakers_of_async_ffi_interoperate() {
        // Plugins built before Berth had its own types made and polled async-ffi's. The layouts
        // are the same; these check the behaviour, in both directions.
        let counter = Arc::new(CountingWake::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);

        // Theirs, polled as ours: our waker crosses to async-ffi's side, which clones and wakes it.
        let gate = Gate::default();
        let theirs = async_ffi::FfiFuture::new(gate.wait());
        // SAFETY: `FfiFuture` reproduces async-ffi's `FfiFuture` (ABI version 2) field for field.
        let mut ours: FfiFuture<u32> = unsafe { std::mem::transmute(theirs) };
        assert!(Pin::new(&mut ours).poll(&mut cx).is_pending());
        gate.open();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        assert_eq!(Pin::new(&mut ours).poll(&mut cx), Poll::Ready(7));
        drop(ours);

        // Ours, polled as theirs: async-ffi's waker crosses to us; a clone of it wakes the poller.
        let gate = Gate::default();
        // SAFETY: as above.
        let mut theirs: async_ffi::FfiFuture<u32> =
            unsafe { std::mem::transmute(FfiFuture::new(gate.wait())) };
        assert!(Pin::new(&mut theirs).poll(&mut cx).is_pending());
        gate.open();
        assert_eq!(counter.0.load(Ordering::SeqCst), 2);
        assert_eq!(Pin::new(&mut theirs).poll(&mut cx), Poll::Ready(7));
    }

    #[test]
    fn a_panicking_poll_is_reported_not_unwound_across() {
        let mut future = FfiFuture::new(std::future::poll_fn(|_| -> Poll<u32> { panic!("boom") }));
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let poll_fn = future.poll_fn;
        let fut_ptr = future.fut_ptr;
        // SAFETY: polling the future through its own function, as the other side would.
        let polled = cx.with_ffi_context(|fcx| unsafe { poll_fn(fut_ptr, fcx) });
        assert!(matches!(polled, FfiPoll::Panicked));
        // Polled as a Rust future, the panic resumes on this side.
        let resumed = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut future).poll(&mut cx)));
        assert!(resumed.is_err());
        // Polled with `poll_caught` (as the host polls an app's future), it is an error instead.
        let mut future = FfiFuture::new(std::future::poll_fn(|_| -> Poll<u32> { panic!("boom") }));
        assert_eq!(future.poll_caught(&mut cx), Poll::Ready(Err(Panicked)));
        let mut ready = FfiFuture::new(std::future::ready(7_u32));
        assert_eq!(ready.poll_caught(&mut cx), Poll::Ready(Ok(7)));
    }
}
