//! Echoes the request back as JSON: method, mount prefix, path, query, headers (in order,
//! repeated names kept), HTTP version, client address and body. Handy for checking what an app
//! actually receives behind Berth's routing.
//!
//! Run with: `make run` then
//! `curl -d 'hi' -H 'x-a: 1' -H 'x-a: 2' 'http://localhost:8080/echo/some/path?a=1&b=2'`.

use berth_app::{Host, Request, Response, StatusCode};
use serde_json::json;

async fn app(mut req: Request, _host: Host) -> Response {
    let body = match req.take_body().bytes().await {
        Ok(body) => body,
        Err(err) => {
            return Response::text(format!("cannot read the body: {err}\n"))
                .with_status(StatusCode::BAD_REQUEST);
        }
    };
    let headers: Vec<_> = req
        .headers()
        .iter()
        .map(|(name, value)| [name.as_str().to_owned(), lossy(value.as_bytes())])
        .collect();
    Response::json(&json!({
        "method": req.method().as_str(),
        "prefix": req.mount_prefix(),
        "path": req.path(),
        "query": req.query(),
        "query_params": req.query_pairs(),
        "headers": headers,
        "version": format!("{:?}", req.version()),
        "peer": req.peer_addr().map(|addr| addr.to_string()),
        "body": lossy(&body),
        "body_len": body.len(),
    }))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

berth_app::export_app!(name = "echo", handler = app);

#[cfg(test)]
mod tests {
    use berth_app::testing::{MockHost, block_on};
    use berth_app::{Method, Request, StatusCode, header};
    use serde_json::{Value, json};

    fn echo(req: Request) -> Value {
        let response = MockHost::new().call(super::app, req);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = block_on(response.into_body().bytes()).expect("body");
        serde_json::from_slice(&body).expect("JSON")
    }

    #[test]
    fn echoes_every_part_of_the_request() {
        let req = Request::builder(Method::POST, "/some/path?a=1&b=x%20y&a=3")
            .mount_prefix("/echo")
            .header("x-a", "1")
            .header("x-b", &b"\xff"[..])
            .header("x-a", "2")
            .peer_addr("192.0.2.7:5000".parse().expect("address"))
            .body("héllo")
            .build()
            .expect("valid request");
        let got = echo(req);
        assert_eq!(
            got,
            json!({
                "method": "POST",
                "prefix": "/echo",
                "path": "/some/path",
                "query": "a=1&b=x%20y&a=3",
                "query_params": [["a", "1"], ["b", "x y"], ["a", "3"]],
                "headers": [["x-a", "1"], ["x-a", "2"], ["x-b", "\u{fffd}"]],
                "version": "HTTP/1.1",
                "peer": "192.0.2.7:5000",
                "body": "héllo",
                "body_len": 6,
            })
        );
    }

    #[test]
    fn empty_request_has_null_peer_and_empty_body() {
        let got = echo(
            Request::builder(Method::GET, "/")
                .build()
                .expect("valid request"),
        );
        assert_eq!(got["peer"], Value::Null);
        assert_eq!(got["body"], "");
        assert_eq!(got["body_len"], 0);
        assert_eq!(got["query_params"], json!([]));
        assert_eq!(got["headers"], json!([]));
    }
}
