//! The request an app reads in place (ABI 1.3): copied once out of hyper's request head, lent
//! across the boundary for as long as the app holds its scope.

use std::net::SocketAddr;

use berth_app::abi::{
    AbiHeader, AbiHeaders, AbiRequest, AbiSocketAddr, AbiStr, HTTP_2, HTTP_3, HTTP_09, HTTP_10,
    HTTP_11,
};
use http::HeaderMap;

/// A request as the server (or an embedder) has it, borrowed to build a [`LentRequest`].
#[derive(Debug)]
pub struct RequestView<'a> {
    /// The request method.
    pub method: &'a str,
    /// The request target.
    pub uri: &'a http::Uri,
    /// The HTTP version.
    pub version: http::Version,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The client's address.
    pub peer_addr: Option<SocketAddr>,
    /// The address the request arrived on.
    pub local_addr: Option<SocketAddr>,
    /// The length of the app's mount at the start of the path (the router matched it there
    /// byte for byte).
    pub mount_len: usize,
}

/// A request lent to an app. What the app reads of it is copied once, into one buffer of text
/// and one array of headers, and the [`AbiRequest`] it is handed points into both. Both are
/// heap blocks that are never written again, so the pointers stay valid wherever the
/// `LentRequest` itself moves, for as long as it lives: inside its request's scope, until the
/// app drops its last reference to that.
///
/// Copied, rather than lent from where hyper parsed it: hyper's header values share the
/// connection's read buffer, and a value held while the request waits makes hyper allocate a
/// second buffer for the connection.
pub struct LentRequest {
    /// The target (which holds the path and the query), the method, then each header's name
    /// and value.
    #[expect(dead_code, reason = "only read through the pointers into it")]
    text: Vec<u8>,
    /// Each header's name and value, pointing into `text`.
    headers: Vec<AbiHeader>,
    method: AbiStr,
    uri: AbiStr,
    mount_prefix: AbiStr,
    path: AbiStr,
    query: AbiStr,
    version: u32,
    peer_addr: AbiSocketAddr,
    local_addr: AbiSocketAddr,
}

// SAFETY: the pointers in a `LentRequest` point into its own heap blocks or to statics, none of
// which is written after it was built; moving it to, or reading it from, another thread is like
// doing so with the bytes it owns.
unsafe impl Send for LentRequest {}
// SAFETY: as above: shared access only ever reads.
unsafe impl Sync for LentRequest {}

impl std::fmt::Debug for LentRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // SAFETY: `uri` points into `self.text` (or to a static), valid while `self` is borrowed.
        let uri = unsafe { self.uri.as_bytes() };
        f.debug_struct("LentRequest")
            .field("uri", &String::from_utf8_lossy(uri))
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

impl LentRequest {
    /// The method and the target, as the call table records them.
    pub fn method_and_target(&self) -> [&[u8]; 2] {
        // SAFETY: `method` and `uri` point into `self.text` or to statics, valid while `self`
        // is borrowed.
        unsafe { [self.method.as_bytes(), self.uri.as_bytes()] }
    }

    /// No request: what a lifecycle hook's scope carries.
    pub fn none() -> Self {
        LentRequest {
            text: Vec::new(),
            headers: Vec::new(),
            method: AbiStr::from_static(""),
            uri: AbiStr::from_static(""),
            mount_prefix: AbiStr::from_static(""),
            path: AbiStr::from_static(""),
            query: AbiStr::from_static(""),
            version: HTTP_11,
            peer_addr: berth_app::ffi::socket_addr_to_abi(None),
            local_addr: berth_app::ffi::socket_addr_to_abi(None),
        }
    }

    /// Copies `view` in, in one walk over its headers. The target is written as an app sees
    /// it (origin form as received, anything else formatted like `Uri`'s `Display`), and the
    /// mount prefix, the path below it and the query are read out of it, not copied again.
    pub fn new(view: &RequestView<'_>) -> Self {
        let uri = view.uri;
        let path = uri.path();
        let header_bytes: usize = view
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        let mut text = Vec::with_capacity(
            uri.scheme_str().map_or(0, |s| s.len() + 3)
                + uri.authority().map_or(0, |a| a.as_str().len())
                + path.len()
                + uri.query().map_or(0, |q| q.len() + 1)
                + view.method.len()
                + header_bytes,
        );
        let mut push = |bytes: &[u8]| {
            let at = text.len();
            text.extend_from_slice(bytes);
            at
        };
        if let Some(scheme) = uri.scheme_str() {
            push(scheme.as_bytes());
            push(b"://");
        }
        if let Some(authority) = uri.authority() {
            push(authority.as_str().as_bytes());
        }
        let path_at = push(path.as_bytes());
        let query = uri.query().map(|query| {
            push(b"?");
            (push(query.as_bytes()), query.len())
        });
        let method_at = push(view.method.as_bytes());
        let target_len = method_at;
        let headers_at = method_at + view.method.len();
        let mut lengths = Vec::with_capacity(view.headers.len());
        for (name, value) in view.headers {
            let (name, value) = (name.as_str().as_bytes(), value.as_bytes());
            push(name);
            push(value);
            lengths.push((name.len(), value.len()));
        }
        // Pointers only now that the text is complete: it never changes again.
        let piece = |at: usize, len: usize| AbiStr::new(&text[at..at + len]);
        let mut at = headers_at;
        let headers = lengths
            .into_iter()
            .map(|(name_len, value_len)| {
                let header = AbiHeader {
                    name: piece(at, name_len),
                    value: piece(at + name_len, value_len),
                };
                at += name_len + value_len;
                header
            })
            .collect();
        let mount_len = view.mount_len.min(path.len());
        LentRequest {
            uri: piece(0, target_len),
            method: piece(method_at, view.method.len()),
            mount_prefix: piece(path_at, mount_len),
            // The part below the mount, `/` when the request named the mount itself.
            path: match path.len() - mount_len {
                0 => AbiStr::from_static("/"),
                below => piece(path_at + mount_len, below),
            },
            query: query.map_or(AbiStr::from_static(""), |(at, len)| piece(at, len)),
            headers,
            version: version_to_abi(view.version),
            peer_addr: berth_app::ffi::socket_addr_to_abi(view.peer_addr),
            local_addr: berth_app::ffi::socket_addr_to_abi(view.local_addr),
            text,
        }
    }

    /// The ABI view. Its pointers are valid for as long as `self` lives.
    pub fn abi(&self) -> AbiRequest {
        AbiRequest {
            method: self.method,
            uri: self.uri,
            version: self.version,
            headers: AbiHeaders {
                ptr: self.headers.as_ptr(),
                len: self.headers.len(),
            },
            peer_addr: self.peer_addr,
            local_addr: self.local_addr,
            mount_prefix: self.mount_prefix,
            path: self.path,
            query: self.query,
        }
    }
}

fn version_to_abi(version: http::Version) -> u32 {
    match version {
        http::Version::HTTP_09 => HTTP_09,
        http::Version::HTTP_10 => HTTP_10,
        http::Version::HTTP_2 => HTTP_2,
        http::Version::HTTP_3 => HTTP_3,
        _ => HTTP_11,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The bytes behind `text`.
    ///
    /// # Safety
    /// `text` must point into memory that outlives the returned copy's creation.
    unsafe fn bytes(text: AbiStr) -> Vec<u8> {
        // SAFETY: forwarded to the caller.
        unsafe { text.as_bytes() }.to_vec()
    }

    #[test]
    fn a_lent_request_reads_back_exactly_after_it_moves() {
        // (request target, mount length): (target as the app sees it, prefix, path, query).
        let cases = [
            ("/app/sub?q=1", 4, ("/app/sub?q=1", "/app", "/sub", "q=1")),
            ("/app", 4, ("/app", "/app", "/", "")),
            ("/app/?", 4, ("/app/?", "/app", "/", "")),
            (
                "http://example.com:8080/app/x?a=b",
                4,
                ("http://example.com:8080/app/x?a=b", "/app", "/x", "a=b"),
            ),
        ];
        for value_len in [1, 128, 384] {
            for (target, mount_len, (want_target, prefix, path, query)) in cases {
                let uri: http::Uri = target.parse().expect("valid target");
                let mut headers = HeaderMap::new();
                let long = HeaderValue::from_bytes(&vec![b'v'; value_len]).expect("valid");
                headers.append("x-long", long);
                headers.append("x-dup", HeaderValue::from_static("one"));
                headers.append("x-dup", HeaderValue::from_bytes(b"t\xffo").expect("opaque"));
                for name in ["a", "b", "c", "d"] {
                    headers.append(name, HeaderValue::from_static("e"));
                }
                let view = RequestView {
                    method: "PATCH",
                    uri: &uri,
                    version: http::Version::HTTP_2,
                    headers: &headers,
                    peer_addr: None,
                    local_addr: None,
                    mount_len,
                };
                let lent = LentRequest::new(&view);
                // Moved after it was built, as it is into its scope.
                let lent = Box::new(lent);
                let abi = lent.abi();
                // SAFETY: every pointer points into `lent`'s heap blocks (or to a static).
                let got = unsafe {
                    let list = std::slice::from_raw_parts(abi.headers.ptr, abi.headers.len);
                    let pairs: Vec<(Vec<u8>, Vec<u8>)> = list
                        .iter()
                        .map(|h| (bytes(h.name), bytes(h.value)))
                        .collect();
                    let strs = [abi.method, abi.uri, abi.mount_prefix, abi.path, abi.query];
                    (strs.map(|s| bytes(s)), pairs)
                };
                let want_strs = [
                    b"PATCH".to_vec(),
                    want_target.into(),
                    prefix.into(),
                    path.into(),
                    query.into(),
                ];
                let want_pairs: Vec<(Vec<u8>, Vec<u8>)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str().into(), v.as_bytes().into()))
                    .collect();
                let context = format!("{target} with a value of {value_len} bytes");
                assert_eq!(got, (want_strs, want_pairs), "{context}");
                assert_eq!(abi.version, HTTP_2);
            }
        }
    }
}
