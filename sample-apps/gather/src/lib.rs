//! Runs a timer and several outbound requests at once: sleeps for `?sleep_ms=` (default 1000)
//! while fetching every `?url=`, then reports each result and the wall time, which is that of
//! the slowest part, not the sum (asyncio's `gather`).
//!
//! Run with: `make run` then
//! `curl 'http://localhost:8080/gather?url=http://localhost:8080/hello&url=http://localhost:8080/echo'`.

use std::time::{Duration, Instant};

use berth_app::futures::future::{join, join_all};
use berth_app::{Host, IntoResponse, Request, Response, StatusCode};
use serde_json::{Value, json};

async fn app(req: Request, host: Host) -> Response {
    let sleep_ms = match req.query_param("sleep_ms").map(|ms| ms.parse::<u64>()) {
        None => 1000,
        Some(Ok(ms)) => ms,
        Some(Err(_)) => {
            let message = "?sleep_ms= must be a whole number of milliseconds\n";
            return (StatusCode::BAD_REQUEST, message).into_response();
        }
    };
    let started = Instant::now();
    let fetches = join_all(
        req.query_params("url")
            .into_iter()
            .map(|url| fetch(&host, url)),
    );
    let ((), results) = join(host.sleep(Duration::from_millis(sleep_ms)), fetches).await;
    Response::json(&json!({
        "slept_ms": sleep_ms,
        "results": results,
        "elapsed_ms": started.elapsed().as_millis(),
    }))
}

/// Fetches `url` and counts its body's bytes as they stream by.
async fn fetch(host: &Host, url: String) -> Value {
    let upstream = match host.get(&url).await {
        Ok(upstream) => upstream,
        Err(err) => return json!({ "url": url, "error": err.to_string() }),
    };
    let status = upstream.status().as_u16();
    let mut body = upstream.into_body();
    let mut bytes = 0;
    while let Some(chunk) = body.chunk().await {
        match chunk {
            Ok(chunk) => bytes += chunk.len(),
            Err(err) => return json!({ "url": url, "error": err.to_string() }),
        }
    }
    json!({ "url": url, "status": status, "bytes": bytes })
}

berth_app::export_app!(name = "gather", handler = app);

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use berth_app::testing::{MockHost, block_on};
    use berth_app::{FetchError, FetchErrorKind, Method, Request, Response, StatusCode};
    use serde_json::{Value, json};

    fn gather(mock: &Arc<MockHost>, uri: &str) -> (StatusCode, Value) {
        let response = mock.call_shared(
            super::app,
            Request::builder(Method::GET, uri)
                .build()
                .expect("valid request"),
        );
        let status = response.status();
        let body = block_on(response.into_body().bytes()).expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    #[test]
    fn reports_every_url_in_order() {
        let mock = Arc::new(MockHost::new().on_fetch(|req| match req.url() {
            "http://a.test/" => Ok(Response::text("12345")),
            "http://b.test/" => Ok(Response::text("").with_status(StatusCode::NOT_FOUND)),
            _ => Err(FetchError::new(FetchErrorKind::Connect, "refused")),
        }));
        let uri = "/?url=http://a.test/&url=http://c.test/&url=http://b.test/";
        let (status, got) = gather(&mock, uri);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got["slept_ms"], 1000);
        assert!(got["elapsed_ms"].is_u64());
        assert_eq!(
            got["results"],
            json!([
                { "url": "http://a.test/", "status": 200, "bytes": 5 },
                { "url": "http://c.test/", "error": "connect error: refused" },
                { "url": "http://b.test/", "status": 404, "bytes": 0 },
            ])
        );
        assert_eq!(mock.slept(), Duration::from_secs(1));
    }

    #[test]
    fn sleep_ms_changes_the_sleep() {
        let mock = Arc::new(MockHost::new());
        let (status, got) = gather(&mock, "/?sleep_ms=250");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got["slept_ms"], 250);
        assert_eq!(got["results"], json!([]));
        assert_eq!(mock.slept(), Duration::from_millis(250));
    }

    #[test]
    fn bad_sleep_ms_is_a_bad_request() {
        let (status, _) = gather(&Arc::new(MockHost::new()), "/?sleep_ms=soon");
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
