//! A request's way to its app and back: route it, lend it to the app, wait for the answer
//! until the deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::apps::{AppVersion, InFlight};
use crate::host::body::limited_request_body;
use crate::host::calls;
use crate::host::websocket::Handshake;
use crate::http::access_log::RequestLog;
use crate::http::connection::Connection;
use crate::http::idle::Activity;
use crate::http::response::{ResponseBody, listing, respond, text, too_large};
use crate::http::upgrade::{self, Upgrade};
use crate::plugin::{RequestScope, RequestView};

/// Routes `request` and starts its app at once, without waiting: the returned future only
/// waits for the answer. Everything about the request's head is done and dropped here, so the
/// future hyper keeps for as long as the request waits holds none of it.
pub(super) fn dispatch(
    connection: &Arc<Connection>,
    request: Request<Incoming>,
    activity: &Arc<Activity>,
) -> impl Future<Output = Response<ResponseBody>> + Send + use<> {
    use futures_util::future::Either as Answer;
    // Boxed: the host's own answers (404, 413, the listing) are rare, and the future hyper
    // keeps per request (for HTTP/2, spawns per stream) is sized for its largest variant.
    let now = |response: Response<ResponseBody>| {
        let boxed = std::future::ready(Box::new(response));
        Answer::Left(futures_util::FutureExt::map(boxed, |response| *response))
    };
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path();
    if path == "/" {
        return now(listing(&connection.registry.router()));
    }
    // The request holds its version until its response body is done, whatever swaps happen.
    let (in_flight, mount_len) = {
        let router = connection.registry.current_router();
        let Some(route) = router.route(path) else {
            let message = format!("no app is mounted at {path}\n");
            return now(text(StatusCode::NOT_FOUND, message));
        };
        (route.app.begin(), route.mount_len)
    };
    let app = in_flight.version();
    let mut log = connection.access_log.then(|| {
        Box::new(RequestLog {
            app: Arc::clone(&app.name),
            method: parts.method.clone(),
            path: path.to_owned(),
            started: Instant::now(),
            status: None,
        })
    });
    // hyper has read Content-Length already: no header lookup.
    let declared = http_body::Body::size_hint(&body).exact();
    if declared.is_some_and(|len| len > app.max_body_size) {
        // Refused before the app runs and before a byte of the body is read.
        let response = too_large(app.max_body_size);
        if let Some(log) = &mut log {
            log.status = Some(response.status());
        }
        return now(response);
    }
    // A WebSocket handshake: checked before the app sees it, and kept for it to accept.
    let upgrade = if parts.headers.contains_key(http::header::SEC_WEBSOCKET_KEY) {
        match upgrade::handshake(&mut parts, app, connection, activity) {
            Ok(upgrade) => upgrade,
            Err(forbidden) => {
                let response = forbidden.response();
                if let Some(log) = &mut log {
                    log.status = Some(response.status());
                }
                return now(response);
            }
        }
    } else {
        None
    };
    let started = start(connection, parts, body, app, mount_len, log, upgrade);
    Answer::Right(answer(started, in_flight))
}

/// A request handed to its app: the app's future and the request's host state.
struct Started {
    future: berth_app::abi::FfiFuture<berth_app::abi::AbiHandleOutcome>,
    scope: Arc<RequestScope>,
    deadline: tokio::time::Instant,
    /// Boxed: the request's future is moved (for HTTP/2, into a task of its own) and holds this
    /// for as long as the app takes; without the access log it is one word.
    log: Option<Box<RequestLog>>,
    /// For a WebSocket handshake (its scope holds the handshake itself). Boxed, as `log`.
    upgrade: Option<Box<Upgrade>>,
    /// Streaming responses end when it begins.
    shutdown: Arc<crate::http::shutdown::Shutdown>,
}

/// Lends the request to `app` and starts it.
fn start(
    connection: &Connection,
    parts: http::request::Parts,
    body: Incoming,
    app: &AppVersion,
    mount_len: usize,
    log: Option<Box<RequestLog>>,
    upgrade: Option<(Box<Handshake>, Upgrade)>,
) -> Started {
    let max_body = app.max_body_size;
    let deadline = tokio::time::Instant::now() + app.request_timeout;
    let view = RequestView {
        method: parts.method.as_str(),
        uri: &parts.uri,
        version: parts.version,
        headers: &parts.headers,
        peer_addr: Some(connection.peer),
        local_addr: connection.local,
        mount_len,
    };
    let (scope, upgrade) = match upgrade {
        None => (
            RequestScope::for_request(&app.services, Some(deadline), &view),
            None,
        ),
        Some((handshake, upgrade)) => (
            RequestScope::for_upgrade(&app.services, Some(deadline), &view, handshake),
            Some(Box::new(upgrade)),
        ),
    };
    let exceeded = Arc::clone(&scope);
    let body = limited_request_body(body, max_body, move || exceeded.set_body_exceeded());
    let future = {
        let _in_app = calls::enter(
            &app.name,
            &scope.request.method_and_target(),
            Some(app.request_timeout),
        );
        app.plugin.handle(Arc::clone(&scope), body)
    };
    Started {
        future,
        scope,
        deadline,
        log,
        upgrade,
        shutdown: Arc::clone(&connection.shutdown),
    }
}

/// Waits for the app's answer until the request's deadline.
async fn answer(started: Started, in_flight: InFlight) -> Response<ResponseBody> {
    let Started {
        mut future,
        scope,
        deadline,
        mut log,
        upgrade,
        shutdown,
    } = started;
    // The plugin catches its own panics; a poll that panics all the same (broken plugin glue)
    // comes back as `Err`.
    let app = in_flight.version();
    let caught = std::future::poll_fn(|cx| {
        let _in_app = calls::enter(
            &app.name,
            &scope.request.method_and_target(),
            Some(app.request_timeout),
        );
        future.poll_caught(cx)
    });
    let outcome = WithDeadline::new(caught, deadline).await;
    let outcome = match (upgrade, &scope.handshake) {
        (Some(upgrade), Some(handshake)) => {
            // Too late to accept from here on; a session accepted by a handler that then
            // failed is released here.
            match (handshake.take_accepted(), outcome) {
                (Some(accepted), Some(Ok(ok))) if ok.tag == berth_app::abi::OUTCOME_OK => {
                    let response = upgrade::switch(*upgrade, handshake, accepted, ok, in_flight);
                    if let Some(log) = &mut log {
                        log.status = Some(response.status());
                    }
                    return response;
                }
                (_, outcome) => outcome,
            }
        }
        _ => outcome,
    };
    let response = respond(outcome, &scope, in_flight, &shutdown);
    if let Some(log) = &mut log {
        log.status = Some(response.status());
    }
    response
}

pin_project_lite::pin_project! {
    /// `future`, or `None` once `deadline` passes. Unlike `tokio::time::timeout` it sets no
    /// timer when the future is ready at its first poll, as most apps' answers are, and keeps
    /// the timer (a large value) out of line, so that the request's future stays small.
    struct WithDeadline<F> {
        #[pin]
        future: F,
        timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
        deadline: tokio::time::Instant,
    }
}

impl<F> WithDeadline<F> {
    fn new(future: F, deadline: tokio::time::Instant) -> Self {
        WithDeadline {
            future,
            timer: None,
            deadline,
        }
    }
}

impl<F: Future> Future for WithDeadline<F> {
    type Output = Option<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(output) = this.future.poll(cx) {
            return std::task::Poll::Ready(Some(output));
        }
        let deadline = *this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).map(|()| None)
    }
}
