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
    pub fn new(status: StatusCode) -> Self {
        Response {
            status,
            headers: HeaderMap::new(),
            body: Body::empty(),
        }
    }

    /// `200 OK` with a `text/plain; charset=utf-8` body.
    pub fn text(text: impl Into<String>) -> Self {
        Response::new(StatusCode::OK)
            .with_header(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )
            .with_body(text.into())
    }

    /// `200 OK` with raw bytes and the given content type.
    pub fn bytes(bytes: impl Into<bytes::Bytes>, content_type: &'static str) -> Self {
        Response::new(StatusCode::OK)
            .with_header(CONTENT_TYPE, HeaderValue::from_static(content_type))
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
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Sets header `name` to `value`, replacing earlier values.
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
        AbiResponse::new(self.status, self.headers, self.body.into_abi())
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
