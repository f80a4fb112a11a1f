//! Responses, both the app's answer and an outbound fetch's result: handed over with their
//! headers in one heap block, and taken apart on the other side.

use std::ffi::c_void;
use std::fmt;
use std::ptr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::abi::{AbiBody, AbiHeaders, AbiResponse};
use crate::ffi::body::{ForeignBody, FullBody, release_full};
use crate::ffi::buf::{BoundaryError, owner_of};
use crate::ffi::headers::{HeaderList, headers_from_abi, valid_headers};

impl AbiResponse {
    /// Hands a response over: the headers stay in a heap block released by the receiver.
    pub fn new(status: StatusCode, headers: HeaderMap, body: AbiBody) -> Self {
        let mut head = Box::new(ResponseHead::new(headers));
        let abi_headers = head.lend();
        let (owner, release) = owner_of(head);
        AbiResponse {
            status: status.as_u16(),
            headers: abi_headers,
            body,
            owner,
            release,
        }
    }

    /// A response whose body is `data`, held whole: headers, body state and bytes are one
    /// reference-counted block, which the response, its body and the body's one chunk share,
    /// so that the whole answer costs one allocation.
    pub(crate) fn with_full_body(status: StatusCode, headers: HeaderMap, data: Bytes) -> Self {
        let mut block = Arc::new(FullBody::new(data, ResponseHead::new(headers)));
        let abi_headers = Arc::get_mut(&mut block)
            .expect("a new Arc is unique")
            .extra
            .lend();
        let body = FullBody::share(&block);
        AbiResponse {
            status: status.as_u16(),
            headers: abi_headers,
            body,
            owner: Arc::into_raw(block).cast_mut().cast(),
            release: Some(release_full::<ResponseHead>),
        }
    }

    /// An empty placeholder (used next to a non-OK tag).
    pub const fn none() -> Self {
        AbiResponse {
            status: 0,
            headers: AbiHeaders {
                ptr: ptr::null(),
                len: 0,
            },
            body: AbiBody::empty(),
            owner: ptr::null_mut(),
            release: None,
        }
    }

    /// Takes ownership of a received response: copies and validates status and headers, releases
    /// the producer's storage, and wraps the body. Everything is released on error too.
    ///
    /// # Safety
    /// `self` must satisfy the ABI's response contract and not be used elsewhere afterwards.
    pub unsafe fn into_parts(self) -> Result<(StatusCode, HeaderMap, ForeignBody), BoundaryError> {
        // SAFETY: forwarded to the caller.
        let (status, headers, body) = unsafe { self.into_lent_parts() }?;
        // SAFETY: the headers stay with their producer until `headers` is dropped, below.
        let map = unsafe { headers_from_abi(headers.list) }?;
        Ok((status, map, body))
    }

    /// [`AbiResponse::into_parts`] with the headers kept where they are, to be read in place
    /// until the returned [`LentHeaders`] is dropped.
    ///
    /// # Safety
    /// As for [`AbiResponse::into_parts`].
    pub(super) unsafe fn into_lent_parts(
        self,
    ) -> Result<(StatusCode, LentHeaders, ForeignBody), BoundaryError> {
        // SAFETY: the body moves to us under the body contract.
        let body = unsafe { ForeignBody::from_abi(self.body) };
        let headers = LentHeaders {
            list: self.headers,
            owner: self.owner,
            release: self.release,
        };
        let status = StatusCode::from_u16(self.status)
            .map_err(|_| BoundaryError(format!("invalid status code {}", self.status)))?;
        Ok((status, headers, body))
    }
}

/// A received response's headers, read in place until dropped, which releases the producer's
/// storage: the response contract has the receiver release it once, whenever it is done.
pub struct LentHeaders {
    list: AbiHeaders,
    owner: *mut c_void,
    release: Option<unsafe extern "C" fn(owner: *mut c_void)>,
}

// SAFETY: the headers are immutable until released, and the response contract lets the
// receiver read them and release them from any thread.
unsafe impl Send for LentHeaders {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for LentHeaders {}

impl LentHeaders {
    /// The headers as a map (values copied). The producer built them from valid names and
    /// values; one that is not would be skipped, not trusted.
    pub fn to_map(&self) -> HeaderMap {
        // SAFETY: borrowed from `owner`, which is released only when `self` is dropped.
        unsafe { valid_headers(self.list) }
    }
}

impl Drop for LentHeaders {
    fn drop(&mut self) {
        if let Some(release) = self.release {
            // SAFETY: the response contract: `release(owner)` exactly once, here.
            unsafe { release(self.owner) };
        }
    }
}

impl fmt::Debug for LentHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentHeaders")
            .field("len", &self.list.len)
            .finish_non_exhaustive()
    }
}

/// Where a response's headers live until the receiver releases them: the map, and the list
/// that borrows from it once both are where they stay ([`ResponseHead::lend`]). Freed by the
/// receiver's `release`.
struct ResponseHead {
    headers: HeaderMap,
    list: HeaderList,
}

impl ResponseHead {
    fn new(headers: HeaderMap) -> Self {
        ResponseHead {
            headers,
            list: HeaderList::empty(),
        }
    }

    /// Points the list at the headers and returns its ABI view, valid while `self` neither
    /// moves nor changes: call it once `self` is in the heap block the receiver releases.
    fn lend(&mut self) -> AbiHeaders {
        self.list = HeaderList::new(&self.headers);
        self.list.as_abi()
    }
}

// SAFETY: `list` only points into `headers` (or at static strings), which move and are
// shared with it.
unsafe impl Send for ResponseHead {}
// SAFETY: as above; nothing in `list` is written through.
unsafe impl Sync for ResponseHead {}
