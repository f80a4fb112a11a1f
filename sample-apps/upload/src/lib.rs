//! Counts and hashes an uploaded body as it streams in: reads the request body chunk by chunk,
//! feeding each chunk to a SHA-256 hasher and dropping it, so an upload of any size is handled
//! in constant memory. Answers `{"bytes": n, "sha256": "hex"}`; a body that fails mid-stream
//! (the client went away, a limit was hit) is a `400` with the reason.
//!
//! Run with: `make run` then `head -c 5000000 /dev/urandom > blob`,
//! `curl -T blob http://localhost:8080/upload` and compare with `sha256sum blob` (or send a
//! chunked stream: `head -c 5000000 /dev/urandom | curl -T - http://localhost:8080/upload`).
//! Berth's request body limit applies (`--max-body-size`, default 10 MiB); raise it to upload
//! more.

use berth_app::{Host, Request, Response, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};

async fn app(mut req: Request, _host: Host) -> Response {
    let body = req.body_mut();
    let mut hasher = Sha256::new();
    let mut bytes: u64 = 0;
    while let Some(chunk) = body.chunk().await {
        match chunk {
            Ok(chunk) => {
                hasher.update(&chunk);
                bytes += chunk.len() as u64;
            }
            Err(err) => {
                return Response::text(format!("upload failed after {bytes} bytes: {err}\n"))
                    .with_status(StatusCode::BAD_REQUEST);
            }
        }
    }
    Response::json(&json!({
        "bytes": bytes,
        "sha256": format!("{:x}", hasher.finalize()),
    }))
}

berth_app::export_app!(name = "upload", handler = app);

#[cfg(test)]
mod tests {
    use berth_app::futures::{StreamExt, stream};
    use berth_app::testing::{MockHost, block_on};
    use berth_app::{Body, BodyError, Bytes, Method, Request, StatusCode, header};
    use serde_json::{Value, json};

    fn upload(body: Body) -> (StatusCode, String, Bytes) {
        let req = Request::builder(Method::PUT, "/")
            .body(body)
            .build()
            .expect("valid request");
        let response = MockHost::new().call(super::app, req);
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ASCII")
            .to_owned();
        let body = block_on(response.into_body().bytes()).expect("body");
        (status, content_type, body)
    }

    fn json(body: &[u8]) -> Value {
        serde_json::from_slice(body).expect("JSON")
    }

    #[test]
    fn counts_and_hashes_a_whole_body() {
        let (status, content_type, body) = upload(Body::from("abc"));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type, "application/json");
        assert_eq!(
            json(&body),
            json!({
                "bytes": 3,
                // FIPS 180-2, appendix B.1.
                "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            })
        );
    }

    #[test]
    fn an_empty_body_is_zero_bytes() {
        let (status, _, body) = upload(Body::empty());
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json(&body),
            json!({
                "bytes": 0,
                "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            })
        );
    }

    #[test]
    fn chunk_boundaries_do_not_change_the_hash() {
        let chunks = ["a", "", "bc"].map(|c| Ok(Bytes::from_static(c.as_bytes())));
        let (status, _, body) = upload(Body::from_stream(stream::iter(chunks)));
        assert_eq!(status, StatusCode::OK);
        let (_, _, whole) = upload(Body::from("abc"));
        assert_eq!(json(&body), json(&whole));
    }

    #[test]
    fn a_body_error_is_a_bad_request_with_the_reason() {
        let chunks = stream::iter([Ok(Bytes::from_static(b"12345"))])
            .chain(stream::iter([Err(BodyError::new("connection reset"))]));
        let (status, content_type, body) = upload(Body::from_stream(chunks));
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(content_type, "text/plain; charset=utf-8");
        assert_eq!(body, "upload failed after 5 bytes: connection reset\n");
    }
}
