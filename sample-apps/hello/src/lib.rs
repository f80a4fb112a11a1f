//! The smallest Berth app: answers every request with `Hello, world!`.
//!
//! Run with: `make run` then `curl http://localhost:8080/hello`.

use berth_app::{Host, Request, Response};

async fn app(_req: Request, _host: Host) -> Response {
    Response::text("Hello, world!\n")
}

berth_app::export_app!(name = "hello", handler = app);

#[cfg(test)]
mod tests {
    use berth_app::testing::{MockHost, block_on};
    use berth_app::{Method, Request, StatusCode, header};

    #[test]
    fn says_hello_as_plain_text() {
        let response = MockHost::new().call(
            super::app,
            Request::builder(Method::GET, "/")
                .build()
                .expect("valid request"),
        );
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let body = block_on(response.into_body().text()).expect("body");
        assert_eq!(body, "Hello, world!\n");
    }
}
