//! Panics at the boundary: [`catch`] turns one into its message, and the plugin's panic hook
//! keeps the message for the host instead of printing it.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

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
pub(super) fn install_panic_hook() {
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
