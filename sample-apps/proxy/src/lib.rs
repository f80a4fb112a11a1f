//! Streams an upstream response through: fetches `?url=` with the request's method and body and
//! answers with the upstream's status, `content-type`, `content-length` and body. The body is
//! handed back to the host untouched, never buffered: the host pulls each chunk from the
//! upstream only when the client can take it, so a response of any size passes in constant
//! memory. A request body (`POST`, `PUT`) is forwarded the same way. A failed fetch is a `502`;
//! an upstream that fails after its head has been sent cuts the response short.
//!
//! Run with: `make run` then
//! `curl 'http://localhost:8080/proxy?url=http://localhost:8080/hello'` or
//! `curl -d 'hi' 'http://localhost:8080/proxy?url=http://localhost:8080/echo'`.

use berth_app::header::{CONTENT_LENGTH, CONTENT_TYPE};
use berth_app::{Host, OutboundRequest, Request, Response, StatusCode};

async fn app(mut req: Request, host: Host) -> Response {
    let Some(url) = req.query_param("url") else {
        return Response::text("missing ?url= parameter\n").with_status(StatusCode::BAD_REQUEST);
    };
    let mut outbound = OutboundRequest::new(req.method().clone(), url).body(req.take_body());
    if let Some(content_type) = req.header(CONTENT_TYPE) {
        outbound = outbound.header(CONTENT_TYPE, content_type.clone());
    }
    let upstream = match host.fetch(outbound).await {
        Ok(upstream) => upstream,
        Err(err) => {
            return Response::text(format!("upstream failed: {err}\n"))
                .with_status(StatusCode::BAD_GATEWAY);
        }
    };
    let mut response = Response::new(upstream.status());
    for name in [CONTENT_TYPE, CONTENT_LENGTH] {
        if let Some(value) = upstream.headers().get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    response.with_body(upstream.into_body())
}

berth_app::export_app!(name = "proxy", handler = app);

#[cfg(test)]
mod tests {
    use berth_app::futures::{StreamExt, stream};
    use berth_app::testing::{MockHost, block_on};
    use berth_app::{Body, Bytes, Method, Request, Response, StatusCode, header};

    fn text(response: Response) -> String {
        block_on(response.into_body().text()).expect("body")
    }

    #[test]
    fn passes_status_headers_and_body_through() {
        let mock = MockHost::new().on_fetch(|req| {
            assert_eq!(req.method(), Method::GET);
            assert_eq!(req.url(), "http://upstream.test/a?b=c");
            Ok(Response::text("gone\n")
                .with_status(StatusCode::GONE)
                .with_header(header::CONTENT_LENGTH, 5)
                .with_header(header::SERVER, "upstream"))
        });
        let req = Request::builder(Method::GET, "/?url=http%3A%2F%2Fupstream.test%2Fa%3Fb%3Dc");
        let response = mock.call(super::app, req.build().expect("valid request"));
        assert_eq!(response.status(), StatusCode::GONE);
        let headers = response.headers();
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(headers[header::CONTENT_LENGTH], "5");
        assert!(headers.get(header::SERVER).is_none(), "{headers:?}");
        assert_eq!(text(response), "gone\n");
    }

    #[test]
    fn answers_before_the_upstream_body_has_arrived() {
        // The upstream sends one chunk and then nothing more: a proxy that buffered the body
        // would never answer.
        let mock = MockHost::new().on_fetch(|_| {
            let first = stream::iter([Ok(Bytes::from_static(b"first chunk"))]);
            Ok(Response::stream(Body::from_stream(
                first.chain(stream::pending()),
            )))
        });
        let req = Request::builder(Method::GET, "/?url=http://upstream.test/")
            .build()
            .expect("valid request");
        let response = mock.call(super::app, req);
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let chunk = block_on(body.chunk()).expect("a chunk").expect("no error");
        assert_eq!(chunk, "first chunk");
    }

    #[test]
    fn forwards_the_method_content_type_and_body() {
        // An upstream that answers with the body it was sent, as it streams in.
        let mock = MockHost::new().on_fetch(|mut req| {
            assert_eq!(req.method(), Method::POST);
            assert_eq!(req.headers()[header::CONTENT_TYPE], "application/json");
            assert!(
                req.headers().get("x-private").is_none(),
                "{:?}",
                req.headers()
            );
            Ok(Response::stream(req.take_body()).with_status(StatusCode::CREATED))
        });
        let req = Request::builder(Method::POST, "/?url=http://upstream.test/items")
            .header("content-type", "application/json")
            .header("x-private", "not forwarded")
            .body(r#"{"id": 7}"#)
            .build()
            .expect("valid request");
        let response = mock.call(super::app, req);
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(text(response), r#"{"id": 7}"#);
    }

    #[test]
    fn missing_url_is_a_bad_request() {
        let req = Request::builder(Method::GET, "/")
            .build()
            .expect("valid request");
        let response = MockHost::new().call(super::app, req);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(text(response), "missing ?url= parameter\n");
    }

    #[test]
    fn fetch_error_is_a_bad_gateway() {
        // A mock host without a fetch handler fails every fetch with a connect error.
        let req = Request::builder(Method::GET, "/?url=http://upstream.test/")
            .build()
            .expect("valid request");
        let response = MockHost::new().call(super::app, req);
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = text(response);
        assert!(
            body.starts_with("upstream failed: connect error: "),
            "{body}"
        );
    }
}
