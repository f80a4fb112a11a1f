//! What goes back to the client: an app's answer with its streamed body, or the host's own
//! answer when the app failed, was late, or there was no app to ask.

use std::sync::atomic::Ordering;

use berth_app::ffi::{ForeignBody, HandleFailure};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::apps::{InFlight, Router};
use crate::host::calls;
use crate::http::shutdown::{Shutdown, ShutdownWatch};
use crate::plugin::{RequestScope, outcome_into_parts};

/// The body of every response Berth sends: its own small answers, or an app's stream.
pub type ResponseBody = Either<Full<Chunk>, AppBody>;

/// A piece of a response body: bytes of the host's own, or a chunk the app still holds, which
/// is written out where it is and released once sent (wrapping it in [`Bytes`] would cost an
/// allocation per chunk).
#[derive(Debug)]
pub enum Chunk {
    /// The host's own bytes.
    Own(Bytes),
    /// A chunk of an app's body.
    App(berth_app::ffi::ForeignChunk),
}

impl bytes::Buf for Chunk {
    fn remaining(&self) -> usize {
        match self {
            Chunk::Own(bytes) => bytes.remaining(),
            Chunk::App(chunk) => chunk.remaining(),
        }
    }

    fn chunk(&self) -> &[u8] {
        match self {
            Chunk::Own(bytes) => bytes.chunk(),
            Chunk::App(chunk) => chunk.chunk(),
        }
    }

    fn advance(&mut self, cnt: usize) {
        match self {
            Chunk::Own(bytes) => bytes.advance(cnt),
            Chunk::App(chunk) => chunk.advance(cnt),
        }
    }
}

/// An app's response body, streamed to the client chunk by chunk as hyper asks for it. It keeps
/// its request counted in flight on its app version until it is finished or dropped. A failure
/// mid-stream (the app's stream returned an error or panicked) is logged with the app's name and
/// counted as an error; hyper then aborts the response, so the client sees it cut short.
///
/// A body still waiting for its app when the server shuts down ends there (cleanly, for a
/// stream without a length, as server-sent events are), so that no stream holds the drain.
#[derive(Debug)]
pub struct AppBody {
    inner: ForeignBody,
    _in_flight: InFlight,
    shutdown: ShutdownWatch,
}

impl http_body::Body for AppBody {
    type Data = Chunk;
    type Error = berth_app::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Chunk>, Self::Error>>> {
        let polled = {
            let version = self._in_flight.version();
            let _in_app = calls::enter(
                &version.name,
                &[b"response body"],
                Some(version.request_timeout),
            );
            self.inner.poll_chunk_in_place(cx)
        };
        if polled.is_pending() && self.shutdown.poll_started(cx) {
            let version = self._in_flight.version();
            tracing::debug!(
                app = &*version.name,
                "server shutting down: ended a streaming response"
            );
            return std::task::Poll::Ready(None);
        }
        if let std::task::Poll::Ready(Some(Err(err))) = &polled {
            let version = self._in_flight.version();
            version.stats.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(app = &*version.name, "app's response body failed: {err}");
        }
        polled.map(|chunk| chunk.map(|chunk| chunk.map(|c| http_body::Frame::data(Chunk::App(c)))))
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.inner)
    }
}

/// Turns the app's outcome (`None`: the deadline passed) into the response.
pub(super) fn respond(
    outcome: Option<Result<berth_app::abi::AbiHandleOutcome, berth_app::ffi::Panicked>>,
    scope: &RequestScope,
    in_flight: InFlight,
    shutdown: &std::sync::Arc<Shutdown>,
) -> Response<ResponseBody> {
    let parts = match outcome {
        Some(Ok(outcome)) => outcome_into_parts(outcome),
        Some(Err(berth_app::ffi::Panicked)) => return failed(Failure::Unwound, scope, &in_flight),
        None => return failed(Failure::Late, scope, &in_flight),
    };
    match parts {
        Ok((status, headers, body)) if !scope.body_exceeded() => {
            let body = AppBody {
                inner: body,
                _in_flight: in_flight,
                shutdown: ShutdownWatch::new(std::sync::Arc::clone(shutdown)),
            };
            let mut response = Response::new(Either::Right(body));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Ok(_) => failed(Failure::TooLarge, scope, &in_flight),
        Err(failure) => failed(Failure::App(failure), scope, &in_flight),
    }
}

/// Why a request gets the host's answer instead of its app's.
enum Failure {
    /// The deadline passed first.
    Late,
    /// A poll of the app's future panicked across the boundary (broken plugin glue).
    Unwound,
    /// The request body went over the app's limit: whatever the app made of its failed body
    /// stream, the client sent too much.
    TooLarge,
    /// The app panicked, or its answer was not valid.
    App(HandleFailure),
}

/// The host's answer for `failure`, logged and counted. Out of line and marked cold, so that
/// an answer that goes well runs a short, straight path.
#[cold]
#[inline(never)]
fn failed(failure: Failure, scope: &RequestScope, in_flight: &InFlight) -> Response<ResponseBody> {
    let app = in_flight.version();
    // What went wrong is logged whatever the client is told; `None`: the body was over the limit.
    let answer = match failure {
        Failure::Late => {
            let limit = app.request_timeout;
            tracing::warn!(
                app = &*app.name,
                "app did not answer within {limit:?}; its future was dropped"
            );
            Some(text(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the app did not answer within {limit:?}\n"),
            ))
        }
        Failure::Unwound => {
            tracing::error!(
                app = &*app.name,
                "app's future panicked across the boundary"
            );
            Some(internal_error())
        }
        Failure::TooLarge => None,
        Failure::App(HandleFailure::Panicked(message)) => {
            tracing::error!(app = &*app.name, "app panicked: {message}");
            Some(internal_error())
        }
        Failure::App(failure) => {
            tracing::error!(
                app = &*app.name,
                "app returned an invalid response: {failure}"
            );
            Some(internal_error())
        }
    };
    // A body over the limit is the first thing to tell the client, whatever else went wrong.
    let response = match answer {
        Some(answer) if !scope.body_exceeded() => answer,
        _ => too_large(app.max_body_size),
    };
    if response.status().is_server_error() {
        app.stats.errors.fetch_add(1, Ordering::Relaxed);
    }
    response
}

pub(super) fn too_large(limit: u64) -> Response<ResponseBody> {
    let mut response = text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than the limit of {limit} bytes\n"),
    );
    // The rest of the body is not read: the connection cannot be reused.
    response
        .headers_mut()
        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    response
}

pub(super) fn listing(router: &Router) -> Response<ResponseBody> {
    let apps: Vec<_> = router
        .apps()
        .map(|app| {
            serde_json::json!({
                "name": &*app.name,
                "version": app.plugin.version,
                "mount": app.mount,
                "file": app.file.display().to_string(),
            })
        })
        .collect();
    let body = serde_json::json!({ "apps": apps }).to_string() + "\n";
    let mut response = Response::new(Either::Left(Full::new(Chunk::Own(Bytes::from(body)))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// An empty response of the host's own.
pub(super) fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Left(Full::new(Chunk::Own(Bytes::new()))));
    *response.status_mut() = status;
    response
}

pub(super) fn text(status: StatusCode, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Left(Full::new(Chunk::Own(Bytes::from(body)))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn internal_error() -> Response<ResponseBody> {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal server error\n".to_owned(),
    )
}
