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

#[cfg(test)]
mod tests {

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use futures_util::StreamExt as _;
    use futures_util::stream;
    use http::header::{CONTENT_TYPE, HeaderValue};
    use http::{HeaderMap, StatusCode};

    use crate::abi::*;
    use crate::ffi::buf::*;

    use crate::ffi::test_support::*;

    #[test]
    fn response_round_trips() {
        let mut headers = HeaderMap::new();
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.append(
            "x-raw",
            HeaderValue::from_bytes(&[0xff, 0xfe]).expect("opaque bytes"),
        );
        let abi = AbiResponse::new(
            StatusCode::IM_A_TEAPOT,
            headers.clone(),
            AbiBody::full(Bytes::from("short and stout")),
        );
        assert_eq!(abi.status, 418);
        assert_eq!(abi.headers.len, 3);

        // SAFETY: just made, received once.
        let (status, back, body) = unsafe { abi.into_parts() }.expect("valid response");
        assert_eq!(status, StatusCode::IM_A_TEAPOT);
        assert_eq!(back, headers);
        let cookies: Vec<_> = back.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(back["x-raw"].as_bytes(), [0xff, 0xfe]);
        assert_eq!(body.len_hint(), Some(15));
        assert_eq!(read_all(body), (vec![Bytes::from("short and stout")], None));
    }

    #[test]
    fn a_whole_answer_is_one_block_freed_after_its_last_holder_in_any_order() {
        let drops = Drops::default();
        let answer = || {
            crate::Response::text(drops.bytes(b"hello"))
                .with_header(
                    http::header::ETAG,
                    HeaderValue::from_bytes(b"\"v1\"").expect("value"),
                )
                .into_abi()
                .expect("valid headers")
        };

        // Headers released first, then the body read to its end and dropped.
        // SAFETY: just made, received once.
        let (status, headers, body) = unsafe { answer().into_parts() }.expect("valid");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["etag"], "\"v1\"");
        assert_eq!(headers[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(body.len_hint(), Some(5));
        assert_eq!(drops.count(), 0, "the body still holds the block");
        assert_eq!(read_all(body), (vec![Bytes::from("hello")], None));
        assert_eq!(drops.count(), 1);

        // The chunk outlives the body and the response.
        let abi = answer();
        let chunk = poll_raw(&abi.body);
        assert_eq!(chunk.tag, CHUNK_DATA);
        // SAFETY: just made, received once.
        let parts = unsafe { abi.into_parts() }.expect("valid");
        drop(parts);
        assert_eq!(drops.count(), 1, "the chunk still holds the block");
        // SAFETY: the chunk is ours under the owned-buffer contract.
        let data = unsafe { chunk.data.into_bytes() };
        assert_eq!(data, "hello");
        drop(data);
        assert_eq!(drops.count(), 2);

        // An empty answer with headers only: no body, and the headers are still freed.
        // SAFETY: just made, received once.
        let (_, headers, body) = unsafe {
            crate::Response::new(StatusCode::NO_CONTENT)
                .into_abi()
                .expect("valid headers")
                .into_parts()
        }
        .expect("valid");
        assert!(headers.is_empty());
        assert!(body.is_end());
    }

    /// Counts the releases of this module's responses.
    static RESPONSE_RELEASES: AtomicUsize = AtomicUsize::new(0);

    #[test]
    fn response_parts_are_released_once_even_when_invalid() {
        let map: &'static HeaderMap = Box::leak(Box::new(HeaderMap::from_iter([(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        )])));
        let before = RESPONSE_RELEASES.load(Ordering::SeqCst);

        let witness = Arc::new(());
        let held = Arc::clone(&witness);
        let body = stream::iter([0]).map(move |_| {
            let _keep = &held;
            Ok(Bytes::new())
        });
        let abi = counted_response(
            &RESPONSE_RELEASES,
            200,
            map,
            AbiBody::from_stream(Box::pin(body), None),
        );
        // SAFETY: just made, received once.
        let (status, headers, body) = unsafe { abi.into_parts() }.expect("valid");
        assert_eq!((status, &headers), (StatusCode::OK, map));
        assert_eq!(RESPONSE_RELEASES.load(Ordering::SeqCst), before + 1);
        drop(body);
        assert_eq!(Arc::strong_count(&witness), 1);

        // An invalid status is an error, and the headers and the body are released all the same.
        let held = Arc::clone(&witness);
        let body = stream::iter([0]).map(move |_| {
            let _keep = &held;
            Ok(Bytes::new())
        });
        let abi = counted_response(
            &RESPONSE_RELEASES,
            1000,
            map,
            AbiBody::from_stream(Box::pin(body), None),
        );
        // SAFETY: as above.
        let err = unsafe { abi.into_parts() }.expect_err("status 1000 is invalid");
        assert_eq!(err, BoundaryError("invalid status code 1000".to_owned()));
        assert_eq!(RESPONSE_RELEASES.load(Ordering::SeqCst), before + 2);
        assert_eq!(Arc::strong_count(&witness), 1);
    }
}
