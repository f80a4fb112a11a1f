//! The WebSocket half of the native baselines: the handshake answered through hyper, and the
//! codec (tokio-tungstenite) on hyper's upgraded connection, as Berth's host does it.
//!
//! The codec's settings mirror the host's where they change what is measured: the read buffer,
//! allocated whole for every socket, is `WS_READ_BUFFER` bytes (default
//! [`DEFAULT_READ_BUFFER`], Berth's figure), so that both sides can be given the same figure;
//! the write buffer (how much the codec gathers before writing) is [`WRITE_BUFFER`], as in
//! Berth. The message and frame limits are tungstenite's defaults: they allocate nothing.

use std::future::Future;

use anyhow::{Context as _, bail};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::{Body, respond};

/// The read buffer each socket allocates when `WS_READ_BUFFER` is not set.
pub const DEFAULT_READ_BUFFER: usize = 4096;

/// How much the codec gathers before it writes to the connection, as in Berth's host (every
/// send here flushes anyway).
pub const WRITE_BUFFER: usize = 16 * 1024;

/// A server-side WebSocket on hyper's upgraded connection.
pub type ServerSocket = WebSocketStream<TokioIo<Upgraded>>;

/// The codec's settings: tungstenite's defaults with the read buffer from `WS_READ_BUFFER` and
/// the write buffer of [`WRITE_BUFFER`].
pub fn config() -> anyhow::Result<WebSocketConfig> {
    let read_buffer = match std::env::var("WS_READ_BUFFER") {
        Ok(text) => text
            .trim()
            .parse::<usize>()
            .with_context(|| format!("WS_READ_BUFFER={text:?} is not a number of bytes"))?,
        Err(std::env::VarError::NotPresent) => DEFAULT_READ_BUFFER,
        Err(err) => bail!("WS_READ_BUFFER: {err}"),
    };
    if read_buffer == 0 {
        bail!("WS_READ_BUFFER must be at least 1 byte");
    }
    Ok(WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(WRITE_BUFFER))
}

/// Raises the open-file soft limit to the hard limit (one descriptor per socket), as Berth does
/// at start, and logs it.
pub fn raise_nofile(program: &str) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => eprintln!("{program}: open-file limit {soft}"),
        Err(err) => eprintln!("{program}: cannot raise the open-file limit: {err}"),
    }
}

/// Whether `headers` ask for a WebSocket upgrade (RFC 6455 §4.2.1, version 13).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|text| {
                text.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    has_token(header::CONNECTION, "upgrade")
        && has_token(header::UPGRADE, "websocket")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|v| v == "13")
        && headers.contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Answers a WebSocket handshake with `101 Switching Protocols` and, once hyper hands over the
/// connection, runs `session` on it in a task of its own. A request that is not a valid
/// handshake gets `400`.
pub fn accept<S, F>(
    request: Request<Incoming>,
    config: WebSocketConfig,
    session: S,
) -> Response<Body>
where
    S: FnOnce(ServerSocket) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    if request.method() != http::Method::GET || !is_upgrade(request.headers()) {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "expected a WebSocket handshake\n",
        );
    }
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return respond(StatusCode::BAD_REQUEST, "text/plain", "no key\n");
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        // Fails only when the client went away before the upgrade.
        let Ok(upgraded) = hyper::upgrade::on(request).await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        session(socket).await;
    });
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_upgrade_needs_every_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        assert!(!is_upgrade(&headers));
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert!(is_upgrade(&headers));
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(!is_upgrade(&headers));
    }
}
