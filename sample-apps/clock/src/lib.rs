//! Server-sent events from a timer: answers at once with a `text/event-stream` whose body emits
//! `data: tick N` every `?interval_ms=` (default 1000) on the host's timer — the async-WSGI
//! talk's `call_later` — until `?count=` events have been sent (default: no limit) or the client
//! goes away. The body is a stream the host polls: when the client disconnects, the host drops
//! it, which drops the pending timer and the stream's state, whose `Drop` logs
//! `clock stream closed after N events`. Nothing keeps ticking for a client that has left.
//!
//! Run with: `make run` then `curl -N 'http://localhost:8080/clock?interval_ms=500&count=10'`.

use std::time::Duration;

use berth_app::futures::stream;
use berth_app::header::{CACHE_CONTROL, CONTENT_TYPE};
use berth_app::{Body, BodyError, Bytes, Host, Request, Response, StatusCode};

/// An error answer: status and text.
type Failure = (StatusCode, String);

async fn app(req: Request, host: Host) -> Result<Response, Failure> {
    let interval_ms = number_param(&req, "interval_ms")?.unwrap_or(1000);
    if interval_ms == 0 {
        let message = "?interval_ms= must be at least 1\n";
        return Err((StatusCode::BAD_REQUEST, message.into()));
    }
    let limit = number_param(&req, "count")?;
    let ticker = Ticker {
        host,
        interval: Duration::from_millis(interval_ms),
        limit,
        sent: 0,
    };
    let events = stream::unfold(ticker, |mut ticker| async move {
        if ticker.limit.is_some_and(|limit| ticker.sent >= limit) {
            return None;
        }
        ticker.host.sleep(ticker.interval).await;
        ticker.sent += 1;
        let event = Bytes::from(format!("data: tick {}\n\n", ticker.sent));
        Some((Ok::<_, BodyError>(event), ticker))
    });
    Ok(Response::stream(Body::from_stream(events))
        .with_header(CONTENT_TYPE, "text/event-stream")
        .with_header(CACHE_CONTROL, "no-cache"))
}

/// The state of one event stream. It lives inside the body stream, so it is dropped when the
/// stream ends or when the host drops the body because the client went away.
struct Ticker {
    /// A clone of the request's host: the stream outlives the handler's call.
    host: Host,
    interval: Duration,
    /// Stop after this many events (`None`: until the client goes away).
    limit: Option<u64>,
    /// Events sent so far.
    sent: u64,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        berth_app::info!(self.host, "clock stream closed after {} events", self.sent);
    }
}

/// The whole number in query parameter `name`, if present.
fn number_param(req: &Request, name: &str) -> Result<Option<u64>, Failure> {
    req.query_param(name)
        .map(|value| value.parse())
        .transpose()
        .map_err(|_| {
            let message = format!("?{name}= must be a whole number\n");
            (StatusCode::BAD_REQUEST, message)
        })
}

berth_app::export_app!(name = "clock", handler = app);

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use berth_app::testing::{MockHost, block_on};
    use berth_app::{Level, Method, Request, Response, StatusCode, header};

    fn call(mock: &Arc<MockHost>, uri: &str) -> Response {
        let req = Request::builder(Method::GET, uri)
            .build()
            .expect("valid request");
        mock.call_shared(super::app, req)
    }

    fn logs(mock: &MockHost) -> Vec<String> {
        let logs = mock.logs();
        assert!(logs.iter().all(|(level, _)| *level == Level::Info));
        logs.into_iter().map(|(_, message)| message).collect()
    }

    #[test]
    fn sends_count_events_one_interval_apart_then_ends() {
        let mock = Arc::new(MockHost::new());
        let response = call(&mock, "/?count=3");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
        assert_eq!(
            mock.slept(),
            Duration::ZERO,
            "the head is sent before any tick"
        );
        let body = block_on(response.into_body().text()).expect("body");
        assert_eq!(body, "data: tick 1\n\ndata: tick 2\n\ndata: tick 3\n\n");
        assert_eq!(mock.slept(), Duration::from_secs(3));
        assert_eq!(logs(&mock), ["clock stream closed after 3 events"]);
    }

    #[test]
    fn interval_ms_sets_the_interval() {
        let mock = Arc::new(MockHost::new());
        let response = call(&mock, "/?interval_ms=250&count=2");
        let body = block_on(response.into_body().text()).expect("body");
        assert_eq!(body, "data: tick 1\n\ndata: tick 2\n\n");
        assert_eq!(mock.slept(), Duration::from_millis(500));
    }

    #[test]
    fn dropping_the_body_stops_the_stream_and_logs() {
        let mock = Arc::new(MockHost::new());
        let mut body = call(&mock, "/").into_body();
        for n in 1..=2 {
            let event = block_on(body.chunk()).expect("an event").expect("no error");
            assert_eq!(event, format!("data: tick {n}\n\n"));
        }
        assert!(logs(&mock).is_empty(), "{:?}", mock.logs());
        // What the host does when the client goes away.
        drop(body);
        assert_eq!(logs(&mock), ["clock stream closed after 2 events"]);
        assert_eq!(mock.slept(), Duration::from_secs(2));
    }

    #[test]
    fn bad_parameters_are_bad_requests() {
        for (uri, expected) in [
            (
                "/?interval_ms=soon",
                "?interval_ms= must be a whole number\n",
            ),
            ("/?interval_ms=0", "?interval_ms= must be at least 1\n"),
            ("/?count=-1", "?count= must be a whole number\n"),
        ] {
            let mock = Arc::new(MockHost::new());
            let response = call(&mock, uri);
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{uri}");
            let body = block_on(response.into_body().text()).expect("body");
            assert_eq!(body, expected, "{uri}");
            assert!(mock.logs().is_empty(), "{uri}: {:?}", mock.logs());
        }
    }
}
