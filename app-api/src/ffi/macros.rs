//! [`ffi_fn!`](crate::ffi_fn), the one way this crate (and the host) defines an `extern "C"`
//! function that the other side of the boundary calls.

/// Defines an `unsafe extern "C" fn` whose body runs under [`catch`](crate::ffi::catch), so
/// that a panic never unwinds into the other side: the function returns the fallback written
/// after `?=` instead, which receives the panic's message. Modelled on hyper's `ffi_fn!`
/// (`src/ffi/macros.rs`).
///
/// ```
/// use std::ffi::c_void;
///
/// berth_app::ffi_fn! {
///     /// Doubles `n`, or answers 0 if that panics.
///     ///
///     /// # Safety
///     /// None needed here; a real one states the ABI contract its arguments follow.
///     unsafe fn double(_ctx: *mut c_void, n: u64) -> u64 {
///         n.checked_mul(2).expect("small enough")
///     } ?= |_panic| 0
/// }
///
/// // SAFETY: `double` reads none of its pointers.
/// assert_eq!(unsafe { double(std::ptr::null_mut(), 21) }, 42);
/// // SAFETY: as above.
/// assert_eq!(unsafe { double(std::ptr::null_mut(), u64::MAX) }, 0);
/// ```
///
/// * Attributes and doc comments (its `# Safety` section) go first, then the visibility and
///   `unsafe fn`; the macro adds `extern "C"`.
/// * Generic parameters take at most one bound each, written inline (`<F: Future, X>`): the
///   macro has no `where` clause.
/// * The fallback is any expression, typed as the return type (`()` when there is none); it
///   may name the message, a `String` (with the panic's location when the plugin's panic hook
///   recorded it), or ignore it with `_`. A fallback that must not return (a waker that
///   panicked leaves the other side in an unknown state) can abort the process.
///
/// The host uses it from another crate as `berth_app::ffi_fn!`; it reaches `catch` through
/// `$crate::ffi`, so the caller needs no import. Not part of the app authors' API.
#[doc(hidden)]
#[macro_export]
macro_rules! ffi_fn {
    (
        $(#[$attr:meta])*
        $vis:vis unsafe fn $name:ident $(<$($gen:ident $(: $bound:path)?),+ $(,)?>)?
            ($($arg:tt : $arg_ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
        ?= |$panic:pat_param| $fallback:expr
    ) => {
        $(#[$attr])*
        $vis unsafe extern "C" fn $name $(<$($gen $(: $bound)?),+>)? ($($arg: $arg_ty),*) $(-> $ret)? {
            match $crate::ffi::catch(move || $body) {
                ::core::result::Result::Ok(value) => value,
                ::core::result::Result::Err($panic) => $fallback,
            }
        }
    };
}
