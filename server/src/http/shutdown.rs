//! The server's shutdown, as connections and streaming responses see it.
//!
//! hyper-util's graceful shutdown tells HTTP/2 connections itself; HTTP/1.1 connections are
//! served with upgrades (WebSockets), which it cannot watch, so they wait for this signal and
//! start hyper's graceful shutdown on their own. A streaming response that waits for its app
//! when the signal comes (server-sent events, say) ends there, so that it does not hold the
//! drain until its timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// See the module documentation. Shared by every connection.
#[derive(Debug, Default)]
pub struct Shutdown {
    started: AtomicBool,
    notify: Arc<Notify>,
}

impl Shutdown {
    /// Signals the shutdown to everyone waiting, and to everyone who asks later.
    pub fn begin(&self) {
        self.started.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Whether the shutdown has begun.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Returns once the shutdown has begun.
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if self.started() {
            return;
        }
        notified.await;
    }
}

/// A streaming body's view of the shutdown: made when it first waits for its app, so that
/// bodies that never wait cost nothing.
#[derive(Debug)]
pub struct ShutdownWatch {
    shutdown: Arc<Shutdown>,
    notified: Option<Pin<Box<OwnedNotified>>>,
}

impl ShutdownWatch {
    /// Watches `shutdown`.
    pub fn new(shutdown: Arc<Shutdown>) -> Self {
        ShutdownWatch {
            shutdown,
            notified: None,
        }
    }

    /// Whether the shutdown has begun; if not, `cx` is woken when it does.
    pub fn poll_started(&mut self, cx: &mut Context<'_>) -> bool {
        if self.shutdown.started() {
            return true;
        }
        let notified = self
            .notified
            .get_or_insert_with(|| Box::pin(Arc::clone(&self.shutdown.notify).notified_owned()));
        if let Poll::Ready(()) = notified.as_mut().poll(cx) {
            return true;
        }
        self.shutdown.started()
    }
}
