//! What the config tests share: a temporary directory per test, and loading a config file's
//! text as `Config::load` would.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use clap::Parser;

use super::{Cli, Config, ConfigError};

/// A fresh empty directory for one test, removed when dropped.
pub(super) struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn temp_dir(name: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("berth-config-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// Writes `toml` to `<temp dir>/berth.toml` and loads it with `args` on the command line.
pub(super) fn load(name: &str, toml: &str, args: &[&str]) -> Result<Config, ConfigError> {
    let dir = temp_dir(name);
    let file = dir.join("berth.toml");
    std::fs::write(&file, toml).unwrap();
    let mut argv = vec!["berth".to_owned(), "--config".to_owned()];
    argv.push(file.to_str().unwrap().to_owned());
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    Config::load(Cli::try_parse_from(argv).unwrap())
}

pub(super) fn load_err(name: &str, toml: &str) -> String {
    let err = load(name, toml, &[]).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("berth.toml"), "no file in: {message}");
    message
}
