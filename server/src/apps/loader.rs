//! Turning a file in the apps directory into a loaded, checked plugin, safely.
//!
//! The watched file itself is never handed to the dynamic loader. Its bytes are read once,
//! hashed, checked to be a complete ELF image (a file still being written is refused, not
//! mapped half-way), and written to a private shadow path that is unique per load. Only that copy
//! is opened:
//! * `cp new.so apps/hello.so` rewrites the watched file in place; a library mapped from it would
//!   see its code change under it and crash. The shadow copy is never written again.
//! * the dynamic loader caches libraries by path and inode, and a reload of the same path could
//!   hand back the old code; a fresh path per load cannot.
//!
//! The shadow file is unlinked as soon as it is open (the mapping keeps its inode alive), so
//! nothing accumulates on disk.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt as _;
use sha2::{Digest, Sha256};

use crate::host::calls;
use crate::plugin::{self, OpenError, Plugin, RequestScope};

/// Why a file in the apps directory was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The library could not be opened as a plugin.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The app's name cannot be a path segment.
    #[error("invalid app name {0:?}: use letters, digits, '-', '_' and '.'")]
    InvalidName(String),
    /// Another file already provides an app with this name.
    #[error("duplicate app name {name:?}: already loaded from {}", other.display())]
    Duplicate {
        /// The app name.
        name: String,
        /// The file that was loaded first.
        other: PathBuf,
    },
    /// Another app is mounted at the same path.
    #[error("mount {mount} is already used by app {other:?}")]
    MountTaken {
        /// The mount path.
        mount: String,
        /// The app mounted there.
        other: String,
    },
    /// The file could not be read (or copied).
    #[error("cannot read the file: {0}")]
    Read(String),
    /// `enabled = false` in the config file.
    #[error("app {0:?} is disabled in the config file")]
    Disabled(String),
    /// The app's `init` hook failed or panicked.
    #[error("init failed: {0}")]
    Init(String),
    /// The app's `init` hook did not finish in time.
    #[error("init did not finish within {0:?}")]
    InitTimeout(Duration),
}

/// Checks that an app's name can be a path segment.
pub fn check_name(name: &str) -> Result<(), LoadError> {
    let valid = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(LoadError::InvalidName(name.to_owned()))
    }
}

/// Whether `path` names a shared library (by its extension; what is inside is checked on load).
pub fn is_library_path(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some(std::env::consts::DLL_EXTENSION)
}

/// A private directory for shadow copies, removed when dropped.
#[derive(Debug)]
pub struct ShadowDir {
    dir: PathBuf,
    next: AtomicU64,
}

impl ShadowDir {
    /// Creates `berth-shadow-<pid>-<n>` in the system's temporary directory, first removing the
    /// ones left by Berth processes that no longer exist (killed before they could clean up).
    /// `n` numbers the directories of one process, so that dropping one (an embedded
    /// `embed::LoadedApp`, say) never removes another's.
    pub fn new() -> std::io::Result<Self> {
        static INSTANCES: AtomicU64 = AtomicU64::new(1);
        let tmp = std::env::temp_dir();
        remove_stale(&tmp);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!("berth-shadow-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(ShadowDir {
            dir,
            next: AtomicU64::new(1),
        })
    }

    /// Checks that `bytes` (read from `source`) are a complete library, writes them to a new,
    /// unique shadow path, opens that copy, and checks the app's name.
    pub fn open(&self, source: &Path, bytes: &[u8]) -> Result<Plugin, LoadError> {
        check_complete(bytes)?;
        let stem = source
            .file_stem()
            .map_or_else(|| "app".into(), |s| s.to_string_lossy());
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let shadow = self
            .dir
            .join(format!("{stem}-{n}.{}", std::env::consts::DLL_EXTENSION));
        std::fs::write(&shadow, bytes).map_err(|e| {
            LoadError::Read(format!(
                "cannot write shadow copy {}: {e}",
                shadow.display()
            ))
        })?;
        let plugin = plugin::open(&shadow);
        // Open or not, the shadow file has served its purpose.
        let _ = std::fs::remove_file(&shadow);
        let plugin = plugin?;
        check_name(&plugin.name)?;
        Ok(plugin)
    }
}

/// Removes `berth-shadow-<pid>[-<n>]` directories in `tmp` whose process is gone.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.strip_prefix("berth-shadow-"))
            .and_then(|rest| rest.split('-').next());
        let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for ShadowDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The file's contents, read once, and their SHA-256 in hex.
#[derive(Debug)]
pub struct FileImage {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Their SHA-256, lower-case hex.
    pub hash: String,
}

/// Reads `file` and hashes its contents.
pub fn read_image(file: &Path) -> Result<FileImage, LoadError> {
    let bytes = std::fs::read(file).map_err(|e| LoadError::Read(e.to_string()))?;
    let hash = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FileImage { bytes, hash })
}

/// Refuses anything that is not an object file whose headers and segments all lie within the
/// bytes we have: a library still being copied into place fails here instead of being mapped
/// with its end missing (touching such a mapping is a SIGBUS).
fn check_complete(bytes: &[u8]) -> Result<(), OpenError> {
    use object::{Object, ObjectSegment};
    let file = object::File::parse(bytes).map_err(|e| {
        OpenError::NotALibrary(format!(
            "not a complete shared library ({e}); if it is still being written, it is loaded once complete"
        ))
    })?;
    let len = bytes.len() as u64;
    for segment in file.segments() {
        let (offset, size) = segment.file_range();
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(OpenError::NotALibrary(format!(
                "truncated shared library: a segment ends past the file's {len} bytes; if it is still being written, it is loaded once complete"
            )));
        }
    }
    Ok(())
}

/// Runs `plugin`'s `init` hook with `settings` in `scope`, if it has one, within `limit` if one
/// is given.
pub async fn run_init(
    plugin: &Plugin,
    settings: &BTreeMap<String, String>,
    scope: Arc<RequestScope>,
    limit: Option<Duration>,
) -> Result<(), LoadError> {
    let init = {
        let _in_app = calls::enter(&plugin.name, &[b"init"], limit);
        plugin.init(settings, scope)
    };
    let Some(init) = init else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let init = calls::watched(&plugin.name, "init", limit, init);
    let caught = AssertUnwindSafe(init).catch_unwind();
    let finished = match limit {
        Some(limit) => tokio::time::timeout(limit, caught)
            .await
            .map_err(|_| LoadError::InitTimeout(limit))?,
        None => caught.await,
    };
    match finished {
        Err(_) => Err(LoadError::Init("the plugin's init future panicked".into())),
        Ok(outcome) => {
            plugin::hook_result(outcome).map_err(|failure| LoadError::Init(failure.to_string()))?;
            tracing::debug!(app = %plugin.name, elapsed = ?started.elapsed(), "init finished");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_text_and_truncated_images() {
        let text = check_complete(b"not a library").expect_err("text is refused");
        assert!(
            text.to_string().contains("not a loadable library"),
            "{text}"
        );

        let me = std::fs::read(std::env::current_exe().expect("test binary path")).expect("read");
        assert_eq!(check_complete(&me), Ok(()));
        let cut = check_complete(&me[..me.len() / 2]).expect_err("half a file is refused");
        assert!(cut.to_string().contains("still being written"), "{cut}");
    }
}
