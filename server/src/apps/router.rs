//! Mapping request paths to mounted apps.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::apps::version::AppVersion;

/// The mount table: path prefix → app.
#[derive(Debug, Default)]
pub struct Router {
    mounts: BTreeMap<String, Arc<AppVersion>>,
}

/// A request matched to an app.
#[derive(Debug)]
pub struct Route<'r> {
    /// The app.
    pub app: &'r Arc<AppVersion>,
    /// The length of the mount at the start of the request's path.
    pub mount_len: usize,
}

impl Router {
    /// A router mounting each app at its `mount`.
    pub fn new(apps: impl IntoIterator<Item = Arc<AppVersion>>) -> Self {
        let mounts = apps
            .into_iter()
            .map(|app| (app.mount.clone(), app))
            .collect();
        Router { mounts }
    }

    /// Finds the app with the longest mount that is a whole-segment prefix of `path`:
    /// `/hello/a/b` and `/hello` match `/hello`, `/helloworld` does not.
    pub fn route<'r>(&'r self, path: &str) -> Option<Route<'r>> {
        // Bytes, not chars: `/` is ASCII, so every position found is a char boundary.
        let boundaries = path
            .bytes()
            .enumerate()
            .filter(|&(i, b)| b == b'/' && i > 0)
            .map(|(i, _)| i)
            .chain(std::iter::once(path.len()));
        let mut found = None;
        for end in boundaries {
            if let Some(app) = self.mounts.get(&path[..end]) {
                found = Some(Route {
                    app,
                    mount_len: end,
                });
            }
        }
        found
    }

    /// The mounted apps, ordered by mount.
    pub fn apps(&self) -> impl Iterator<Item = &Arc<AppVersion>> {
        self.mounts.values()
    }

    /// How many apps are mounted.
    pub fn len(&self) -> usize {
        self.mounts.len()
    }

    /// Whether no app is mounted.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }
}
