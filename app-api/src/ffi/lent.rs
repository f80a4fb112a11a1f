//! The request the host lends the plugin (ABI 1.3), read in place.

use std::fmt;

use http::HeaderMap;

use crate::abi::{AbiHeaders, AbiRequest, AbiStr};
use crate::ffi::headers::valid_headers;
use crate::ffi::host_handle::HostHandle;

/// The parts of a request the host lends (ABI 1.3), read in place: the target, the mount
/// prefix, the path, the query and the headers stay valid, unchanged, for as long as a host
/// reference is held, and this holds one. Copying them here instead, during `handle`, took
/// two allocations and a check of every byte per request; the host's one copy into the
/// request's scope needs neither.
pub(crate) struct LentRequest {
    target: AbiStr,
    prefix: AbiStr,
    path: AbiStr,
    query: AbiStr,
    headers: AbiHeaders,
    _lender: HostHandle,
}

// SAFETY: the lent memory is immutable and owned by the host's request scope, which the host
// shares between threads (it is reference-counted with atomics); reading it from any thread,
// and releasing the reference from any thread, is what the ABI allows.
unsafe impl Send for LentRequest {}
// SAFETY: as above: nothing here is ever written through.
unsafe impl Sync for LentRequest {}

impl LentRequest {
    /// Reads `req`'s parts in place for as long as `lender` is held.
    ///
    /// # Safety
    /// `req` is lent by the host behind `lender` (ABI 1.3): what it points to stays valid and
    /// unchanged, and its strings UTF-8, while a reference to that host's context is held.
    pub(super) unsafe fn new(req: &AbiRequest, lender: HostHandle) -> Self {
        LentRequest {
            target: req.uri,
            prefix: req.mount_prefix,
            path: req.path,
            query: req.query,
            headers: req.headers,
            _lender: lender,
        }
    }

    fn text(&self, text: AbiStr) -> &str {
        // SAFETY: lent memory, valid while `_lender` is held (ABI 1.3), which outlives `&self`;
        // the ABI promises UTF-8 for a lent request's strings.
        unsafe { std::str::from_utf8_unchecked(text.as_bytes()) }
    }

    /// The request target as received.
    pub(crate) fn target(&self) -> &str {
        self.text(self.target)
    }

    /// The mount prefix.
    pub(crate) fn prefix(&self) -> &str {
        self.text(self.prefix)
    }

    /// The path below the mount.
    pub(crate) fn path(&self) -> &str {
        self.text(self.path)
    }

    /// The query, without `?`.
    pub(crate) fn query(&self) -> &str {
        self.text(self.query)
    }

    /// The headers as a map (values copied). The ABI promises valid names and values; one that
    /// is not would be skipped, not trusted.
    pub(crate) fn header_map(&self) -> HeaderMap {
        // SAFETY: lent memory, valid while `_lender` is held (ABI 1.3).
        unsafe { valid_headers(self.headers) }
    }
}

impl fmt::Debug for LentRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentRequest")
            .field("target", &self.target())
            .field("prefix", &self.prefix())
            .finish_non_exhaustive()
    }
}
