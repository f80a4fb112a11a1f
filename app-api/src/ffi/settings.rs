//! An app's settings, lent to its `init` hook.

use std::collections::BTreeMap;

use crate::abi::{AbiSetting, AbiSettings, AbiStr};
use crate::ffi::buf::BoundaryError;

/// Borrowed settings built from a map; keep it alive while the [`AbiSettings`] from
/// [`SettingList::as_abi`] is in use.
#[derive(Debug, Default)]
pub struct SettingList(Vec<AbiSetting>);

impl SettingList {
    /// Borrows every entry of `settings`.
    pub fn new(settings: &BTreeMap<String, String>) -> Self {
        SettingList(
            settings
                .iter()
                .map(|(key, value)| AbiSetting {
                    key: AbiStr::new(key.as_bytes()),
                    value: AbiStr::new(value.as_bytes()),
                })
                .collect(),
        )
    }

    /// The ABI view of the list.
    pub fn as_abi(&self) -> AbiSettings {
        AbiSettings {
            ptr: self.0.as_ptr(),
            len: self.0.len(),
        }
    }
}

/// Copies borrowed settings into a map.
///
/// # Safety
/// `settings` must satisfy the ABI's borrowed contract for the duration of this call.
pub(super) unsafe fn settings_from_abi(
    settings: AbiSettings,
) -> Result<BTreeMap<String, String>, BoundaryError> {
    let list: &[AbiSetting] = if settings.ptr.is_null() || settings.len == 0 {
        &[]
    } else {
        // SAFETY: borrowed contract: `ptr[..len]` is a readable array of `AbiSetting`.
        unsafe { std::slice::from_raw_parts(settings.ptr, settings.len) }
    };
    let mut map = BTreeMap::new();
    for setting in list {
        // SAFETY: each key and value is borrowed under the same contract as the array.
        let (key, value) = unsafe {
            (
                setting.key.to_str("setting name")?,
                setting.value.to_str("setting value")?,
            )
        };
        map.insert(key.to_owned(), value.to_owned());
    }
    Ok(map)
}
