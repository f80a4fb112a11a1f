//! Counters in Redis, with the real `redis` crate on host sockets, and the talk's cache pattern.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /counter/{key}` | increments the counter, `200` `{"key", "value"}` |
//! | `GET /counter/{key}` | `200` `{"key", "value"}` (0 for a counter never incremented) |
//! | `GET /counter/cached?url=U[&ttl=S]` | the body of `U`, fetched through the host and kept in Redis for `S` seconds (default: the `cache_ttl` setting, else 10); `x-cache: hit` or `miss` |
//!
//! Settings (`[apps.counter.settings]`): `redis_url` (required), `cache_ttl`. The allowlist
//! must grant Redis (`redis://127.0.0.1:6379`) and, for the cache, the URLs it fetches. When
//! Redis is down, requests get `503` with the reason, and succeed again once it is back.

use std::time::Duration;

use berth_app::redis::{self, AsyncCommands as _};
use berth_app::{AppConfig, Bytes, Host, Method, Request, Response, StatusCode};
use serde_json::json;

/// What every request of this version shares.
struct Counter {
    redis: redis::Client,
    cache_ttl: u64,
}

/// The longest a Redis command may take before the request is answered `503`.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

async fn init(config: AppConfig, host: Host) -> Result<Counter, String> {
    let url = config
        .get("redis_url")
        .ok_or("the setting redis_url is missing: add it under [apps.counter.settings]")?;
    let cache_ttl = match config.get("cache_ttl") {
        None => 10,
        Some(text) => text
            .parse()
            .map_err(|_| format!("the setting cache_ttl must be whole seconds, not {text:?}"))?,
    };
    let redis = redis::Client::open(&host, url)
        .await
        .map_err(|err| format!("redis_url: {err}"))?;
    Ok(Counter { redis, cache_ttl })
}

async fn app(req: Request, host: Host) -> Response {
    let Some(counter) = host.state::<Counter>() else {
        return failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the Redis client is missing",
        );
    };
    let key = req.path().trim_start_matches('/');
    if key.is_empty() || key.contains('/') {
        return failure(StatusCode::NOT_FOUND, "no such route: try /counter/{key}");
    }
    let answer = match (req.method(), key) {
        (&Method::GET, "cached") => {
            let (url, ttl) = (req.query_param("url"), req.query_param("ttl"));
            cached(counter, &host, url, ttl).await
        }
        (&Method::POST, key) => count(counter, &host, key, 1).await,
        (&Method::GET, key) => count(counter, &host, key, 0).await,
        _ => return failure(StatusCode::METHOD_NOT_ALLOWED, "GET or POST"),
    };
    answer.unwrap_or_else(|(status, reason)| failure(status, &reason))
}

type Answer = Result<Response, (StatusCode, String)>;

/// Adds `by` to the counter (0 reads it) and answers its value.
async fn count(counter: &Counter, host: &Host, key: &str, by: i64) -> Answer {
    let mut conn = counter.redis.get(host).await.map_err(unavailable)?;
    let name = format!("counter:{key}");
    let command = async {
        if by == 0 {
            conn.get::<_, Option<i64>>(&name)
                .await
                .map(Option::unwrap_or_default)
        } else {
            conn.incr::<_, _, i64>(&name, by).await
        }
    };
    let value = host
        .timeout(COMMAND_TIMEOUT, command)
        .await
        .map_err(|elapsed| unavailable(format!("Redis did not answer: {elapsed}")))?
        .map_err(unavailable)?;
    Ok(Response::json(&json!({ "key": key, "value": value })))
}

/// The talk's cache: the body of `?url=` from Redis when it is there, else fetched through the
/// host and kept for `ttl` seconds.
async fn cached(
    counter: &Counter,
    host: &Host,
    url: Option<String>,
    ttl: Option<String>,
) -> Answer {
    let Some(url) = url else {
        return Err((StatusCode::BAD_REQUEST, "give ?url=".to_owned()));
    };
    let ttl = match ttl {
        None => counter.cache_ttl,
        Some(text) => text.parse().map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                format!("ttl must be whole seconds, not {text:?}"),
            )
        })?,
    };
    let mut conn = counter.redis.get(host).await.map_err(unavailable)?;
    let name = format!("cache:{url}");
    let hit = host
        .timeout(COMMAND_TIMEOUT, conn.get::<_, Option<Vec<u8>>>(&name))
        .await
        .map_err(|elapsed| unavailable(format!("Redis did not answer: {elapsed}")))?
        .map_err(unavailable)?;
    if let Some(body) = hit {
        return Ok(Response::bytes(body, "application/octet-stream").with_header("x-cache", "hit"));
    }
    let upstream = host
        .get(url.as_str())
        .await
        .map_err(|err| (StatusCode::BAD_GATEWAY, format!("fetching {url}: {err}")))?;
    let status = upstream.status();
    let body: Bytes = upstream
        .bytes()
        .await
        .map_err(|err| (StatusCode::BAD_GATEWAY, format!("reading {url}: {err}")))?;
    if status.is_success() && ttl > 0 {
        host.timeout(
            COMMAND_TIMEOUT,
            conn.set_ex::<_, _, ()>(&name, body.as_ref(), ttl),
        )
        .await
        .map_err(|elapsed| unavailable(format!("Redis did not answer: {elapsed}")))?
        .map_err(unavailable)?;
    }
    Ok(Response::bytes(body, "application/octet-stream")
        .with_status(status)
        .with_header("x-cache", "miss"))
}

fn unavailable(reason: impl std::fmt::Display) -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("Redis is unavailable: {reason}"),
    )
}

fn failure(status: StatusCode, reason: &str) -> Response {
    Response::json(&json!({ "error": reason })).with_status(status)
}

berth_app::export_app!(name = "counter", handler = app, init = init);

#[cfg(test)]
mod tests {
    use berth_app::testing::{MockHost, block_on};
    use berth_app::{Method, Request, StatusCode};

    #[test]
    fn without_its_client_the_app_says_so() {
        let mock = MockHost::new();
        let req = Request::builder(Method::GET, "/hits")
            .build()
            .expect("valid request");
        let response = mock.call(super::app, req);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = block_on(response.into_body().text()).expect("body");
        assert!(body.contains("client is missing"), "{body}");
    }
}
