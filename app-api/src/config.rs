//! The settings an app's `init` hook receives.

use std::collections::BTreeMap;

/// The app's settings from the server's config file (`[apps.<name>.settings]` in `berth.toml`):
/// string keys and values, like a process environment.
///
/// ```
/// use berth_app::AppConfig;
/// let config = AppConfig::new([("greeting".to_owned(), "Hi".to_owned())].into());
/// assert_eq!(config.get("greeting"), Some("Hi"));
/// assert_eq!(config.get_or("missing", "default"), "default");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppConfig {
    settings: BTreeMap<String, String>,
}

impl AppConfig {
    /// Settings from a map (for tests and mock hosts).
    pub fn new(settings: BTreeMap<String, String>) -> Self {
        AppConfig { settings }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// The value of `key`, or `default`.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// Every setting, sorted by key.
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.settings
    }
}
