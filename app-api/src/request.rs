//! The inbound request an app handles.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{AsHeaderName, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri, Version};

use crate::body::Body;
use crate::error::{BodyError, HeaderError};
use crate::ffi::lent::LentRequest;
use crate::headers::Add;

/// An inbound HTTP request, as routed to the app.
///
/// Besides the usual method, URI, headers and body it carries where the app is mounted:
/// [`mount_prefix`](Request::mount_prefix) is the part of the path that selected the app
/// (WSGI's `SCRIPT_NAME`) and [`path`](Request::path) the rest (WSGI's `PATH_INFO`), so an app
/// works the same under any mount.
#[derive(Debug)]
pub struct Request {
    pub(crate) method: Method,
    pub(crate) version: Version,
    pub(crate) peer_addr: Option<SocketAddr>,
    pub(crate) local_addr: Option<SocketAddr>,
    pub(crate) head: Head,
    pub(crate) body: Body,
}

/// Where a request's target, mount prefix, path, query and headers live.
#[derive(Debug)]
pub(crate) enum Head {
    /// In the host's memory, lent for as long as the request lives (ABI 1.3): nothing is
    /// copied until the app asks for a [`Uri`] or a [`HeaderMap`], which are then built once.
    /// Both are boxed: the request moves into the app's future, and most apps build neither,
    /// so they should not add to its size.
    Lent {
        request: LentRequest,
        uri: OnceLock<Box<Uri>>,
        headers: OnceLock<Box<HeaderMap>>,
    },
    /// Built by hand ([`RequestBuilder`]).
    Built(Box<Built>),
}

/// A request built by hand owns its parts.
#[derive(Debug)]
pub(crate) struct Built {
    location: Location,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    pub(crate) fn lent(request: LentRequest) -> Self {
        Head::Lent {
            request,
            uri: OnceLock::new(),
            headers: OnceLock::new(),
        }
    }

    fn uri(&self) -> &Uri {
        match self {
            // The host lends the target hyper parsed, so this parses; were it not to, the app
            // sees `/` rather than a panic.
            Head::Lent { request, uri, .. } => {
                uri.get_or_init(|| Box::new(request.target().parse().unwrap_or_default()))
            }
            Head::Built(built) => &built.uri,
        }
    }

    fn headers(&self) -> &HeaderMap {
        match self {
            Head::Lent {
                request, headers, ..
            } => headers.get_or_init(|| Box::new(request.header_map())),
            Head::Built(built) => &built.headers,
        }
    }

    fn prefix(&self) -> &str {
        match self {
            Head::Lent { request, .. } => request.prefix(),
            Head::Built(built) => built.location.prefix(),
        }
    }

    fn path(&self) -> &str {
        match self {
            Head::Lent { request, .. } => request.path(),
            Head::Built(built) => built.location.path(),
        }
    }

    fn query(&self) -> &str {
        match self {
            Head::Lent { request, .. } => request.query(),
            Head::Built(built) => built.location.query(),
        }
    }
}

/// The mount prefix, the path below it and the query of a request built by hand, kept in one
/// string.
#[derive(Debug, Default)]
pub(crate) struct Location {
    text: String,
    prefix_end: usize,
    path_end: usize,
}

impl Location {
    fn new(prefix: &str, path: &str, query: &str) -> Self {
        Location {
            text: [prefix, path, query].concat(),
            prefix_end: prefix.len(),
            path_end: prefix.len() + path.len(),
        }
    }

    fn prefix(&self) -> &str {
        &self.text[..self.prefix_end]
    }

    fn path(&self) -> &str {
        &self.text[self.prefix_end..self.path_end]
    }

    fn query(&self) -> &str {
        &self.text[self.path_end..]
    }
}

impl Request {
    /// Starts a request for tests and tools: `uri` is the path below the mount (with an
    /// optional query), the mount prefix is empty.
    ///
    /// ```
    /// use berth_app::{Method, Request};
    /// let req = Request::builder(Method::POST, "/items?id=7")
    ///     .header("content-type", "text/plain")
    ///     .body("hi")
    ///     .build()?;
    /// assert_eq!(req.path(), "/items");
    /// assert_eq!(req.query_param("id").as_deref(), Some("7"));
    /// # Ok::<(), berth_app::HeaderError>(())
    /// ```
    pub fn builder(method: Method, uri: &str) -> RequestBuilder {
        RequestBuilder {
            method,
            headers: HeaderMap::new(),
            peer_addr: None,
            body: Body::empty(),
            mount_prefix: String::new(),
            target: uri.to_owned(),
            header_error: None,
        }
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The request target as the client sent it (including the mount prefix).
    pub fn uri(&self) -> &Uri {
        self.head.uri()
    }

    /// The HTTP version of the client's connection.
    pub fn version(&self) -> Version {
        self.version
    }

    /// All headers; repeated names keep every value in order, values are byte-exact.
    pub fn headers(&self) -> &HeaderMap {
        self.head.headers()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: impl AsHeaderName) -> Option<&HeaderValue> {
        self.head.headers().get(name)
    }

    /// The client's address, when the connection has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The server address the request arrived on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Where the app is mounted, e.g. `/hello` (WSGI's `SCRIPT_NAME`).
    pub fn mount_prefix(&self) -> &str {
        self.head.prefix()
    }

    /// The path below the mount, always starting with `/` (WSGI's `PATH_INFO`), still
    /// percent-encoded.
    pub fn path(&self) -> &str {
        self.head.path()
    }

    /// The raw query string (without `?`), empty when there is none.
    pub fn query(&self) -> &str {
        self.head.query()
    }

    /// Every query parameter, decoded, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query().as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// The first value of query parameter `name`, decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded::parse(self.query().as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// Every value of query parameter `name`, decoded, in order.
    pub fn query_params(&self, name: &str) -> Vec<String> {
        form_urlencoded::parse(self.query().as_bytes())
            .filter(|(k, _)| k == name)
            .map(|(_, v): (Cow<'_, str>, Cow<'_, str>)| v.into_owned())
            .collect()
    }

    /// The body, to read chunk by chunk.
    pub fn body_mut(&mut self) -> &mut Body {
        &mut self.body
    }

    /// Takes the body out, leaving an empty one.
    pub fn take_body(&mut self) -> Body {
        std::mem::take(&mut self.body)
    }

    /// Consumes the request, returning its body.
    pub fn into_body(self) -> Body {
        self.body
    }

    /// Reads the whole body into memory. Like [`Body::bytes`] and
    /// [`FetchResponse::bytes`](crate::FetchResponse::bytes), it consumes the request: read
    /// what else you need of it first, or [`take_body`](Request::take_body) and read that.
    pub async fn bytes(self) -> Result<Bytes, BodyError> {
        self.body.bytes().await
    }

    /// Reads the whole body as UTF-8 text (invalid sequences replaced).
    pub async fn text(self) -> Result<String, BodyError> {
        self.body.text().await
    }

    /// Reads the whole body as JSON.
    #[cfg(feature = "json")]
    pub async fn json<T: serde::de::DeserializeOwned>(self) -> Result<T, BodyError> {
        self.body.json().await
    }
}

/// Builds a [`Request`] by hand, for unit tests of a handler.
#[derive(Debug)]
pub struct RequestBuilder {
    method: Method,
    headers: HeaderMap,
    peer_addr: Option<SocketAddr>,
    body: Body,
    mount_prefix: String,
    target: String,
    /// The first header that could not be set.
    header_error: Option<Box<HeaderError>>,
}

impl RequestBuilder {
    /// Appends a header. `name` and `value` may be anything the `http` crate's builders
    /// accept, as for [`Response::with_header`](crate::Response::with_header).
    ///
    /// An invalid name or value does not panic: the builder keeps the first such
    /// [`HeaderError`], and [`build`](RequestBuilder::build) returns it.
    pub fn header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<HeaderName>,
        K::Error: Into<http::Error>,
        V: TryInto<HeaderValue>,
        V::Error: Into<http::Error>,
    {
        let (headers, error) = (&mut self.headers, &mut self.header_error);
        crate::headers::set(headers, error, Add::Append, name, value);
        self
    }

    /// Sets the mount prefix (default: none).
    pub fn mount_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.mount_prefix);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the client's address.
    pub fn peer_addr(mut self, addr: SocketAddr) -> Self {
        self.peer_addr = Some(addr);
        self
    }

    /// Finishes the request, or returns the first header that could not be set.
    ///
    /// # Panics
    /// If the request target given to [`Request::builder`] is not a valid URI.
    pub fn build(self) -> Result<Request, HeaderError> {
        if let Some(err) = self.header_error {
            return Err(*err);
        }
        let (path, query) = match self.target.split_once('?') {
            Some((path, query)) => (path, query),
            None => (self.target.as_str(), ""),
        };
        let path = if path.is_empty() { "/" } else { path };
        let full = format!("{}{}", self.mount_prefix, self.target);
        let uri: Uri = full
            .parse()
            .unwrap_or_else(|_| panic!("invalid request target {full:?}"));
        Ok(Request {
            method: self.method,
            version: Version::HTTP_11,
            peer_addr: self.peer_addr,
            local_addr: None,
            head: Head::Built(Box::new(Built {
                location: Location::new(&self.mount_prefix, path, query),
                uri,
                headers: self.headers,
            })),
            body: self.body,
        })
    }
}

#[cfg(test)]
mod tests {
    use futures_executor::block_on;
    use http::Method;

    use super::*;

    #[test]
    fn a_built_request_keeps_its_headers_in_order() {
        let req = Request::builder(Method::GET, "/a?b=c")
            .header("x-a", "1")
            .header(http::header::ACCEPT, "*/*")
            .header(String::from("x-a"), &b"\xff"[..])
            .build()
            .expect("valid headers");
        let x_a: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(x_a, ["1".as_bytes(), b"\xff"]);
        assert_eq!(req.headers()["accept"], "*/*");
    }

    #[test]
    fn a_bad_header_name_or_value_makes_build_fail_not_panic() {
        let err = Request::builder(Method::GET, "/")
            .header("bad name", "x")
            .build()
            .expect_err("bad name");
        assert_eq!(err.to_string(), "invalid header name");
        let err = Request::builder(Method::GET, "/")
            .header("x-ok", "1")
            .header("x-note", "line\nbreak")
            .header("bad name", "x")
            .build()
            .expect_err("bad value");
        assert_eq!(err.to_string(), "invalid value for header x-note");
        assert_eq!(err.header_name().map(|n| n.as_str()), Some("x-note"));
    }

    #[test]
    fn the_body_reads_with_the_same_receiver_as_bodies_and_fetch_responses() {
        let built = |body: &'static str| {
            Request::builder(Method::POST, "/")
                .body(body)
                .build()
                .expect("valid")
        };
        assert_eq!(block_on(built("hi").bytes()), Ok(Bytes::from("hi")));
        assert_eq!(block_on(built("hi").text()).as_deref(), Ok("hi"));
        let mut req = built("kept");
        let body = req.take_body();
        assert_eq!(block_on(body.text()).as_deref(), Ok("kept"));
        assert_eq!(req.path(), "/", "the request is still there");
    }

    #[cfg(feature = "json")]
    #[test]
    fn request_and_body_read_json() {
        let req = Request::builder(Method::POST, "/")
            .body(r#"{"id": 7}"#)
            .build()
            .expect("valid");
        let value: serde_json::Value = block_on(req.json()).expect("json");
        assert_eq!(value["id"], 7);
        let body = Body::from("not json");
        let err = block_on(body.json::<serde_json::Value>()).expect_err("invalid");
        assert!(err.to_string().starts_with("invalid JSON: "), "{err}");
    }
}
