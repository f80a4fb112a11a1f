//! Header arrays: lent across for a call ([`HeaderList`]) and read back into a [`HeaderMap`].

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::abi::{AbiHeader, AbiHeaders, AbiStr};
use crate::ffi::buf::BoundaryError;

/// Borrowed header array built from a [`HeaderMap`]; keep it alive, and where it is, while the
/// [`AbiHeaders`] from [`HeaderList::as_abi`] is in use. Up to [`HeaderList::INLINE`] headers
/// live in the list itself, so most requests and responses cross without allocating for it.
#[derive(Debug)]
pub struct HeaderList {
    len: usize,
    inline: [AbiHeader; HeaderList::INLINE],
    spilled: Vec<AbiHeader>,
}

impl HeaderList {
    /// How many headers fit without a heap allocation.
    pub const INLINE: usize = 4;

    const NONE: AbiHeader = AbiHeader {
        name: AbiStr::from_static(""),
        value: AbiStr::from_static(""),
    };

    /// No headers.
    pub const fn empty() -> Self {
        HeaderList {
            len: 0,
            inline: [Self::NONE; Self::INLINE],
            spilled: Vec::new(),
        }
    }

    /// Borrows every header of `map` in order (repeated names once per value).
    pub fn new(map: &HeaderMap) -> Self {
        let mut list = HeaderList::empty();
        for (name, value) in map {
            list.push(AbiHeader {
                name: AbiStr::new(name.as_str().as_bytes()),
                value: AbiStr::new(value.as_bytes()),
            });
        }
        list
    }

    /// Appends a header; past [`HeaderList::INLINE`] the list moves to the heap.
    #[inline]
    pub fn push(&mut self, header: AbiHeader) {
        if self.spilled.is_empty() && self.len < Self::INLINE {
            self.inline[self.len] = header;
            self.len += 1;
            return;
        }
        if self.spilled.is_empty() {
            self.spilled.reserve(2 * Self::INLINE);
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.push(header);
    }

    /// The headers, in order.
    pub fn as_slice(&self) -> &[AbiHeader] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }

    /// The headers, to point them elsewhere (at copies of what they point to).
    pub fn as_mut_slice(&mut self) -> &mut [AbiHeader] {
        if self.spilled.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spilled
        }
    }

    /// The ABI view of the list.
    pub fn as_abi(&self) -> AbiHeaders {
        let items = self.as_slice();
        AbiHeaders {
            ptr: items.as_ptr(),
            len: items.len(),
        }
    }
}

/// The borrowed array behind `headers`.
///
/// # Safety
/// `headers` must satisfy the ABI's borrowed contract for as long as the slice is used.
unsafe fn header_slice<'a>(headers: AbiHeaders) -> &'a [AbiHeader] {
    if headers.ptr.is_null() || headers.len == 0 {
        &[]
    } else {
        // SAFETY: borrowed contract: `ptr[..len]` is a readable array of `AbiHeader`.
        unsafe { std::slice::from_raw_parts(headers.ptr, headers.len) }
    }
}

/// Copies the valid headers of `headers` into a [`HeaderMap`], skipping any other: for headers
/// the other side promises are valid, read long after they arrived, where an error would have
/// no one to go to.
///
/// # Safety
/// `headers` must be readable for the duration of this call.
pub(super) unsafe fn valid_headers(headers: AbiHeaders) -> HeaderMap {
    // SAFETY: forwarded to the caller.
    let list = unsafe { header_slice(headers) };
    let mut map = HeaderMap::with_capacity(list.len());
    for header in list {
        // SAFETY: each name and value is readable as long as the array.
        let (name, value) = unsafe { (header.name.as_bytes(), header.value.as_bytes()) };
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// Copies borrowed headers into a [`HeaderMap`], validating names and values.
///
/// # Safety
/// `headers` must satisfy the ABI's borrowed contract for the duration of this call.
pub unsafe fn headers_from_abi(headers: AbiHeaders) -> Result<HeaderMap, BoundaryError> {
    // SAFETY: forwarded to the caller.
    let list = unsafe { header_slice(headers) };
    // Room for the few headers a server adds on the way out (HTTP/2: content-length, date), so
    // that they do not make the map grow.
    let mut map = HeaderMap::with_capacity(list.len() + 2);
    for header in list {
        // SAFETY: each name and value is borrowed under the same contract as the array.
        let (name, value) = unsafe { (header.name.as_bytes(), header.value.as_bytes()) };
        let name = HeaderName::from_bytes(name).map_err(|_| {
            BoundaryError(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(name)
            ))
        })?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| BoundaryError(format!("invalid value for header {name}")))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use http::HeaderMap;
    use http::header::{CONTENT_TYPE, HeaderValue};

    use super::*;
    use crate::abi::*;
    use crate::ffi::buf::*;

    #[test]
    fn headers_round_trip_in_order_and_byte_exact() {
        let mut map = HeaderMap::new();
        map.append("x-multi", HeaderValue::from_static("one"));
        map.append("x-multi", HeaderValue::from_static("two"));
        map.append(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        map.append("x-multi", HeaderValue::from_static("three"));
        map.append(
            "x-binary",
            HeaderValue::from_bytes(&[0xff, 0xfe, b'a', 0x80]).expect("opaque bytes are allowed"),
        );
        map.append("x-empty", HeaderValue::from_static(""));

        let list = HeaderList::new(&map);
        let abi = list.as_abi();
        assert_eq!(abi.len, 6);
        // SAFETY: `list` and `map` outlive the call.
        let back = unsafe { headers_from_abi(abi) }.expect("valid headers");

        let pairs = |m: &HeaderMap| -> Vec<(String, Vec<u8>)> {
            m.iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect()
        };
        assert_eq!(pairs(&back), pairs(&map));
        let multi: Vec<_> = back.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["one", "two", "three"]);
        assert_eq!(back["x-binary"].as_bytes(), [0xff, 0xfe, b'a', 0x80]);
    }

    #[test]
    fn empty_and_null_header_arrays_are_empty() {
        let list = HeaderList::new(&HeaderMap::new());
        // SAFETY: `list` outlives the call.
        assert!(
            unsafe { headers_from_abi(list.as_abi()) }
                .expect("empty")
                .is_empty()
        );
        let null = AbiHeaders {
            ptr: ptr::null(),
            len: 0,
        };
        // SAFETY: null with length 0 is the ABI's empty array.
        assert!(unsafe { headers_from_abi(null) }.expect("empty").is_empty());
    }

    #[test]
    fn invalid_headers_from_the_other_side_are_errors() {
        let header = |name: &'static [u8], value: &'static [u8]| AbiHeader {
            name: AbiStr::new(name),
            value: AbiStr::new(value),
        };
        let bad_name = [header(b"bad name", b"v")];
        let bad_value = [header(b"x-ok", b"line\nbreak")];
        let as_abi = |list: &[AbiHeader]| AbiHeaders {
            ptr: list.as_ptr(),
            len: list.len(),
        };
        // SAFETY: the arrays and the static bytes outlive the calls.
        unsafe {
            assert_eq!(
                headers_from_abi(as_abi(&bad_name)),
                Err(BoundaryError("invalid header name \"bad name\"".to_owned()))
            );
            assert_eq!(
                headers_from_abi(as_abi(&bad_value)),
                Err(BoundaryError("invalid value for header x-ok".to_owned()))
            );
        }
    }
}
