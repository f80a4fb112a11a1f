//! The inbound request an app handles.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{AsHeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri, Version};

use crate::body::Body;
use crate::error::BodyError;
use crate::ffi::lent::LentRequest;

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
    /// let req = Request::builder(Method::POST, "/items?id=7").body("hi").build();
    /// assert_eq!(req.path(), "/items");
    /// assert_eq!(req.query_param("id").as_deref(), Some("7"));
    /// ```
    pub fn builder(method: Method, uri: &str) -> RequestBuilder {
        RequestBuilder {
            method,
            headers: HeaderMap::new(),
            peer_addr: None,
            body: Body::empty(),
            mount_prefix: String::new(),
            target: uri.to_owned(),
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

    /// Reads the whole body into memory.
    pub async fn bytes(&mut self) -> Result<Bytes, BodyError> {
        self.take_body().bytes().await
    }

    /// Reads the whole body as UTF-8 text (invalid sequences replaced).
    pub async fn text(&mut self) -> Result<String, BodyError> {
        self.take_body().text().await
    }

    /// Reads the whole body as JSON.
    #[cfg(feature = "json")]
    pub async fn json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, BodyError> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| BodyError::new(format!("invalid JSON: {e}")))
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
}

impl RequestBuilder {
    /// Adds a header. Invalid names or values are programming errors in a test and panic.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let name = http::header::HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|_| panic!("invalid header name {name:?}"));
        let value = HeaderValue::from_bytes(value.as_ref())
            .unwrap_or_else(|_| panic!("invalid value for header {name}"));
        self.headers.append(name, value);
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

    /// Finishes the request.
    pub fn build(self) -> Request {
        let (path, query) = match self.target.split_once('?') {
            Some((path, query)) => (path, query),
            None => (self.target.as_str(), ""),
        };
        let path = if path.is_empty() { "/" } else { path };
        let full = format!("{}{}", self.mount_prefix, self.target);
        let uri: Uri = full
            .parse()
            .unwrap_or_else(|_| panic!("invalid request target {full:?}"));
        Request {
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
        }
    }
}
