//! The fence around plugins: every `unsafe` block of the server lives in this module tree.
//!
//! It opens plugin libraries, checks their descriptor before trusting anything else in them,
//! calls their handler and hooks, lends them the request ([`lent`]) inside the state behind
//! their host handle ([`scope`]), and implements the capability table they call back into
//! (`vtable`, which also keeps an app version's state for it), the table of the sockets they
//! open (`socket`), and the WebSocket handshake and the table of the WebSockets they are handed
//! (`websocket`), and the call table's memory shared with a supervisor ([`shared`]). The conversions between ABI values and Rust values are shared with the plugin
//! side, in [`berth_app::ffi`].
//!
//! Libraries are opened with `RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE` and never closed: a waker,
//! a future or a thread-local destructor from a plugin may outlive any request, and unmapping
//! its code would turn those into jumps into unmapped memory.
#![allow(unsafe_code)]

pub mod lent;
mod pubsub;
pub mod scope;
pub mod shared;
mod socket;
mod vtable;
mod websocket;

use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::Arc;

use berth_app::abi::*;
use berth_app::ffi::{ForeignBody, HandleFailure};
use http::{HeaderMap, StatusCode};
use libloading::os::unix::Library;

pub use lent::{LentRequest, RequestView};
pub use scope::RequestScope;

/// Why a library could not be opened as a plugin: the dynamic loader refused it, or its
/// descriptor does not match this host's ABI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The dynamic loader refused the file.
    #[error("not a loadable library: {0}")]
    NotALibrary(String),
    /// The library is not a Berth app.
    #[error(
        "no berth_app_descriptor symbol: not a Berth app (apps export it with berth_app::export_app!)"
    )]
    MissingSymbol,
    /// The descriptor does not start with Berth's magic number.
    #[error("bad magic number in descriptor: expected {expected:#018x}, found {found:#018x}")]
    BadMagic {
        /// [`MAGIC`].
        expected: u64,
        /// What the plugin has.
        found: u64,
    },
    /// Built against another major ABI version.
    #[error("ABI major version mismatch: host expects {expected}, plugin has {found}")]
    AbiMajor {
        /// This host's major version.
        expected: u32,
        /// The plugin's.
        found: u32,
    },
    /// Built against a newer minor ABI version than this host knows.
    #[error(
        "plugin needs ABI minor version {found}, this host supports up to {host}: upgrade berth"
    )]
    AbiMinorTooNew {
        /// This host's minor version.
        host: u32,
        /// The plugin's.
        found: u32,
    },
    /// Same version numbers, different layout: built with an incompatible `berth-app`.
    #[error(
        "ABI layout fingerprint mismatch for ABI 1.{minor}: expected {expected:#018x}, found {found:#018x} (rebuild the app against a released berth-app)"
    )]
    Fingerprint {
        /// The plugin's minor version.
        minor: u32,
        /// What this host expects for that minor.
        expected: u64,
        /// What the plugin has.
        found: u64,
    },
    /// The descriptor is malformed.
    #[error("invalid descriptor: {0}")]
    BadDescriptor(String),
}

/// A loaded, checked plugin. The library stays mapped for the life of the process.
#[derive(Debug)]
pub struct Plugin {
    /// The app's name from its descriptor.
    pub name: String,
    /// The app's version from its descriptor.
    pub version: String,
    /// The `berth-app` version it was built with.
    pub sdk_version: String,
    /// The ABI minor version it was built against.
    pub abi_minor: u32,
    handle:
        unsafe extern "C" fn(*const AbiRequest, AbiBody, AbiHost) -> FfiFuture<AbiHandleOutcome>,
    init_hook: Option<unsafe extern "C" fn(AbiSettings, AbiHost) -> FfiFuture<AbiHookOutcome>>,
    shutdown_hook: Option<unsafe extern "C" fn(AbiHost) -> FfiFuture<AbiHookOutcome>>,
    _library: ManuallyDrop<Library>,
}

/// Opens `path` and checks its descriptor.
pub fn open(path: &Path) -> Result<Plugin, OpenError> {
    let flags = libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_NODELETE;
    // SAFETY: opening a library runs its initialisers. That is the trust an operator grants by
    // putting a file in the apps directory; Berth cannot check anything before this point.
    let library = unsafe { Library::open(Some(path), flags) }
        .map_err(|source| OpenError::NotALibrary(crate::error_chain(&source)))?;
    let library = ManuallyDrop::new(library);

    // SAFETY: the symbol's type is fixed by the ABI (`DescriptorFn`); if the library exports a
    // symbol of that name with another type, the descriptor checks below refuse it before any
    // other use.
    let descriptor_fn = unsafe { library.get::<DescriptorFn>(DESCRIPTOR_SYMBOL) }
        .map_err(|_| OpenError::MissingSymbol)?;
    // SAFETY: the descriptor function takes no arguments and returns a pointer to a static.
    let descriptor = unsafe { descriptor_fn() };
    if descriptor.is_null() || !descriptor.cast::<DescriptorHeader>().is_aligned() {
        return Err(OpenError::BadDescriptor(
            "null or misaligned pointer".into(),
        ));
    }
    // SAFETY: every ABI version starts with the same `DescriptorHeader` prefix, read on its own
    // before anything version-dependent.
    let header = unsafe { descriptor.cast::<DescriptorHeader>().read() };
    check_header(&header)?;
    // The header matched this host's ABI (magic, major, a known minor, that minor's layout
    // fingerprint), so the descriptor has our layout up to the plugin minor's size. Fields are
    // read through raw pointers, never a reference to the whole struct, because an older
    // minor's descriptor is shorter than ours.
    let read_str = |field: *const AbiStr, what: &str| {
        // SAFETY: `field` lies within the plugin minor's descriptor; the string points into the
        // plugin's static memory.
        unsafe { field.read().to_str(what) }
            .map(str::to_owned)
            .map_err(|e| OpenError::BadDescriptor(e.0))
    };
    // SAFETY (for the field reads below): `descriptor` is valid and aligned, and each field read
    // lies within the size of the plugin's minor, as checked above.
    let (name, version, sdk_version, handle) = unsafe {
        (
            std::ptr::addr_of!((*descriptor).name),
            std::ptr::addr_of!((*descriptor).version),
            std::ptr::addr_of!((*descriptor).sdk_version),
            std::ptr::addr_of!((*descriptor).handle).read(),
        )
    };
    let (init, shutdown) = if header.abi_minor >= 1 {
        // SAFETY: as above; these fields exist from ABI 1.1 on.
        unsafe {
            (
                std::ptr::addr_of!((*descriptor).init).read(),
                std::ptr::addr_of!((*descriptor).shutdown).read(),
            )
        }
    } else {
        (None, None)
    };
    Ok(Plugin {
        name: read_str(name, "app name")?,
        version: read_str(version, "app version")?,
        sdk_version: read_str(sdk_version, "SDK version")?,
        abi_minor: header.abi_minor,
        handle,
        init_hook: init,
        shutdown_hook: shutdown,
        _library: library,
    })
}

fn check_header(header: &DescriptorHeader) -> Result<(), OpenError> {
    if header.magic != MAGIC {
        return Err(OpenError::BadMagic {
            expected: MAGIC,
            found: header.magic,
        });
    }
    if header.abi_major != ABI_MAJOR {
        return Err(OpenError::AbiMajor {
            expected: ABI_MAJOR,
            found: header.abi_major,
        });
    }
    if header.abi_minor > ABI_MINOR {
        return Err(OpenError::AbiMinorTooNew {
            host: ABI_MINOR,
            found: header.abi_minor,
        });
    }
    let expected = LAYOUT_FINGERPRINTS[header.abi_minor as usize];
    if header.layout_fingerprint != expected {
        return Err(OpenError::Fingerprint {
            minor: header.abi_minor,
            expected,
            found: header.layout_fingerprint,
        });
    }
    let expected = DESCRIPTOR_SIZES[header.abi_minor as usize];
    if header.size < expected {
        return Err(OpenError::BadDescriptor(format!(
            "descriptor is {} bytes, expected at least {expected} for ABI 1.{}",
            header.size, header.abi_minor
        )));
    }
    Ok(())
}

impl Plugin {
    /// Starts the app's handler on the request lent in `scope`. `body` and one reference to
    /// `scope` move to the plugin.
    pub fn handle(&self, scope: Arc<RequestScope>, body: AbiBody) -> FfiFuture<AbiHandleOutcome> {
        let request = scope.request.abi();
        let host = host_for(scope);
        // SAFETY: `handle` came from a checked descriptor; `request` points into the lent
        // request's heap blocks, which live as long as the scope, and so for as long as the
        // plugin holds a reference to it, as ABI 1.3 promises; `body` and `host` are owned values handed over.
        unsafe { (self.handle)(&request, body, host) }
    }

    /// Starts the app's `init` hook, if it has one. One reference to `scope` moves to the plugin.
    pub fn init(
        &self,
        settings: &std::collections::BTreeMap<String, String>,
        scope: Arc<RequestScope>,
    ) -> Option<FfiFuture<AbiHookOutcome>> {
        let init = self.init_hook?;
        let list = berth_app::ffi::SettingList::new(settings);
        // SAFETY: `init` came from a checked descriptor of ABI 1.1 or later; the settings live
        // until the call returns; the host reference is handed over.
        Some(unsafe { init(list.as_abi(), host_for(scope)) })
    }

    /// Starts the app's `shutdown` hook, if it has one.
    pub fn shutdown(&self, scope: Arc<RequestScope>) -> Option<FfiFuture<AbiHookOutcome>> {
        let shutdown = self.shutdown_hook?;
        // SAFETY: as for `init`.
        Some(unsafe { shutdown(host_for(scope)) })
    }
}

/// Hands one reference to `scope` over as a host handle.
fn host_for(scope: Arc<RequestScope>) -> AbiHost {
    AbiHost {
        vtable: &vtable::HOST_VTABLE,
        ctx: Arc::into_raw(scope).cast_mut().cast(),
    }
}

/// Takes ownership of a hook's outcome.
pub fn hook_result(outcome: AbiHookOutcome) -> Result<(), HandleFailure> {
    // SAFETY: the outcome was produced by the plugin's hook future and is owned by us.
    unsafe { outcome.into_result() }
}

/// Takes ownership of a handler's outcome.
pub fn outcome_into_parts(
    outcome: AbiHandleOutcome,
) -> Result<(StatusCode, HeaderMap, ForeignBody), HandleFailure> {
    // SAFETY: the outcome was produced by the plugin's handler future and is owned by us.
    unsafe { outcome.into_result() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> DescriptorHeader {
        DescriptorHeader {
            magic: MAGIC,
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            layout_fingerprint: LAYOUT_FINGERPRINT,
            size: size_of::<AppDescriptor>() as u64,
        }
    }

    #[test]
    fn accepts_this_hosts_abi() {
        assert_eq!(check_header(&good()), Ok(()));
    }

    #[test]
    fn refusals_name_expected_and_found() {
        let cases = [
            (
                DescriptorHeader { magic: 7, ..good() },
                "expected 0x4245525448415050, found 0x0000000000000007",
            ),
            (
                DescriptorHeader {
                    abi_major: 2,
                    ..good()
                },
                "host expects 1, plugin has 2",
            ),
            (
                DescriptorHeader {
                    abi_minor: ABI_MINOR + 1,
                    ..good()
                },
                &format!("supports up to {ABI_MINOR}"),
            ),
            (
                DescriptorHeader {
                    layout_fingerprint: 1,
                    ..good()
                },
                "found 0x0000000000000001",
            ),
            (
                DescriptorHeader { size: 8, ..good() },
                &format!("descriptor is 8 bytes, expected at least 104 for ABI 1.{ABI_MINOR}"),
            ),
        ];
        for (header, needle) in cases {
            let message = check_header(&header)
                .expect_err("must be refused")
                .to_string();
            assert!(
                message.contains(needle),
                "{message:?} should contain {needle:?}"
            );
        }
    }
}
