//! The live set of apps: loading, hot swapping, retiring, and what the admin API reports.
//!
//! The routing table is an immutable [`Router`] behind an [`ArcSwap`]: a request loads the
//! current table once and clones the `Arc` of the version it is routed to, so a swap replaces
//! the table atomically for new requests while requests in flight keep their version alive.
//! Each request holds an [`InFlight`](super::InFlight) guard until its response body is
//! finished; a replaced or removed version is *retired* — its `shutdown` hook run — only once
//! its count of requests in flight reaches zero. Its library stays mapped (see `plugin`), so nothing a retired version
//! left behind (a waker, a thread-local destructor) can jump into unmapped code.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use futures_util::FutureExt as _;
use serde_json::{Value, json};

use crate::apps::loader::{self, FileImage, LoadError, ShadowDir, is_library_path, read_image};
use crate::apps::router::Router;
use crate::apps::version::{AppStats, AppVersion};
use crate::config::Config;
use crate::host::{AppServices, Broker, Outbound, calls};
use crate::plugin::{self, RequestScope};

/// The last load failure of a file.
#[derive(Debug, Clone)]
struct Failure {
    error: LoadError,
    hash: Option<String>,
    at: SystemTime,
}

/// All apps, their versions, and the machinery to change them while serving.
#[derive(Debug)]
pub struct Registry {
    config: Arc<Config>,
    router: ArcSwap<Router>,
    outbound: Outbound,
    /// The process's pub/sub broker, which every version's services reach.
    broker: Broker,
    runtime: tokio::runtime::Handle,
    shadow: ShadowDir,
    /// One rescan at a time: file events, SIGHUP and admin reloads all go through it.
    rescan_lock: tokio::sync::Mutex<()>,
    failures: Mutex<BTreeMap<PathBuf, Failure>>,
    stats: Mutex<HashMap<Arc<str>, Arc<AppStats>>>,
    retiring: Mutex<Vec<Arc<AppVersion>>>,
    retire_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    retired: AtomicU64,
    /// The last [`RECENTLY_RETIRED`] retired versions, for the admin API: whether their
    /// services (and with them the app's state) are gone yet, and what they still hold.
    recently_retired: Mutex<VecDeque<Retired>>,
    next_id: AtomicU64,
    ready: AtomicBool,
}

/// How many retired versions the admin API lists.
const RECENTLY_RETIRED: usize = 16;

/// A retired version as the admin API lists it. Its services are held weakly: the registry
/// must not keep them (and the app's state) alive.
#[derive(Debug)]
struct Retired {
    name: Arc<str>,
    id: u64,
    version: String,
    services: Weak<AppServices>,
}

/// Which files a rescan loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rescan<'a> {
    /// New and changed files (file events).
    Changed,
    /// Those, and files that failed before even if unchanged (SIGHUP: after fixing what made
    /// an `init` fail, for example).
    RetryFailed,
    /// Those, and this app's file even if unchanged, as a new version (the admin reload).
    App(&'a str),
}

/// What a rescan did with one file.
pub type Outcome = Result<Arc<AppVersion>, LoadError>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// An empty registry for `config`; [`Registry::rescan`] loads the apps.
    pub fn new(
        config: Arc<Config>,
        outbound: Outbound,
        broker: Broker,
    ) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(Registry {
            config,
            router: ArcSwap::from_pointee(Router::default()),
            outbound,
            broker,
            runtime: tokio::runtime::Handle::current(),
            shadow: ShadowDir::new()?,
            rescan_lock: tokio::sync::Mutex::new(()),
            failures: Mutex::new(BTreeMap::new()),
            stats: Mutex::new(HashMap::new()),
            retiring: Mutex::new(Vec::new()),
            retire_tasks: Mutex::new(Vec::new()),
            retired: AtomicU64::new(0),
            recently_retired: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
            ready: AtomicBool::new(false),
        }))
    }

    /// The current routing table.
    pub fn router(&self) -> Arc<Router> {
        self.router.load_full()
    }

    /// The current routing table, borrowed without touching its reference count: for a
    /// lookup that ends before the next `.await` (a request keeps its app version through
    /// [`AppVersion::begin`], not through the table).
    pub fn current_router(&self) -> arc_swap::Guard<Arc<Router>> {
        self.router.load()
    }

    /// Whether the initial load has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The services of a version of `app` about to be loaded with `app_config`.
    fn services(&self, app: &Arc<str>, app_config: &crate::config::AppConfig) -> Arc<AppServices> {
        AppServices::new(
            Arc::clone(app),
            self.outbound.clone(),
            super::outbound_policy(&self.config, app_config),
            self.runtime.clone(),
            &self.broker,
        )
    }

    /// The process's pub/sub broker (for the admin API).
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Brings the mounted apps in line with the apps directory: loads new files, swaps changed
    /// ones, unmounts removed ones. A file that fails keeps the version already serving (if
    /// any) and is reported, and the same broken contents are not retried unless `scope` says
    /// so. [`Rescan::App`] touches that app's file only. Returns what happened to each file it
    /// tried to load.
    pub async fn rescan(self: &Arc<Self>, scope: Rescan<'_>) -> BTreeMap<PathBuf, Outcome> {
        let _one_at_a_time = self.rescan_lock.lock().await;
        let mut outcomes = BTreeMap::new();
        let current = self.router();
        let mut mounts: BTreeMap<String, Arc<AppVersion>> = current
            .apps()
            .map(|v| (v.mount.clone(), Arc::clone(v)))
            .collect();
        let mut retire = Vec::new();
        let files = if let Rescan::App(name) = scope {
            let Some(file) = current
                .apps()
                .find(|v| *v.name == *name)
                .map(|v| v.file.clone())
            else {
                return outcomes;
            };
            if !file.is_file() {
                let error = LoadError::Read(format!("{} no longer exists", file.display()));
                outcomes.insert(file, Err(error));
                return outcomes;
            }
            vec![file]
        } else {
            let files = match list_apps(&self.config.apps_dir) {
                Ok(files) => files,
                Err(err) => {
                    tracing::error!(
                        dir = %self.config.apps_dir.display(),
                        "cannot read the apps directory; keeping the mounted apps: {err}"
                    );
                    return outcomes;
                }
            };
            // Files that are gone: unmount what they provided.
            mounts.retain(|_, version| {
                let present = files.contains(&version.file);
                if !present {
                    tracing::info!(app = &*version.name, id = version.id, file = %version.file.display(), "unmounted app: its file was removed");
                    retire.push(Arc::clone(version));
                }
                present
            });
            lock(&self.failures).retain(|file, _| files.contains(file));
            files
        };

        for file in &files {
            let loaded = mounts.values().find(|v| &v.file == file).cloned();
            let forced = match scope {
                Rescan::Changed => false,
                Rescan::RetryFailed => loaded.is_none(),
                Rescan::App(name) => loaded.as_ref().is_some_and(|v| *v.name == *name),
            };
            match self.load_file(file, loaded.as_ref(), forced, &mounts).await {
                None => {}
                Some(Ok(version)) => {
                    if let Some(old) = &loaded {
                        // The file now provides a different app: the old one goes.
                        if old.name != version.name {
                            mounts.remove(&old.mount);
                            retire.push(Arc::clone(old));
                        }
                    }
                    if let Some(old) = mounts.insert(version.mount.clone(), Arc::clone(&version)) {
                        tracing::info!(app = &*version.name, old_id = old.id, new_id = version.id, version = version.plugin.version, file = %file.display(), "swapped app: new requests go to the new version");
                        retire.push(old);
                    } else {
                        tracing::info!(app = &*version.name, id = version.id, version = version.plugin.version, mount = version.mount, file = %file.display(), "mounted app");
                    }
                    lock(&self.failures).remove(file);
                    outcomes.insert(file.clone(), Ok(version));
                }
                Some(Err((error, hash))) => {
                    match &loaded {
                        Some(old) => {
                            tracing::warn!(app = &*old.name, file = %file.display(), "failed to load app; the running version keeps serving: {error}")
                        }
                        None => {
                            tracing::warn!(file = %file.display(), "failed to load app: {error}")
                        }
                    }
                    let failure = Failure {
                        error: error.clone(),
                        hash,
                        at: SystemTime::now(),
                    };
                    lock(&self.failures).insert(file.clone(), failure);
                    outcomes.insert(file.clone(), Err(error));
                }
            }
        }

        self.router
            .store(Arc::new(Router::new(mounts.into_values())));
        for version in retire {
            self.retire(version);
        }
        if !self.ready.swap(true, Ordering::SeqCst) && self.router().is_empty() {
            tracing::warn!(dir = %self.config.apps_dir.display(), "no apps loaded");
        }
        outcomes
    }

    /// Loads one file unless it is unchanged (`None`). On failure, returns the error and the
    /// hash of the contents that failed, so that the same broken file is not retried on every
    /// event.
    async fn load_file(
        self: &Arc<Self>,
        file: &Path,
        loaded: Option<&Arc<AppVersion>>,
        forced: bool,
        mounts: &BTreeMap<String, Arc<AppVersion>>,
    ) -> Option<Result<Arc<AppVersion>, (LoadError, Option<String>)>> {
        let image = match read_image(file) {
            Ok(image) => image,
            Err(error) => return Some(Err((error, None))),
        };
        if !forced {
            if loaded.is_some_and(|v| v.file_hash == image.hash) {
                return None;
            }
            let failed_before = lock(&self.failures)
                .get(file)
                .is_some_and(|f| f.hash.as_deref() == Some(&image.hash));
            if failed_before {
                return None;
            }
        }
        let hash = image.hash.clone();
        Some(
            self.load_version(file, image, loaded, mounts)
                .await
                .map_err(|error| (error, Some(hash))),
        )
    }

    async fn load_version(
        self: &Arc<Self>,
        file: &Path,
        image: FileImage,
        loaded: Option<&Arc<AppVersion>>,
        mounts: &BTreeMap<String, Arc<AppVersion>>,
    ) -> Result<Arc<AppVersion>, LoadError> {
        let plugin = self.shadow.open(file, &image.bytes)?;
        let app_config = self.config.app(&plugin.name);
        if !app_config.enabled {
            return Err(LoadError::Disabled(plugin.name));
        }
        let mount = app_config
            .mount
            .clone()
            .unwrap_or_else(|| format!("/{}", plugin.name));
        // Another file's app with the same name, or another app on the same mount, wins: it was
        // there first.
        let replacing = |v: &Arc<AppVersion>| loaded.is_some_and(|l| Arc::ptr_eq(l, v));
        if let Some(other) = mounts
            .values()
            .find(|v| *v.name == plugin.name && v.file != file)
        {
            return Err(LoadError::Duplicate {
                name: plugin.name,
                other: other.file.clone(),
            });
        }
        if let Some(other) = mounts
            .get(&mount)
            .filter(|v| *v.name != plugin.name && !replacing(v))
        {
            return Err(LoadError::MountTaken {
                mount,
                other: other.name.to_string(),
            });
        }
        let name: Arc<str> = Arc::from(plugin.name.as_str());
        let hook_timeout = app_config.hook_timeout.unwrap_or(self.config.hook_timeout);
        let services = self.services(&name, &app_config);
        let deadline = tokio::time::Instant::now() + hook_timeout;
        let scope = RequestScope::new(&services, Some(deadline));
        if let Err(error) =
            loader::run_init(&plugin, &app_config.settings, scope, Some(hook_timeout)).await
        {
            // A version that never mounts has no shutdown hook run; what its init started
            // (tasks, sockets) ends here.
            services.retire();
            return Err(error);
        }
        let stats = Arc::clone(lock(&self.stats).entry(Arc::clone(&name)).or_default());
        Ok(Arc::new(AppVersion {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            name,
            mount,
            file: file.to_owned(),
            file_hash: image.hash,
            loaded_at: SystemTime::now(),
            request_timeout: app_config
                .request_timeout
                .unwrap_or(self.config.request_timeout),
            hook_timeout,
            max_body_size: app_config
                .max_body_size
                .unwrap_or(self.config.limits.max_body_size),
            websocket: Arc::new(app_config.websocket.over(&self.config.websocket)),
            services,
            plugin,
            stats,
            requests: Default::default(),
        }))
    }

    /// Retires `version` in the background: waits for its last request (an open WebSocket
    /// counts as one), runs its `shutdown` hook, then cancels its tasks and closes its sockets.
    /// With a `ws_reload_grace`, its WebSockets are closed with 1012 once the grace is over.
    fn retire(self: &Arc<Self>, version: Arc<AppVersion>) {
        lock(&self.retiring).push(Arc::clone(&version));
        if let Some(grace) = version.websocket.reload_grace {
            let services = Arc::downgrade(&version.services);
            let (app, id) = (Arc::clone(&version.name), version.id);
            self.runtime.spawn(async move {
                tokio::time::sleep(grace).await;
                if let Some(services) = services.upgrade() {
                    let open = services.websockets.open();
                    if open > 0 {
                        tracing::info!(app = &*app, id, open, "reload grace of {grace:?} over: closing the old version's WebSockets with 1012");
                    }
                    services
                        .websockets
                        .close_all(1012, "service restart", true);
                }
            });
        }
        let registry = Arc::clone(self);
        let task = self.runtime.spawn(async move {
            version.wait_idle().await;
            registry.run_shutdown(&version).await;
            lock(&registry.retiring).retain(|v| !Arc::ptr_eq(v, &version));
            registry.retired.fetch_add(1, Ordering::Relaxed);
            {
                let mut recent = lock(&registry.recently_retired);
                if recent.len() == RECENTLY_RETIRED {
                    recent.pop_front();
                }
                recent.push_back(Retired {
                    name: Arc::clone(&version.name),
                    id: version.id,
                    version: version.plugin.version.clone(),
                    services: Arc::downgrade(&version.services),
                });
            }
            tracing::info!(app = &*version.name, id = version.id, version = version.plugin.version, file = %version.file.display(), "retired app version: its last request finished");
        });
        let mut tasks = lock(&self.retire_tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Runs `version`'s `shutdown` hook, then retires its services: its tasks are cancelled
    /// and its sockets closed, whatever the hook did.
    async fn run_shutdown(&self, version: &AppVersion) {
        self.run_shutdown_hook(version).await;
        version.services.retire();
    }

    async fn run_shutdown_hook(&self, version: &AppVersion) {
        let limit = version.hook_timeout;
        let deadline = tokio::time::Instant::now() + limit;
        let scope = RequestScope::new(&version.services, Some(deadline));
        let app = &*version.name;
        let shutdown = {
            let _in_app = calls::enter(app, &[b"shutdown"], Some(limit));
            version.plugin.shutdown(scope)
        };
        let Some(shutdown) = shutdown else {
            return;
        };
        let shutdown = calls::watched(app, "shutdown", Some(limit), shutdown);
        match tokio::time::timeout(limit, AssertUnwindSafe(shutdown).catch_unwind()).await {
            Err(_) => tracing::warn!(app, "shutdown did not finish within {limit:?}"),
            Ok(Err(_)) => tracing::error!(app, "the plugin's shutdown future panicked"),
            Ok(Ok(outcome)) => {
                if let Err(failure) = plugin::hook_result(outcome) {
                    tracing::warn!(app, "shutdown failed: {failure}");
                }
            }
        }
    }

    /// At process exit, after the drain: runs every mounted version's `shutdown` hook (requests
    /// the drain gave up on are abandoned, not waited for) and then cancels its tasks and
    /// closes its sockets, and gives versions still retiring one hook time limit to finish.
    pub async fn shutdown(self: &Arc<Self>) {
        let router = self.router();
        self.router.store(Arc::new(Router::default()));
        let hooks = router.apps().map(|version| self.run_shutdown(version));
        futures_util::future::join_all(hooks).await;
        let tasks = std::mem::take(&mut *lock(&self.retire_tasks));
        let pending = futures_util::future::join_all(tasks);
        if tokio::time::timeout(self.config.hook_timeout, pending)
            .await
            .is_err()
        {
            tracing::warn!("some retired app versions still had requests in flight at exit");
        }
    }

    /// At shutdown: asks every WebSocket of every version (mounted or retiring) to close with
    /// its app's `ws_shutdown_code`, and every later one to close at once. Returns how many
    /// were open.
    pub fn close_websockets(&self) -> usize {
        let mut versions: Vec<Arc<AppVersion>> = self.router().apps().cloned().collect();
        versions.extend(lock(&self.retiring).iter().cloned());
        let mut open = 0;
        for version in versions {
            open += version.services.websockets.open();
            version.services.websockets.close_all(
                version.websocket.shutdown_code,
                "server shutting down",
                true,
            );
        }
        open
    }

    /// Returns once every WebSocket of every version (mounted or retiring) has closed.
    pub async fn websockets_closed(&self) {
        let mut versions: Vec<Arc<AppVersion>> = self.router().apps().cloned().collect();
        versions.extend(lock(&self.retiring).iter().cloned());
        let waits = versions
            .iter()
            .map(|version| version.services.websockets.wait_closed());
        futures_util::future::join_all(waits).await;
    }

    /// The name of the file that provides `app`, if it is mounted.
    pub fn file_of(&self, app: &str) -> Option<PathBuf> {
        self.router()
            .apps()
            .find(|v| &*v.name == app)
            .map(|v| v.file.clone())
    }

    /// Every app, failure and retiring version, for the admin API.
    pub fn status(&self) -> Value {
        let failures = lock(&self.failures).clone();
        let router = self.router();
        let apps: Vec<Value> = router
            .apps()
            .map(|v| {
                let mut entry = v.summary();
                entry["requests"] = v.stats.requests.load(Ordering::Relaxed).into();
                entry["errors"] = v.stats.errors.load(Ordering::Relaxed).into();
                entry["in_flight"] = v.stats.in_flight.load(Ordering::Relaxed).into();
                entry["last_error"] = failures
                    .get(&v.file)
                    .map_or(Value::Null, |f| f.error.to_string().into());
                entry
            })
            .collect();
        let failed: Vec<Value> = failures
            .iter()
            .map(|(file, f)| {
                json!({
                    "file": file.display().to_string(),
                    "error": f.error.to_string(),
                    "at": humantime::format_rfc3339_seconds(f.at).to_string(),
                })
            })
            .collect();
        let retiring: Vec<Value> = lock(&self.retiring)
            .iter()
            .map(|v| json!({"name": &*v.name, "id": v.id, "version": v.plugin.version, "in_flight": v.in_flight(), "sockets": v.services.sockets.open(), "tasks": v.services.tasks.live(), "websockets": v.services.websockets.open()}))
            .collect();
        let recently_retired: Vec<Value> = lock(&self.recently_retired)
            .iter()
            .map(|r| {
                let services = r.services.upgrade();
                let (sockets, tasks, websockets) = services.as_ref().map_or((0, 0, 0), |s| {
                    (s.sockets.open(), s.tasks.live(), s.websockets.open())
                });
                json!({
                    "name": &*r.name,
                    "id": r.id,
                    "version": r.version,
                    "sockets": sockets,
                    "tasks": tasks,
                    "websockets": websockets,
                    "released": services.is_none(),
                })
            })
            .collect();
        json!({
            "apps": apps,
            "failed": failed,
            "retiring": retiring,
            "retired": self.retired.load(Ordering::Relaxed),
            "recently_retired": recently_retired,
        })
    }

    /// The admin view of one version.
    pub fn describe(&self, version: &AppVersion) -> Value {
        version.summary()
    }
}

/// The shared libraries in `dir`, sorted.
fn list_apps(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| is_library_path(path) && path.is_file())
        .collect();
    files.sort();
    Ok(files)
}
