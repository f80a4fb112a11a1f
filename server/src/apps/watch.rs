//! Noticing changes to the apps directory: file events (debounced) and SIGHUP.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use crate::apps::loader::is_library_path;
use crate::apps::{Registry, Rescan};

/// How long the directory must be quiet before a rescan. A copy in progress produces a stream
/// of write events; waiting for a pause avoids loading it half-way (and the loader refuses an
/// incomplete image anyway).
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Watches `dir` and rescans the registry after each burst of changes to shared libraries in
/// it. The watch lasts as long as the returned watcher is kept.
pub fn spawn(registry: Arc<Registry>, dir: &Path) -> notify::Result<notify::RecommendedWatcher> {
    let (changed, mut changes) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event)
                if changes_a_file(&event) && event.paths.iter().any(|p| is_library_path(p)) =>
            {
                let _ = changed.send(());
            }
            Ok(_) => {}
            Err(err) => tracing::warn!("apps directory watch error: {err}"),
        })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            loop {
                match tokio::time::timeout(DEBOUNCE, changes.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_quiet) => break,
                }
            }
            registry.rescan(Rescan::Changed).await;
        }
    });
    tracing::info!(dir = %dir.display(), "watching the apps directory for changes");
    Ok(watcher)
}

/// Whether `event` can change what a library file holds. Opening and reading one does not:
/// the rescan itself reads every library (and each worker's does with workers), so reacting
/// to reads would rescan forever.
fn changes_a_file(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, MetadataKind, ModifyKind};
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        _ => true,
    }
}

/// Rescans on every SIGHUP, for setups where file events are unreliable (network file
/// systems, some container mounts).
pub fn rescan_on_sighup(registry: Arc<Registry>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::warn!("cannot listen for SIGHUP: {err}");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("received SIGHUP: rescanning the apps directory");
            registry.rescan(Rescan::RetryFailed).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::changes_a_file;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    use notify::{Event, EventKind};

    #[test]
    fn reads_do_not_count_as_changes() {
        let kind = |kind| changes_a_file(&Event::new(kind));
        assert!(!kind(EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!kind(EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(kind(EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(kind(EventKind::Create(CreateKind::File)));
        assert!(kind(EventKind::Modify(ModifyKind::Any)));
    }
}
