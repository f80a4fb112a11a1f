//! The inbound request an app handles.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{AsHeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri, Version};

use crate::body::{Body, BodyError};

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
    pub(crate) headers: crate::headers::Headers,
    pub(crate) peer_addr: Option<SocketAddr>,
    pub(crate) local_addr: Option<SocketAddr>,
    pub(crate) location: Location,
    pub(crate) body: Body,
}

/// The request target, the mount prefix, the path below it and the query, kept in one string:
/// one allocation per request instead of four. The target becomes a [`Uri`] only when the app
/// asks for one; most apps read the path and query instead.
#[derive(Debug, Default)]
pub(crate) struct Location {
    text: String,
    target_end: usize,
    prefix_end: usize,
    path_end: usize,
    uri: OnceLock<Uri>,
}

impl Location {
    /// Copies the four parts, which must be UTF-8 (one check over all of them).
    pub(crate) fn new(
        target: &[u8],
        prefix: &[u8],
        path: &[u8],
        query: &[u8],
    ) -> Result<Self, std::string::FromUtf8Error> {
        let mut text = Vec::with_capacity(target.len() + prefix.len() + path.len() + query.len());
        for part in [target, prefix, path, query] {
            text.extend_from_slice(part);
        }
        let target_end = target.len();
        let prefix_end = target_end + prefix.len();
        Ok(Location {
            text: String::from_utf8(text)?,
            target_end,
            prefix_end,
            path_end: prefix_end + path.len(),
            uri: OnceLock::new(),
        })
    }

    fn uri(&self) -> &Uri {
        // The host hands over the target hyper parsed, so this parses; were it not to, the
        // app sees `/` rather than a panic.
        self.uri
            .get_or_init(|| self.text[..self.target_end].parse().unwrap_or_default())
    }

    fn prefix(&self) -> &str {
        &self.text[self.target_end..self.prefix_end]
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
            request: Request {
                method,
                version: Version::HTTP_11,
                headers: crate::headers::Headers::default(),
                peer_addr: None,
                local_addr: None,
                location: Location::default(),
                body: Body::empty(),
            },
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
        self.location.uri()
    }

    /// The HTTP version of the client's connection.
    pub fn version(&self) -> Version {
        self.version
    }

    /// All headers; repeated names keep every value in order, values are byte-exact.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.map()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: impl AsHeaderName) -> Option<&HeaderValue> {
        self.headers.map().get(name)
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
        self.location.prefix()
    }

    /// The path below the mount, always starting with `/` (WSGI's `PATH_INFO`), still
    /// percent-encoded.
    pub fn path(&self) -> &str {
        self.location.path()
    }

    /// The raw query string (without `?`), empty when there is none.
    pub fn query(&self) -> &str {
        self.location.query()
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
    request: Request,
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
        self.request.headers.map_mut().append(name, value);
        self
    }

    /// Sets the mount prefix (default: none).
    pub fn mount_prefix(mut self, prefix: &str) -> Self {
        prefix.clone_into(&mut self.mount_prefix);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Body>) -> Self {
        self.request.body = body.into();
        self
    }

    /// Sets the client's address.
    pub fn peer_addr(mut self, addr: SocketAddr) -> Self {
        self.request.peer_addr = Some(addr);
        self
    }

    /// Finishes the request.
    pub fn build(self) -> Request {
        let mut request = self.request;
        let (path, query) = match self.target.split_once('?') {
            Some((path, query)) => (path, query),
            None => (self.target.as_str(), ""),
        };
        let path = if path.is_empty() { "/" } else { path };
        let full = format!("{}{}", self.mount_prefix, self.target);
        let uri: Uri = full
            .parse()
            .unwrap_or_else(|_| panic!("invalid request target {full:?}"));
        let parts = [&full, &self.mount_prefix, path, query].map(str::as_bytes);
        let mut location = Location::new(parts[0], parts[1], parts[2], parts[3])
            .unwrap_or_else(|_| unreachable!("every part is a str"));
        location.uri = OnceLock::from(uri);
        request.location = location;
        request
    }
}
