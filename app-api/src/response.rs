//! The response an app returns.

use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::abi::AbiResponse;
use crate::body::Body;

/// An HTTP response: status, headers and a body (one buffer or a stream of chunks).
///
/// ```
/// use berth_app::{Response, StatusCode};
/// let ok = Response::text("Hello, world!\n");
/// let missing = Response::text("no such item\n").with_status(StatusCode::NOT_FOUND);
/// assert_eq!(ok.status(), StatusCode::OK);
/// assert_eq!(missing.status(), StatusCode::NOT_FOUND);
/// ```
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Body,
}

impl Response {
    /// A response with `status`, no headers and no body.
    #[inline]
    pub fn new(status: StatusCode) -> Self {
        Response {
            status,
            headers: HeaderMap::new(),
            body: Body::empty(),
        }
    }

    /// `200 OK` with a `text/plain; charset=utf-8` body: a `String`, or a `&'static str`,
    /// which is sent without being copied.
    pub fn text(text: impl Into<Body>) -> Self {
        Response::new(StatusCode::OK)
            .with_header(CONTENT_TYPE, TEXT)
            .with_body(text)
    }

    /// `200 OK` with raw bytes and the given content type.
    pub fn bytes(bytes: impl Into<bytes::Bytes>, content_type: &'static str) -> Self {
        Response::new(StatusCode::OK)
            .with_header(CONTENT_TYPE, self::content_type(content_type))
            .with_body(bytes.into())
    }

    /// `200 OK` with `value` serialised as JSON (`500` if it cannot be serialised).
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(json) => Response::bytes(json, "application/json"),
            Err(err) => Response::text(format!("cannot serialise response: {err}\n"))
                .with_status(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// A response whose body streams from `body`.
    pub fn stream(body: Body) -> Self {
        Response::new(StatusCode::OK).with_body(body)
    }

    /// Replaces the status.
    #[inline]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Sets header `name` to `value`, replacing earlier values.
    #[inline]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The headers, to change.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.headers
    }

    /// The body, to read (in tests).
    pub fn body_mut(&mut self) -> &mut Body {
        &mut self.body
    }

    /// Consumes the response, returning its body.
    pub fn into_body(self) -> Body {
        self.body
    }

    #[cfg(feature = "testing")]
    pub(crate) fn into_parts(self) -> (StatusCode, HeaderMap, Body) {
        (self.status, self.headers, self.body)
    }

    pub(crate) fn into_abi(self) -> AbiResponse {
        match self.body.into_full() {
            Ok(data) => AbiResponse::with_full_body(self.status, self.headers, data),
            Err(body) => AbiResponse::new(self.status, self.headers, body.into_abi()),
        }
    }
}

/// [`Response::text`]'s content type.
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// `value` as a header value. `HeaderValue::from_static` checks each byte of a value it is not
/// given as a constant, every time (for `application/octet-stream`, longer than the rest of a
/// small answer); the common content types are checked once, at compile time.
fn content_type(value: &'static str) -> HeaderValue {
    const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
    const JSON: HeaderValue = HeaderValue::from_static("application/json");
    const OCTETS: HeaderValue = HeaderValue::from_static("application/octet-stream");
    match value {
        "text/plain; charset=utf-8" => TEXT,
        "text/html; charset=utf-8" => HTML,
        "application/json" => JSON,
        "application/octet-stream" => OCTETS,
        _ => HeaderValue::from_static(value),
    }
}

/// Anything a handler may return.
///
/// Implemented for [`Response`], for text (`&'static str`, `String`: `200 text/plain`), for
/// `(StatusCode, text)`, and for `Result<T, E>` where both sides convert, so a handler can use
/// `?` with an error that is itself a response.
pub trait IntoResponse {
    /// Converts into a response.
    fn into_response(self) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self) -> Response {
        self
    }
}

impl IntoResponse for &'static str {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl IntoResponse for String {
    fn into_response(self) -> Response {
        Response::text(self)
    }
}

impl<T: IntoResponse> IntoResponse for (StatusCode, T) {
    fn into_response(self) -> Response {
        self.1.into_response().with_status(self.0)
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self) -> Response {
        match self {
            Ok(ok) => ok.into_response(),
            Err(err) => err.into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, HeaderValue, SERVER};

    use super::*;

    fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
        let listed: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().expect("ascii").to_owned()))
            .collect();
        assert_eq!(listed.len(), headers.len());
        listed
    }

    #[test]
    fn headers_replace_by_name_and_keep_their_order() {
        let response = Response::text("hi")
            .with_header(CACHE_CONTROL, HeaderValue::from_static("no-cache"))
            .with_header(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        assert_eq!(
            pairs(&response.headers),
            [("content-type", "text/html"), ("cache-control", "no-cache")]
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        assert_eq!(response.headers()[CONTENT_TYPE], "text/html");
    }

    #[test]
    fn more_headers_keep_their_order() {
        let response = Response::text("hi")
            .with_header(CACHE_CONTROL, HeaderValue::from_static("no-cache"))
            .with_header(ETAG, HeaderValue::from_static("\"1\""))
            .with_header(CACHE_CONTROL, HeaderValue::from_static("max-age=1"));
        assert_eq!(
            pairs(&response.headers),
            [
                ("content-type", "text/plain; charset=utf-8"),
                ("cache-control", "max-age=1"),
                ("etag", "\"1\""),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn a_read_view_does_not_go_stale_when_a_header_changes() {
        let mut response = Response::text("hi");
        assert_eq!(response.headers().len(), 1);
        response = response.with_header(SERVER, HeaderValue::from_static("berth"));
        assert_eq!(response.headers()[SERVER], "berth");
        assert_eq!(response.headers().len(), 2);
        response
            .headers_mut()
            .append(SERVER, HeaderValue::from_static("again"));
        assert_eq!(response.headers().get_all(SERVER).iter().count(), 2);
        assert_eq!(pairs(&response.headers).len(), 3);
    }

    #[test]
    fn static_text_is_not_copied() {
        static TEXT: &str = "Hello, world!\n";
        let body = Response::text(TEXT).into_body();
        let bytes = body.into_full().expect("a full body");
        assert_eq!(bytes.as_ptr(), TEXT.as_ptr());
    }
}
