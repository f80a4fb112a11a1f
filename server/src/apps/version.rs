//! One loaded version of an app, and the requests in flight on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::host::AppServices;
use crate::host::calls;
use crate::plugin::Plugin;

/// Request counters of one app, kept across its versions.
#[derive(Debug, Default)]
pub struct AppStats {
    /// Requests routed to the app.
    pub requests: AtomicU64,
    /// Requests that ended in a 5xx (panics, time-outs, invalid answers included).
    pub errors: AtomicU64,
    /// Requests whose response has not finished yet.
    pub in_flight: AtomicUsize,
}

/// One loaded version of an app.
#[derive(Debug)]
pub struct AppVersion {
    /// Unique per load, in load order.
    pub id: u64,
    /// The app's name.
    pub name: Arc<str>,
    /// Where it is mounted.
    pub mount: String,
    /// The file it was loaded from (in the apps directory).
    pub file: PathBuf,
    /// SHA-256 of the file's contents when loaded.
    pub file_hash: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Time limit for its requests until the response head.
    pub request_timeout: Duration,
    /// Time limit for its lifecycle hooks.
    pub hook_timeout: Duration,
    /// Largest request body it accepts.
    pub max_body_size: u64,
    /// Its WebSocket settings.
    pub websocket: Arc<crate::host::websocket::WsSettings>,
    /// Its name, outbound client and rules, shared by all its requests.
    pub services: Arc<AppServices>,
    /// The plugin.
    pub plugin: Plugin,
    /// The app's counters (shared with its other versions).
    pub stats: Arc<AppStats>,
    /// Its own requests in flight.
    pub(super) requests: Requests,
}

/// Counts the requests in flight on one version, and wakes whoever waits for the last to end.
#[derive(Debug, Default)]
pub(super) struct Requests {
    in_flight: AtomicUsize,
    idle: Notify,
    /// Set once someone waits for `idle`: until then the last request out has no one to
    /// notify, and skips `Notify`'s lock.
    awaited: AtomicBool,
}

impl AppVersion {
    /// Counts a request in; the guard counts it out when dropped (after its response body).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.in_flight.fetch_add(1, Ordering::SeqCst);
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            version: Arc::clone(self),
            _counted: calls::request_begun(),
        }
    }

    /// Requests on this version whose response has not finished.
    pub fn in_flight(&self) -> usize {
        self.requests.in_flight.load(Ordering::SeqCst)
    }

    /// Returns once no request is in flight on this version.
    pub(super) async fn wait_idle(&self) {
        // Before the count is read: a request that ends after the read sees the flag (both
        // are sequentially consistent) and notifies.
        self.requests.awaited.store(true, Ordering::SeqCst);
        loop {
            let notified = self.requests.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The version as the admin API and the listing describe it.
    pub fn summary(&self) -> Value {
        json!({
            "id": self.id,
            "name": &*self.name,
            "version": self.plugin.version,
            "mount": self.mount,
            "file": self.file.display().to_string(),
            "file_hash": self.file_hash,
            "loaded_at": humantime::format_rfc3339_seconds(self.loaded_at).to_string(),
            "sdk_version": self.plugin.sdk_version,
            "abi": format!("{}.{}", berth_app::abi::ABI_MAJOR, self.plugin.abi_minor),
            "sockets": self.services.sockets.open(),
            "tasks": self.services.tasks.live(),
            "websockets": self.services.websockets.open(),
        })
    }
}

/// A request in flight on a version; see [`AppVersion::begin`].
#[derive(Debug)]
pub struct InFlight {
    version: Arc<AppVersion>,
    /// In the process's count, which a supervisor reads.
    _counted: calls::RequestCount,
}

impl InFlight {
    /// The version the request runs on.
    pub fn version(&self) -> &Arc<AppVersion> {
        &self.version
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.version.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let requests = &self.version.requests;
        if requests.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && requests.awaited.load(Ordering::SeqCst)
        {
            requests.idle.notify_waiters();
        }
    }
}
