//! WebSocket upgrades: the handshake read from an upgrade request before its app runs (and
//! refused with 403 for an `Origin` the app does not allow), and, once the app has accepted
//! and its handler is done, the `101` and the task that runs the socket on the upgraded
//! connection.

use std::sync::Arc;

use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::apps::{AppVersion, InFlight};
use crate::host::websocket::{self, Accepted, Handshake, WsShared};
use crate::http::connection::Connection;
use crate::http::idle::ActivityGuard;
use crate::http::response::{ResponseBody, empty, text};
use crate::plugin::outcome_into_parts;

/// What an upgrade request keeps besides its scope's handshake until its app has answered.
pub(super) struct Upgrade {
    /// hyper's side of the upgrade, resolved once the `101` is out.
    on_upgrade: OnUpgrade,
    /// Keeps the connection counted busy, so that its keep-alive and head timers never cut
    /// the socket.
    activity: ActivityGuard,
    /// The connection, whose place under the connection limit the socket takes over.
    connection: Arc<Connection>,
}

/// The WebSocket handshake of `parts`, if it is one, with hyper's upgrade taken out of the
/// request. `Err`: the answer instead of the app's (403 for an `Origin` the app does not allow).
pub(super) fn handshake(
    parts: &mut http::request::Parts,
    app: &AppVersion,
    connection: &Arc<Connection>,
    activity: &Arc<crate::http::idle::Activity>,
) -> Result<Option<(Box<Handshake>, Upgrade)>, Forbidden> {
    let Some(handshake) = Handshake::from_request(&parts.method, parts.version, &parts.headers)
    else {
        return Ok(None);
    };
    let origin = parts
        .headers
        .get(http::header::ORIGIN)
        .map(|o| o.as_bytes());
    if !app.websocket.allows_origin(origin) {
        tracing::info!(
            app = &*app.name,
            origin = origin.map(String::from_utf8_lossy).as_deref(),
            "WebSocket handshake refused: its Origin is not in ws_origins"
        );
        return Err(Forbidden);
    }
    // Served with upgrades, hyper puts this in every HTTP/1.1 request.
    let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
        return Ok(None);
    };
    let upgrade = Upgrade {
        on_upgrade,
        activity: activity.begin(),
        connection: Arc::clone(connection),
    };
    Ok(Some((Box::new(handshake), upgrade)))
}

/// The host's answer to a handshake from an `Origin` the app does not allow.
pub(super) struct Forbidden;

impl Forbidden {
    pub(super) fn response(self) -> http::Response<ResponseBody> {
        text(
            StatusCode::FORBIDDEN,
            "this Origin may not open a WebSocket here\n".to_owned(),
        )
    }
}

/// The `101` for a handshake the app accepted; its response (`outcome`) is released unread.
/// The socket runs on a task of its own once hyper hands over the connection, holding the
/// request's place on its version (`in_flight`) and the connection's place under the
/// connection limit for as long as the session runs.
pub(super) fn switch(
    upgrade: Upgrade,
    handshake: &Handshake,
    mut accepted: Accepted,
    outcome: berth_app::abi::AbiHandleOutcome,
    in_flight: InFlight,
) -> http::Response<ResponseBody> {
    drop(outcome_into_parts(outcome));
    let mut response = empty(StatusCode::SWITCHING_PROTOCOLS);
    *response.headers_mut() = handshake.response_headers(&mut accepted);
    let Upgrade {
        on_upgrade,
        activity,
        connection,
    } = upgrade;
    // The socket holds the connection's place under the limit until it closes.
    let slot = connection
        .slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    drop(connection);
    let session = accepted.session;
    tokio::spawn(async move {
        let version = Arc::clone(in_flight.version());
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(app = &*version.name, "WebSocket upgrade failed: {err}");
                return;
            }
        };
        let settings = Arc::clone(&version.websocket);
        let services = &version.services;
        let shared = Arc::new(WsShared::new(settings.send_queue));
        let registration = services.websockets.register(&shared);
        let app = session.start(Arc::clone(&shared), services);
        let io = TokioIo::new(upgraded);
        websocket::run(io, shared, app, &settings, registration, &version.name).await;
        drop(activity);
        drop(slot);
        drop(in_flight);
    });
    response
}
