//! Background tasks on the host's runtime: [`JoinHandle`] and [`JoinError`], from
//! [`Host::spawn`](crate::Host::spawn).
//!
//! A plugin cannot use `tokio::spawn` (its copy of tokio has no runtime), so the host runs the
//! task for it. Unlike tokio's, a task here lives only as long as its [`JoinHandle`]: dropping
//! the handle cancels the task. That is what a connection driver kept beside its client wants
//! (the pool drops both together), and it means no task can outlive everything that refers to
//! it. The host also cancels every task of an app version after its `shutdown` hook.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::abi::{FfiFuture, TASK_DONE, TASK_PANICKED};
use crate::ffi::future::Panicked;
use crate::ffi::host_handle::HostHandle;
use crate::ffi::task::{TaskSlot, task_future};

/// A spawned task: await it for the task's output, or drop it to cancel the task.
///
/// Resolves to `Err(JoinError)` when the task panicked (the panic is also in the host's log as
/// "task panicked: ...") or was cancelled by the host (its app version was retired).
#[must_use = "dropping a JoinHandle cancels its task"]
pub struct JoinHandle<T> {
    inner: JoinInner<T>,
}

enum JoinInner<T> {
    /// A task on the host: its join future and the slot its output comes back through.
    Real {
        join: FfiFuture<u32>,
        slot: Arc<TaskSlot<T>>,
    },
    /// A task on a thread of the mock host's; the abort handle cancels it.
    #[cfg(feature = "testing")]
    Mock {
        slot: Arc<TaskSlot<T>>,
        abort: futures_util::future::AbortHandle,
    },
    /// A task that could not be started.
    Failed(Option<JoinError>),
    /// Resolved already.
    Done,
}

impl<T: Send + 'static> JoinHandle<T> {
    /// Spawns `future` on the host behind `handle`, with `task` (a request-free reference) to
    /// log its panic with.
    pub(crate) fn spawn_real<F>(handle: &HostHandle, task: HostHandle, future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let slot = TaskSlot::new();
        let inner = match handle.spawn(task_future(future, Arc::clone(&slot), task)) {
            Some(join) => JoinInner::Real { join, slot },
            None => JoinInner::Failed(Some(JoinError::cancelled(
                "this host cannot spawn tasks (ABI < 1.4)",
            ))),
        };
        JoinHandle { inner }
    }

    /// Runs `future` on a thread of its own until it ends or the handle is dropped, as the
    /// mock host's stand-in for the host's runtime. A panic is logged through `host` like the
    /// real host's.
    #[cfg(feature = "testing")]
    pub(crate) fn spawn_mock<F>(host: crate::Host, future: F) -> Self
    where
        F: Future<Output = T> + Send + 'static,
    {
        let slot = TaskSlot::new();
        let (abort, registration) = futures_util::future::AbortHandle::new_pair();
        let task = futures_util::future::Abortable::new(future, registration);
        let kept = Arc::clone(&slot);
        let thread = std::thread::Builder::new()
            .name("berth-mock-task".to_owned())
            .spawn(
                move || match crate::ffi::catch(|| futures_executor::block_on(task)) {
                    Ok(Ok(output)) => kept.set(Ok(output)),
                    Ok(Err(futures_util::future::Aborted)) => {}
                    Err(message) => {
                        crate::error!(host, "task panicked: {message}");
                        kept.set(Err(message));
                    }
                },
            );
        let inner = match thread {
            Ok(_) => JoinInner::Mock { slot, abort },
            Err(err) => JoinInner::Failed(Some(JoinError::cancelled(format!(
                "the mock host could not start a thread: {err}"
            )))),
        };
        JoinHandle { inner }
    }
}

impl<T> JoinHandle<T> {
    /// Cancels the task (as dropping the handle does); it stops at its next `.await`.
    pub fn abort(self) {
        drop(self);
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let result = match &mut this.inner {
            JoinInner::Real { join, slot } => match join.poll_caught(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(TASK_DONE | TASK_PANICKED)) => match slot.take() {
                    Some(Ok(output)) => Ok(output),
                    Some(Err(message)) => Err(JoinError::panicked(message)),
                    None => Err(JoinError::cancelled("the task ended without an output")),
                },
                Poll::Ready(Ok(_)) => Err(JoinError::cancelled(
                    "the task was cancelled: its app version was retired",
                )),
                Poll::Ready(Err(Panicked)) => {
                    Err(JoinError::cancelled("the host's join future panicked"))
                }
            },
            #[cfg(feature = "testing")]
            JoinInner::Mock { slot, .. } => match slot.poll_take(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(output)) => Ok(output),
                Poll::Ready(Err(message)) => Err(JoinError::panicked(message)),
            },
            JoinInner::Failed(error) => Err(error
                .take()
                .unwrap_or_else(|| JoinError::cancelled("polled after completion"))),
            JoinInner::Done => Err(JoinError::cancelled("polled after completion")),
        };
        this.inner = JoinInner::Done;
        Poll::Ready(result)
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        // The real join future cancels its task when dropped; the mock's thread needs telling.
        #[cfg(feature = "testing")]
        if let JoinInner::Mock { abort, .. } = &self.inner {
            abort.abort();
        }
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinHandle")
    }
}

/// Why a task has no output: it panicked, or it was cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinError {
    panicked: bool,
    message: String,
}

impl JoinError {
    fn panicked(message: String) -> Self {
        JoinError {
            panicked: true,
            message,
        }
    }

    fn cancelled(message: impl Into<String>) -> Self {
        JoinError {
            panicked: false,
            message: message.into(),
        }
    }

    /// Whether the task panicked.
    pub fn is_panic(&self) -> bool {
        self.panicked
    }

    /// Whether the task was cancelled (or could not be started).
    pub fn is_cancelled(&self) -> bool {
        !self.panicked
    }

    /// The panic's message, or why the task was cancelled.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.panicked {
            write!(f, "task panicked: {}", self.message)
        } else {
            write!(f, "task cancelled: {}", self.message)
        }
    }
}

impl std::error::Error for JoinError {}
