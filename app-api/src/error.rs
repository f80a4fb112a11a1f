//! The SDK's error types that the boundary code below the SDK types also uses.

use std::fmt;

/// A body failed to stream: the peer went away, the producer reported an error, or a limit was
/// reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    message: String,
}

impl BodyError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        BodyError {
            message: message.into(),
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BodyError {}

/// A header that could not be set: its name, or its value, is not valid HTTP.
///
/// The header setters ([`Response::with_header`], [`Response::bytes`],
/// [`OutboundRequest::header`], [`RequestBuilder::header`]) never panic. Like the `http`
/// crate's builders they keep the first such error, and it surfaces where the value is used:
/// a response with one is answered with a `500` and the error in the host's log (and is
/// visible in tests as [`Response::header_error`]), [`Host::fetch`] fails with
/// [`FetchErrorKind::InvalidRequest`], and [`RequestBuilder::build`] returns it.
///
/// [`Response::with_header`]: crate::Response::with_header
/// [`Response::bytes`]: crate::Response::bytes
/// [`Response::header_error`]: crate::Response::header_error
/// [`OutboundRequest::header`]: crate::OutboundRequest::header
/// [`RequestBuilder::header`]: crate::RequestBuilder::header
/// [`RequestBuilder::build`]: crate::RequestBuilder::build
/// [`Host::fetch`]: crate::Host::fetch
/// [`FetchErrorKind::InvalidRequest`]: crate::FetchErrorKind::InvalidRequest
#[derive(Debug)]
pub struct HeaderError {
    /// The name, when it was valid (then the value was not).
    name: Option<http::HeaderName>,
    source: http::Error,
}

impl HeaderError {
    /// An invalid name.
    pub(crate) fn name(source: http::Error) -> Self {
        HeaderError { name: None, source }
    }

    /// An invalid value for header `name`.
    pub(crate) fn value(name: http::HeaderName, source: http::Error) -> Self {
        HeaderError {
            name: Some(name),
            source,
        }
    }

    /// The header's name, when the name was valid and its value was not.
    pub fn header_name(&self) -> Option<&http::HeaderName> {
        self.name.as_ref()
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "invalid value for header {name}"),
            None => f.write_str("invalid header name"),
        }
    }
}

impl std::error::Error for HeaderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// An error and its sources on one line, `: `-separated, e.g. "error performing TLS handshake:
/// invalid peer certificate: UnknownIssuer". Clients such as `tokio-postgres` and hyper keep
/// the reason in a source, so their own `Display` alone often says nothing useful.
///
/// ```
/// let err = std::io::Error::other(std::fmt::Error);
/// assert_eq!(berth_app::error_chain(&err), "an error occurred when formatting an argument");
/// ```
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
