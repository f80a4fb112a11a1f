//! Fetches `?url=` and answers with the first 20 bytes of its body, giving up after 10 s
//! (asyncio's `wait_for(..., 10)`). It reads only as many chunks as it needs: the rest of the
//! upstream body is never downloaded.
//!
//! Run with: `make run` then
//! `curl 'http://localhost:8080/fetch?url=http://localhost:8080/hello'`.

use std::time::Duration;

use berth_app::{Host, Request, Response, StatusCode};

/// An error answer: status and text.
type Failure = (StatusCode, String);

async fn app(req: Request, host: Host) -> Result<Response, Failure> {
    let url = req
        .query_param("url")
        .ok_or_else(|| (StatusCode::BAD_REQUEST, "missing ?url= parameter\n".into()))?;
    let head = host
        .timeout(Duration::from_secs(10), first_bytes(&host, &url, 20))
        .await
        .map_err(|_| {
            let message = "upstream timed out after 10 s\n";
            (StatusCode::GATEWAY_TIMEOUT, message.into())
        })??;
    Ok(Response::bytes(head, "application/octet-stream"))
}

/// Reads the first `n` bytes of `url`'s body (fewer if it is shorter), then stops.
async fn first_bytes(host: &Host, url: &str, n: usize) -> Result<Vec<u8>, Failure> {
    let upstream = host.get(url).await.map_err(bad_gateway)?;
    let mut body = upstream.into_body();
    let mut head = Vec::with_capacity(n);
    while head.len() < n {
        let Some(chunk) = body.chunk().await else {
            break;
        };
        let chunk = chunk.map_err(bad_gateway)?;
        let wanted = (n - head.len()).min(chunk.len());
        head.extend_from_slice(&chunk[..wanted]);
    }
    Ok(head)
}

fn bad_gateway(err: impl std::fmt::Display) -> Failure {
    (StatusCode::BAD_GATEWAY, format!("upstream failed: {err}\n"))
}

berth_app::export_app!(name = "fetch", handler = app);

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use berth_app::futures::{StreamExt, stream};
    use berth_app::testing::{MockHost, block_on};
    use berth_app::{Body, BodyError, Bytes, Method, Request, Response, StatusCode, header};

    fn get(mock: MockHost, uri: &str) -> (StatusCode, String, Bytes) {
        let response = mock.call(
            super::app,
            Request::builder(Method::GET, uri)
                .build()
                .expect("valid request"),
        );
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ASCII")
            .to_owned();
        let body = block_on(response.into_body().bytes()).expect("body");
        (status, content_type, body)
    }

    #[test]
    fn answers_with_the_first_20_bytes() {
        let mock = MockHost::new().on_fetch(|req| {
            assert_eq!(req.url(), "http://upstream.test/a?b=c");
            Ok(Response::text("0123456789abcdefghijKLMNOPQRST"))
        });
        let (status, content_type, body) =
            get(mock, "/?url=http%3A%2F%2Fupstream.test%2Fa%3Fb%3Dc");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/octet-stream");
        assert_eq!(body, "0123456789abcdefghij");
    }

    #[test]
    fn stops_reading_once_it_has_20_bytes() {
        let mock = MockHost::new().on_fetch(|_| {
            let chunks =
                ["0123456", "789abcd", "efghijK"].map(|c| Ok(Bytes::from_static(c.as_bytes())));
            // Reading past the first 20 bytes would hit this error and turn the answer into a 502.
            let rest = stream::iter([Err(BodyError::new("read too far"))]);
            Ok(Response::stream(Body::from_stream(
                stream::iter(chunks).chain(rest),
            )))
        });
        let (status, _, body) = get(mock, "/?url=http://upstream.test/");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "0123456789abcdefghij");
    }

    #[test]
    fn a_short_body_is_returned_whole() {
        let mock = MockHost::new().on_fetch(|_| Ok(Response::text("short")));
        let (status, _, body) = get(mock, "/?url=http://upstream.test/");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "short");
    }

    #[test]
    fn missing_url_is_a_bad_request() {
        let (status, _, body) = get(MockHost::new(), "/");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body, "missing ?url= parameter\n");
    }

    #[test]
    fn fetch_error_is_a_bad_gateway() {
        // A mock host without a fetch handler fails every fetch with a connect error.
        let (status, _, body) = get(MockHost::new(), "/?url=http://upstream.test/");
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.starts_with("upstream failed: connect error: "),
            "{body}"
        );
    }

    #[test]
    fn body_error_is_a_bad_gateway() {
        let mock = MockHost::new().on_fetch(|_| {
            let broken = stream::iter([Err(BodyError::new("connection reset"))]);
            Ok(Response::stream(Body::from_stream(broken)))
        });
        let (status, _, body) = get(mock, "/?url=http://upstream.test/");
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(body, "upstream failed: connection reset\n");
    }

    #[test]
    fn a_stalled_upstream_times_out_after_10_s() {
        // The mock's timer fires at once, so an upstream body that never arrives times out.
        let mock = Arc::new(
            MockHost::new()
                .on_fetch(|_| Ok(Response::stream(Body::from_stream(stream::pending())))),
        );
        let req = Request::builder(Method::GET, "/?url=http://upstream.test/")
            .build()
            .expect("valid request");
        let response = mock.call_shared(super::app, req);
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(mock.slept(), Duration::from_secs(10));
        let body = block_on(response.into_body().text()).expect("body");
        assert_eq!(body, "upstream timed out after 10 s\n");
    }
}
