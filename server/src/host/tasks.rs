//! Tasks an app spawns (ABI 1.4): background work owned by the app *version*, not by the
//! request that started it.
//!
//! A task runs on the host's runtime with no request deadline. It ends on its own, or is
//! cancelled — its future dropped — when the plugin drops its join handle or when the version
//! is retired ([`Tasks::cancel_all`], after the `shutdown` hook). The registry keeps only abort
//! handles, never the tasks' futures, and a task holds the registry rather than the version's
//! services: a task keeps its version's services alive only through the host references its own
//! future holds, and cancelling it drops those, so no task keeps a retired version alive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use berth_app::abi::{TASK_CANCELLED, TASK_DONE, TASK_PANICKED};
use berth_app::ffi::Panicked;
use tokio::task::AbortHandle;

use super::AbortOnDrop;

/// The live tasks of one app version.
#[derive(Debug, Default)]
pub struct Tasks {
    set: Arc<Mutex<TaskSet>>,
}

#[derive(Debug, Default)]
struct TaskSet {
    /// Every live task; `None` for an instant while it is being spawned.
    live: HashMap<u64, Option<AbortHandle>>,
    next_id: u64,
    /// Set when the version's tasks were cancelled: later spawns are cancelled at once.
    cancelled: bool,
}

fn lock(set: &Mutex<TaskSet>) -> MutexGuard<'_, TaskSet> {
    set.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes a task out of the registry when it ends, however it ends.
struct Registered {
    set: Arc<Mutex<TaskSet>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.set).live.remove(&self.id);
    }
}

impl Tasks {
    /// Runs `task` on `runtime` as a task of the version of `app`. The returned future
    /// resolves to [`TASK_DONE`], [`TASK_PANICKED`] (the panic is logged with the app's name)
    /// or [`TASK_CANCELLED`]; dropping it cancels the task. Once the version's tasks were
    /// cancelled, a new one is dropped at once and its future resolves to `TASK_CANCELLED`.
    pub fn spawn<F>(
        &self,
        runtime: &tokio::runtime::Handle,
        app: &Arc<str>,
        task: F,
    ) -> impl Future<Output = u32> + Send + use<F>
    where
        F: Future<Output = Result<u32, Panicked>> + Send + 'static,
    {
        use futures_util::future::Either;
        let id = {
            let mut set = lock(&self.set);
            if set.cancelled {
                None
            } else {
                let id = set.next_id;
                set.next_id += 1;
                set.live.insert(id, None);
                Some(id)
            }
        };
        // Dropped outside the lock: dropping the plugin's future may call back into the host.
        let Some(id) = id else {
            drop(task);
            return Either::Left(std::future::ready(TASK_CANCELLED));
        };
        let registered = Registered {
            set: Arc::clone(&self.set),
            id,
        };
        let app = Arc::clone(app);
        let run = async move {
            let _registered = registered;
            match super::calls::watched(&app, "task", None, task).await {
                Ok(_) => TASK_DONE,
                Err(Panicked) => {
                    let app = &*app;
                    tracing::error!(target: "berth::app", app, "a spawned task panicked; it has ended");
                    TASK_PANICKED
                }
            }
        };
        let handle = runtime.spawn(run);
        {
            let mut set = lock(&self.set);
            if set.cancelled {
                handle.abort();
            } else if let Some(slot) = set.live.get_mut(&id) {
                *slot = Some(handle.abort_handle());
            }
        }
        let joined = AbortOnDrop(handle);
        Either::Right(async move {
            match joined.await {
                Ok(outcome) => outcome,
                Err(error) if error.is_cancelled() => TASK_CANCELLED,
                // The host's own code around the plugin's future panicked.
                Err(_) => TASK_PANICKED,
            }
        })
    }

    /// How many tasks of the version are running.
    pub fn live(&self) -> usize {
        lock(&self.set).live.len()
    }

    /// Cancels every task of the version, and every one spawned from now on: each task's
    /// future is dropped (on the runtime, at its next turn) and its join future resolves to
    /// [`TASK_CANCELLED`].
    pub fn cancel_all(&self) {
        let handles: Vec<AbortHandle> = {
            let mut set = lock(&self.set);
            set.cancelled = true;
            set.live.values_mut().filter_map(Option::take).collect()
        };
        for handle in handles {
            handle.abort();
        }
    }
}

/// Waits (a few seconds at most) until `done` holds: for tests of what tasks do in the
/// background.
#[cfg(test)]
pub(crate) async fn until(done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting");
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// Sets its flag when dropped: tells when a task's future is gone.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A task that never ends, and the flag its future sets when dropped.
    fn endless() -> (
        impl Future<Output = Result<u32, Panicked>> + Send + 'static,
        Arc<AtomicBool>,
    ) {
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = DropFlag(Arc::clone(&dropped));
        let task = async move {
            let _flag = flag;
            std::future::pending::<()>().await;
            Ok(0)
        };
        (task, dropped)
    }

    fn app() -> Arc<str> {
        Arc::from("tasker")
    }

    #[tokio::test]
    async fn a_task_ends_done_or_panicked() {
        let tasks = Tasks::default();
        let runtime = tokio::runtime::Handle::current();
        let done = tasks.spawn(&runtime, &app(), async { Ok(7) });
        assert_eq!(done.await, TASK_DONE);
        let panicked = tasks.spawn(&runtime, &app(), async { Err(Panicked) });
        assert_eq!(panicked.await, TASK_PANICKED);
        until(|| tasks.live() == 0).await;
    }

    #[tokio::test]
    async fn retiring_cancels_every_task_and_later_ones() {
        let tasks = Tasks::default();
        let runtime = tokio::runtime::Handle::current();
        let (task, dropped) = endless();
        let joined = tasks.spawn(&runtime, &app(), task);
        let (other, other_dropped) = endless();
        let _other_joined = tasks.spawn(&runtime, &app(), other);
        assert_eq!(tasks.live(), 2);

        tasks.cancel_all();
        assert_eq!(joined.await, TASK_CANCELLED);
        until(|| dropped.load(Ordering::SeqCst) && other_dropped.load(Ordering::SeqCst)).await;
        until(|| tasks.live() == 0).await;

        // A task spawned after the version was retired never runs.
        let (late, late_dropped) = endless();
        assert_eq!(tasks.spawn(&runtime, &app(), late).await, TASK_CANCELLED);
        assert!(late_dropped.load(Ordering::SeqCst));
        assert_eq!(tasks.live(), 0);
    }

    #[tokio::test]
    async fn dropping_the_join_future_cancels_the_task() {
        let tasks = Tasks::default();
        let runtime = tokio::runtime::Handle::current();
        let (task, dropped) = endless();
        let joined = tasks.spawn(&runtime, &app(), task);
        tokio::task::yield_now().await;
        assert_eq!(tasks.live(), 1);
        drop(joined);
        until(|| dropped.load(Ordering::SeqCst)).await;
        until(|| tasks.live() == 0).await;
    }
}
