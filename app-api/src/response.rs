//! The response an app returns.

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, StatusCode};

use crate::abi::AbiResponse;
use crate::body::Body;
use crate::error::HeaderError;
use crate::headers::Add;

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
    /// The first header that could not be set (boxed: rare, and a response moves through the
    /// handler's future).
    header_error: Option<Box<HeaderError>>,
}

impl Response {
    /// A response with `status`, no headers and no body.
    #[inline]
    pub fn new(status: StatusCode) -> Self {
        Response {
            status,
            headers: HeaderMap::new(),
            body: Body::empty(),
            header_error: None,
        }
    }

    /// `200 OK` with a `text/plain; charset=utf-8` body: a `String`, or a `&'static str`,
    /// which is sent without being copied.
    pub fn text(text: impl Into<Body>) -> Self {
        const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
        Response::new(StatusCode::OK)
            .with_header(CONTENT_TYPE, TEXT)
            .with_body(text)
    }

    /// `200 OK` with raw bytes and the given content type, which may be chosen at run time. A
    /// content type that is not a valid header value is a [`HeaderError`], as with
    /// [`with_header`](Response::with_header).
    ///
    /// ```
    /// use berth_app::Response;
    /// let kind = String::from("image/png");
    /// let response = Response::bytes(vec![0x89, b'P', b'N', b'G'], kind);
    /// assert_eq!(response.headers()["content-type"], "image/png");
    /// ```
    pub fn bytes<V>(bytes: impl Into<bytes::Bytes>, content_type: V) -> Self
    where
        V: TryInto<HeaderValue>,
        V::Error: Into<http::Error>,
    {
        Response::new(StatusCode::OK)
            .with_header(CONTENT_TYPE, content_type)
            .with_body(bytes.into())
    }

    /// `200 OK` with `value` serialised as JSON (`500` if it cannot be serialised).
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Self {
        const JSON: HeaderValue = HeaderValue::from_static("application/json");
        match serde_json::to_vec(value) {
            Ok(json) => Response::bytes(json, JSON),
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

    /// Sets header `name` to `value`, replacing earlier values. Both may be anything the
    /// `http` crate's builders accept: a [`HeaderName`](http::HeaderName) or a
    /// [`HeaderValue`], or text to parse (`&str`, `String`, `&[u8]`...).
    ///
    /// An invalid name or value does not panic: the response keeps the first such
    /// [`HeaderError`] ([`header_error`](Response::header_error)), and Berth answers it with
    /// a `500` and logs the error, as for any invalid response.
    ///
    /// ```
    /// use berth_app::{Response, header};
    /// let ok = Response::text("hi").with_header(header::CACHE_CONTROL, "no-cache");
    /// assert_eq!(ok.headers()["cache-control"], "no-cache");
    /// let bad = Response::text("hi").with_header("x-note", "line\nbreak");
    /// let err = bad.header_error().expect("kept");
    /// assert_eq!(err.to_string(), "invalid value for header x-note");
    /// ```
    #[inline]
    pub fn with_header<K, V>(mut self, name: K, value: V) -> Self
    where
        K: TryInto<http::HeaderName>,
        K::Error: Into<http::Error>,
        V: TryInto<HeaderValue>,
        V::Error: Into<http::Error>,
    {
        let (headers, error) = (&mut self.headers, &mut self.header_error);
        crate::headers::set(headers, error, Add::Insert, name, value);
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

    /// The first header that could not be set, if any: such a response is answered with a
    /// `500`.
    pub fn header_error(&self) -> Option<&HeaderError> {
        self.header_error.as_deref()
    }

    /// The body, to read (in tests).
    pub fn body_mut(&mut self) -> &mut Body {
        &mut self.body
    }

    /// Consumes the response, returning its body.
    pub fn into_body(self) -> Body {
        self.body
    }

    /// Status, headers and body, or the first header that could not be set.
    #[cfg(feature = "testing")]
    pub(crate) fn into_parts(self) -> Result<(StatusCode, HeaderMap, Body), HeaderError> {
        match self.header_error {
            Some(err) => Err(*err),
            None => Ok((self.status, self.headers, self.body)),
        }
    }

    /// The response in ABI form, or the first header that could not be set.
    pub(crate) fn into_abi(self) -> Result<AbiResponse, HeaderError> {
        if let Some(err) = self.header_error {
            return Err(*err);
        }
        Ok(match self.body.into_full() {
            Ok(data) => AbiResponse::with_full_body(self.status, self.headers, data),
            Err(body) => AbiResponse::new(self.status, self.headers, body.into_abi()),
        })
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
    fn bytes_take_a_content_type_chosen_at_run_time() {
        let chosen = format!("image/{}", "png");
        let response = Response::bytes(vec![1, 2], chosen.as_str());
        assert_eq!(response.headers()[CONTENT_TYPE], "image/png");
        let response = Response::bytes(vec![1, 2], chosen);
        assert_eq!(response.headers()[CONTENT_TYPE], "image/png");
        assert!(response.header_error().is_none());
        let response = Response::bytes(vec![1, 2], HeaderValue::from_static("text/csv"));
        assert_eq!(response.headers()[CONTENT_TYPE], "text/csv");

        let bad = Response::bytes(vec![1, 2], "text/plain\r\n");
        let err = bad.header_error().expect("kept, not a panic");
        assert_eq!(err.to_string(), "invalid value for header content-type");
        assert_eq!(err.header_name(), Some(&CONTENT_TYPE));
        assert!(bad.headers().get(CONTENT_TYPE).is_none());
    }

    #[test]
    fn a_bad_header_name_or_value_is_kept_as_an_error_not_a_panic() {
        let bad_name = Response::text("hi").with_header("bad name", "x");
        let err = bad_name.header_error().expect("kept");
        assert_eq!(err.to_string(), "invalid header name");
        assert_eq!(err.header_name(), None);
        assert!(std::error::Error::source(err).is_some());

        let bad_value = Response::text("hi").with_header("x-note", "line\nbreak");
        let err = bad_value.header_error().expect("kept");
        assert_eq!(err.to_string(), "invalid value for header x-note");

        // The first error is kept; valid headers set around it still apply.
        let both = Response::text("hi")
            .with_header("x-note", "line\nbreak")
            .with_header(SERVER, "berth")
            .with_header("bad name", "x");
        let err = both.header_error().expect("kept");
        assert_eq!(err.to_string(), "invalid value for header x-note");
        assert_eq!(both.headers()[SERVER], "berth");
        assert!(
            both.into_abi().is_err(),
            "the host is not handed such a response"
        );

        // Names and values of other types, as `http`'s builders take them.
        let typed = Response::text("hi")
            .with_header(ETAG, HeaderValue::from_static("\"1\""))
            .with_header(String::from("x-count"), 3_u64)
            .with_header(&b"x-raw"[..], &b"\xff"[..]);
        assert!(typed.header_error().is_none());
        assert_eq!(typed.headers()["x-count"], "3");
        assert_eq!(typed.headers()["x-raw"].as_bytes(), b"\xff");
    }

    #[test]
    fn static_text_is_not_copied() {
        static TEXT: &str = "Hello, world!\n";
        let body = Response::text(TEXT).into_body();
        let bytes = body.into_full().expect("a full body");
        assert_eq!(bytes.as_ptr(), TEXT.as_ptr());
    }
}
