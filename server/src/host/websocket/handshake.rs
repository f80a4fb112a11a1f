//! An upgrade request's WebSocket handshake (RFC 6455, section 4.2): read from the request
//! head before the app runs, accepted by the app through the host capability table while its
//! handler runs, and answered with `101 Switching Protocols` once the handler is done.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use berth_app::abi::FfiFuture;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::WsShared;
use crate::host::AppServices;

/// The app's side of an accepted socket, not started yet: `plugin` implements it over the
/// ABI's `AbiWsSession`. Dropping it without starting it releases it in the plugin.
pub trait StartSession: Send + fmt::Debug {
    /// Starts the app's session on `socket`, with a host handle on `services` of its own (no
    /// deadline, nothing lent). The future resolves to 0 when the app is done with the socket,
    /// to another value or `Err(Panicked)` when it failed.
    fn start(self: Box<Self>, socket: Arc<WsShared>, services: &Arc<AppServices>)
    -> FfiFuture<u32>;
}

/// Why an app's accept was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The request was accepted already.
    #[error("the WebSocket handshake was accepted already")]
    Twice,
    /// The handler has already been answered: too late to accept.
    #[error("the request was answered already")]
    Late,
    /// The subprotocol was not offered, or a header is the host's to set.
    #[error("invalid WebSocket accept: {0}")]
    Invalid(String),
}

/// How the app accepted: the `101`'s subprotocol and extra headers, and its session.
#[derive(Debug)]
pub struct Accepted {
    /// The subprotocol chosen, if any.
    pub protocol: Option<HeaderValue>,
    /// Extra headers for the `101`.
    pub headers: HeaderMap,
    /// The app's session, started once the connection is upgraded.
    pub session: Box<dyn StartSession>,
}

/// The WebSocket handshake of one upgrade request.
#[derive(Debug)]
pub struct Handshake {
    /// `Sec-WebSocket-Key`, for the accept key.
    key: HeaderValue,
    /// The subprotocols the client offered (`Sec-WebSocket-Protocol`), in its order.
    offered: Vec<String>,
    /// What the app did about it.
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    Open,
    Accepted(Accepted),
    Taken,
}

/// Headers the host sets on the `101` itself, which an app may not.
const HOST_HEADERS: [HeaderName; 7] = [
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
];

/// Whether the comma-separated token list in `values` holds `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether `key` is a valid `Sec-WebSocket-Key`: 16 bytes in base64, 24 characters.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

impl Handshake {
    /// The handshake of a request, or `None` when it is not a WebSocket handshake (method,
    /// version, `Upgrade`, `Connection`, `Sec-WebSocket-Key` or `Sec-WebSocket-Version`).
    /// HTTP/2's extended CONNECT is not supported.
    pub fn from_request(
        method: &http::Method,
        version: http::Version,
        headers: &HeaderMap,
    ) -> Option<Self> {
        if method != http::Method::GET || version != http::Version::HTTP_11 {
            return None;
        }
        let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
        let ok = valid_key(key.as_bytes())
            && headers
                .get(header::SEC_WEBSOCKET_VERSION)
                .is_some_and(|v| v.as_bytes() == b"13")
            && has_token(headers, header::UPGRADE, "websocket")
            && has_token(headers, header::CONNECTION, "upgrade");
        if !ok {
            return None;
        }
        let offered = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        Some(Handshake {
            key: key.clone(),
            offered,
            state: Mutex::new(State::Open),
        })
    }

    /// The subprotocols the client offered.
    pub fn offered(&self) -> &[String] {
        &self.offered
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The app accepts with `protocol` (empty: none) and extra `headers`. On an error the
    /// session is dropped (released in the plugin) before this returns.
    pub fn accept(
        &self,
        protocol: &str,
        headers: HeaderMap,
        session: Box<dyn StartSession>,
    ) -> Result<(), AcceptError> {
        let checked = self.check(protocol, &headers);
        let refused = {
            let mut state = self.lock();
            match (&*state, checked) {
                (State::Open, Ok(protocol)) => {
                    *state = State::Accepted(Accepted {
                        protocol,
                        headers,
                        session,
                    });
                    return Ok(());
                }
                (State::Open, Err(error)) => (session, error),
                (State::Accepted(_), _) => (session, AcceptError::Twice),
                (State::Taken, _) => (session, AcceptError::Late),
            }
        };
        // Released outside the lock: the plugin's drop may call back into the host.
        drop(refused.0);
        Err(refused.1)
    }

    fn check(
        &self,
        protocol: &str,
        headers: &HeaderMap,
    ) -> Result<Option<HeaderValue>, AcceptError> {
        if let Some(name) = headers.keys().find(|name| HOST_HEADERS.contains(name)) {
            return Err(AcceptError::Invalid(format!(
                "the {name} header is the host's to set"
            )));
        }
        if protocol.is_empty() {
            return Ok(None);
        }
        if !self.offered.iter().any(|p| p == protocol) {
            return Err(AcceptError::Invalid(format!(
                "subprotocol {protocol:?} was not offered (offered: {:?})",
                self.offered
            )));
        }
        HeaderValue::from_str(protocol)
            .map(Some)
            .map_err(|_| AcceptError::Invalid(format!("subprotocol {protocol:?} is not a token")))
    }

    /// Takes what the app accepted with, if it did, once its handler is done: a later accept
    /// is refused ([`AcceptError::Late`]).
    pub fn take_accepted(&self) -> Option<Accepted> {
        match std::mem::replace(&mut *self.lock(), State::Taken) {
            State::Accepted(accepted) => Some(accepted),
            State::Open | State::Taken => None,
        }
    }

    /// The headers of the `101` answering this handshake as `accepted`.
    pub fn response_headers(&self, accepted: &mut Accepted) -> HeaderMap {
        let mut headers = std::mem::take(&mut accepted.headers);
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        let key = tokio_tungstenite::tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        if let Ok(key) = HeaderValue::from_str(&key) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, key);
        }
        if let Some(protocol) = accepted.protocol.take() {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Dropped(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl StartSession for Dropped {
        fn start(
            self: Box<Self>,
            _socket: Arc<WsShared>,
            _services: &Arc<AppServices>,
        ) -> FfiFuture<u32> {
            FfiFuture::new(async { 0 })
        }
    }

    fn request(extra: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert("sec-websocket-version", HeaderValue::from_static("13"));
        headers.insert(
            "sec-websocket-key",
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        for (name, value) in extra {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn handshake(headers: &HeaderMap) -> Option<Handshake> {
        Handshake::from_request(&http::Method::GET, http::Version::HTTP_11, headers)
    }

    #[test]
    fn recognises_a_handshake_and_derives_the_rfc_accept_key() {
        let headers = request(&[("sec-websocket-protocol", "chat, superchat")]);
        let handshake = handshake(&headers).expect("a handshake");
        assert_eq!(handshake.offered(), ["chat", "superchat"]);
        let drops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let session = Box::new(Dropped(Arc::clone(&drops)));
        handshake
            .accept("chat", HeaderMap::new(), session)
            .expect("accepted");
        let mut accepted = handshake.take_accepted().expect("accepted once");
        let response = handshake.response_headers(&mut accepted);
        // The example of RFC 6455, section 1.3.
        assert_eq!(
            response["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(response["sec-websocket-protocol"], "chat");
        assert!(handshake.take_accepted().is_none());
    }

    #[test]
    fn not_a_handshake() {
        let mut missing_key = request(&[]);
        missing_key.remove("sec-websocket-key");
        let mut old_version = request(&[]);
        old_version.insert("sec-websocket-version", HeaderValue::from_static("8"));
        let mut no_upgrade = request(&[]);
        no_upgrade.insert("connection", HeaderValue::from_static("keep-alive"));
        for headers in [missing_key, old_version, no_upgrade, HeaderMap::new()] {
            assert!(handshake(&headers).is_none(), "{headers:?}");
        }
        let headers = request(&[]);
        assert!(
            Handshake::from_request(&http::Method::POST, http::Version::HTTP_11, &headers)
                .is_none()
        );
        assert!(
            Handshake::from_request(&http::Method::GET, http::Version::HTTP_2, &headers).is_none()
        );
    }

    #[test]
    fn refusals_release_the_session() {
        let headers = request(&[("sec-websocket-protocol", "chat")]);
        let handshake = handshake(&headers).expect("a handshake");
        let drops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let session = || Box::new(Dropped(Arc::clone(&drops)));
        let error = handshake.accept("other", HeaderMap::new(), session());
        assert!(matches!(error, Err(AcceptError::Invalid(_))), "{error:?}");
        let mut host_header = HeaderMap::new();
        host_header.insert("sec-websocket-accept", HeaderValue::from_static("x"));
        let error = handshake.accept("", host_header, session());
        assert!(matches!(error, Err(AcceptError::Invalid(_))), "{error:?}");
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 2);
        handshake
            .accept("", HeaderMap::new(), session())
            .expect("accepted");
        let error = handshake.accept("", HeaderMap::new(), session());
        assert!(matches!(error, Err(AcceptError::Twice)), "{error:?}");
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 3);
        drop(handshake.take_accepted());
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 4);
        let error = handshake.accept("", HeaderMap::new(), session());
        assert!(matches!(error, Err(AcceptError::Late)), "{error:?}");
        assert_eq!(drops.load(std::sync::atomic::Ordering::SeqCst), 5);
    }
}
