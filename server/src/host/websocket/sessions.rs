//! The live WebSocket sessions of one app version: counted for the admin API, closed together
//! when a reload's grace runs out (1012) or the server shuts down (`ws_shutdown_code`), and
//! waited for during the drain. hyper's graceful shutdown does not see upgraded connections, so
//! this registry is how Berth does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::Notify;

use super::WsShared;
use crate::host::SessionSocket as _;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    set: Mutex<Set>,
    /// Notified when the last session ends.
    empty: Notify,
}

#[derive(Debug, Default)]
struct Set {
    live: HashMap<u64, Weak<WsShared>>,
    next_id: u64,
    /// Set by [`Sessions::close_all`] with `refuse_new`: later sessions are closed with it at
    /// once.
    closing: Option<(u16, String)>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Set> {
        self.set.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A session's place in the registry, given up when dropped (when its connection has closed).
#[derive(Debug)]
pub struct Registration {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut set = self.inner.lock();
        set.live.remove(&self.id);
        let empty = set.live.is_empty();
        drop(set);
        if empty {
            self.inner.empty.notify_waiters();
        }
    }
}

impl Sessions {
    /// Counts `socket` in until the registration is dropped. After a shutdown's
    /// [`Sessions::close_all`], it is asked to close at once.
    pub fn register(&self, socket: &Arc<WsShared>) -> Registration {
        let mut set = self.inner.lock();
        let id = set.next_id;
        set.next_id += 1;
        set.live.insert(id, Arc::downgrade(socket));
        let closing = set.closing.clone();
        drop(set);
        if let Some((code, reason)) = closing {
            socket.close(code, &reason);
        }
        Registration {
            inner: Arc::clone(&self.inner),
            id,
        }
    }

    /// How many sessions are open.
    pub fn open(&self) -> usize {
        self.inner.lock().live.len()
    }

    /// Asks every open session to close with `code` and `reason`; with `refuse_new`, every
    /// later one too.
    pub fn close_all(&self, code: u16, reason: &str, refuse_new: bool) {
        let mut set = self.inner.lock();
        if refuse_new {
            set.closing = Some((code, reason.to_owned()));
        }
        let live: Vec<_> = set.live.values().filter_map(Weak::upgrade).collect();
        drop(set);
        for socket in live {
            socket.close(code, reason);
        }
    }

    /// Returns once no session is open.
    pub async fn wait_closed(&self) {
        loop {
            let notified = self.inner.empty.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn counts_closes_and_waits() {
        let sessions = Sessions::default();
        let socket = Arc::new(WsShared::new(1));
        let registration = sessions.register(&socket);
        assert_eq!(sessions.open(), 1);
        sessions.close_all(1001, "going away", true);
        assert_eq!(
            socket.take_host_close(),
            Some((1001, "going away".to_owned()))
        );
        let late = Arc::new(WsShared::new(1));
        let late_registration = sessions.register(&late);
        assert_eq!(
            late.take_host_close(),
            Some((1001, "going away".to_owned()))
        );
        let waiting = tokio::time::timeout(Duration::from_millis(50), sessions.wait_closed());
        assert!(waiting.await.is_err(), "two are open");
        drop(registration);
        drop(late_registration);
        tokio::time::timeout(Duration::from_secs(5), sessions.wait_closed())
            .await
            .expect("all closed");
        assert_eq!(sessions.open(), 0);
    }
}
