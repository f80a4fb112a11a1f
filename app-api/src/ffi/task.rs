//! Tasks the plugin spawns on the host (ABI 1.4): the future handed to `HostVTable::spawn`,
//! and the slot its output comes back through.
//!
//! The ABI's task future resolves to a `TASK_*` tag only, so the task's output (any Rust type)
//! goes through a [`TaskSlot`] that the task fills before it says `TASK_DONE`, and that the
//! join side reads once the host reports that tag.

use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};

use crate::abi::{FfiContext, FfiFuture, FfiPoll, LOG_ERROR, TASK_DONE, TASK_PANICKED};
use crate::ffi::host_handle::HostHandle;
use crate::ffi::panic::catch;

/// Where a task leaves its output (`Ok`) or its panic's message (`Err`), for whoever joins it.
#[derive(Debug)]
pub(crate) struct TaskSlot<T>(Mutex<SlotState<T>>);

#[derive(Debug)]
struct SlotState<T> {
    result: Option<Result<T, String>>,
    /// The joiner's waker, for tasks that are not run by the host (the mock host's).
    waker: Option<Waker>,
}

impl<T> TaskSlot<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(TaskSlot(Mutex::new(SlotState {
            result: None,
            waker: None,
        })))
    }

    /// Leaves the task's result and wakes a joiner that waits on the slot itself.
    pub(crate) fn set(&self, result: Result<T, String>) {
        let waker = {
            let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            state.result = Some(result);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Takes the result, if the task left one.
    pub(crate) fn take(&self) -> Option<Result<T, String>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .result
            .take()
    }

    /// Takes the result, or registers `cx`'s waker for [`set`](TaskSlot::set).
    #[cfg(feature = "testing")]
    pub(crate) fn poll_take(&self, cx: &mut std::task::Context<'_>) -> Poll<Result<T, String>> {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match state.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// A spawned future with the slot for its output and a host reference to log its panic with.
struct Task<F: Future> {
    future: F,
    slot: Arc<TaskSlot<F::Output>>,
    host: HostHandle,
}

/// `future` as the ABI's task: it ends with `TASK_DONE` after leaving its output in `slot`, or
/// with `TASK_PANICKED` after logging the panic through `host` ("task panicked: ...") and
/// leaving its message in `slot`. `host` should be a task reference (`task_ctx`), so that the
/// task keeps no request alive.
pub(crate) fn task_future<F>(
    future: F,
    slot: Arc<TaskSlot<F::Output>>,
    host: HostHandle,
) -> FfiFuture<u32>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    FfiFuture::boxed(Task { future, slot, host }, poll_task::<F>)
}

ffi_fn! {
    /// Polls a [`Task`] boxed by [`task_future`]. A panic in the author's future is caught
    /// here, so that its message reaches the log and the joiner; the macro's own `catch` only
    /// covers this glue.
    ///
    /// # Safety
    /// The future contract: `fut_ptr` is the box `task_future` made, until `drop_fn`; `cx` is
    /// valid for the call; not polled again after `Ready`.
    unsafe fn poll_task<F: Future>(fut_ptr: *mut c_void, cx: *mut FfiContext<'_>) -> FfiPoll<u32> {
        // SAFETY: the caller's promise.
        let (task, cx) = unsafe { (&mut *fut_ptr.cast::<Task<F>>(), &mut *cx) };
        // SAFETY: the box pins the task until it is dropped, and `future` is never moved out.
        let future = unsafe { Pin::new_unchecked(&mut task.future) };
        match catch(|| cx.with_context(|cx| future.poll(cx))) {
            Ok(Poll::Pending) => FfiPoll::Pending,
            Ok(Poll::Ready(output)) => {
                task.slot.set(Ok(output));
                FfiPoll::Ready(TASK_DONE)
            }
            Err(message) => {
                task.host.log(LOG_ERROR, &format!("task panicked: {message}"));
                task.slot.set(Err(message));
                FfiPoll::Ready(TASK_PANICKED)
            }
        }
    } ?= |_| FfiPoll::Panicked
}
