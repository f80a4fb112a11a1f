//! Bodies crossing to an app: hyper's incoming bodies (a request's, a fetched response's)
//! as streams the app pulls through the ABI.

use berth_app::abi::AbiBody;

use crate::host::Relayed;

/// Hands a request body to an app as a stream of data chunks (trailers are not passed on),
/// limited to `limit` bytes. The app pulls each chunk, so hyper reads from the socket only as
/// fast as the app consumes. Past the limit the app's stream fails (nothing more is read from
/// the client) and `exceeded` is called, so that the host can answer 413 whatever the app made
/// of the error. A request without a body (most GETs) crosses as the empty body,
/// with nothing allocated.
pub fn limited_request_body(
    body: hyper::body::Incoming,
    limit: u64,
    exceeded: impl Fn() + Send + 'static,
) -> AbiBody {
    use futures_util::StreamExt as _;
    if http_body::Body::is_end_stream(&body) {
        return AbiBody::empty();
    }
    let len = http_body::Body::size_hint(&body).exact();
    let mut seen: u64 = 0;
    let stream = data_stream(body).scan(false, move |failed, chunk| {
        if *failed {
            return std::future::ready(None);
        }
        let chunk = chunk.and_then(|chunk| {
            seen += chunk.len() as u64;
            if seen > limit {
                exceeded();
                Err(berth_app::BodyError::new(format!(
                    "request body is larger than the limit of {limit} bytes"
                )))
            } else {
                Ok(chunk)
            }
        });
        *failed = chunk.is_err();
        std::future::ready(Some(chunk))
    });
    AbiBody::streaming(Relayed::new(stream), len)
}

/// hyper's body as a stream of its data chunks (trailers are dropped).
pub fn data_stream(
    body: hyper::body::Incoming,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, berth_app::BodyError>> + Send {
    use futures_util::TryStreamExt as _;
    http_body_util::BodyDataStream::new(body).map_err(|e| berth_app::BodyError::new(e.to_string()))
}
