//! WebSockets (ABI 1.5): the host runs the protocol, apps see whole messages.
//!
//! * [`handshake`]: an upgrade request's handshake, which the app accepts (or not) while its
//!   handler runs, and the `101` answer;
//! * [`socket`]: what the app and the host share of one open socket: the bounded queues each
//!   way, their wakers, and close requests from host capabilities ([`SessionSocket`]);
//! * [`session`]: the task that runs one socket: tokio-tungstenite's codec on the upgraded
//!   connection, the app's session future, pings, timeouts and the closing handshake;
//! * [`sessions`]: the live sessions of one app version, closed together on reload grace or
//!   shutdown.
//!
//! [`SessionSocket`]: super::SessionSocket

pub mod handshake;
pub mod session;
pub mod sessions;
pub mod socket;

use std::time::Duration;

pub use handshake::{AcceptError, Accepted, Handshake, StartSession};
pub use session::{SessionEnd, codec_config, run};
pub use sessions::Sessions;
pub use socket::{Inbound, Outbound, SendError, WsMessage, WsShared};

/// One app's WebSocket settings, resolved from the config file (`ws_*` keys, at the top level
/// and per app).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    /// Largest message a client may send, in bytes (`ws_max_message`, default 1 MiB); a larger
    /// one closes the socket with 1009.
    pub max_message: usize,
    /// Largest frame a client may send, in bytes (`ws_max_frame`, default 1 MiB); a larger one
    /// closes the socket with 1009.
    pub max_frame: usize,
    /// How often the host pings a client (`ws_ping_interval`, default 20 s).
    pub ping_interval: Duration,
    /// How long a client has to answer a ping (`ws_pong_timeout`, default 20 s); one that does
    /// not (a half-open connection) is closed.
    pub pong_timeout: Duration,
    /// Closes a socket with 1001 after this long without a message either way
    /// (`ws_idle_timeout`, default off). Pings and pongs do not count.
    pub idle_timeout: Option<Duration>,
    /// Messages the app may queue for a client before its send waits (`ws_send_queue`,
    /// default 32).
    pub send_queue: usize,
    /// The `Origin`s a handshake may come from, lower-cased (`ws_origins`, default empty: any).
    /// Others get 403 before the app sees them.
    pub origins: Vec<String>,
    /// After a swap, the old version's sockets are closed with 1012 after this long
    /// (`ws_reload_grace`, default off: they keep the old version until they close).
    pub reload_grace: Option<Duration>,
    /// The close code every socket gets when the server shuts down (`ws_shutdown_code`,
    /// default 1001).
    pub shutdown_code: u16,
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            max_message: 1 << 20,
            max_frame: 1 << 20,
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(20),
            idle_timeout: None,
            send_queue: 32,
            origins: Vec::new(),
            reload_grace: None,
            shutdown_code: 1001,
        }
    }
}

impl WsSettings {
    /// Whether a handshake with `origin` (the header's value, if any) may reach the app.
    pub fn allows_origin(&self, origin: Option<&[u8]>) -> bool {
        if self.origins.is_empty() {
            return true;
        }
        origin.is_some_and(|origin| {
            self.origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin))
        })
    }
}

/// Whether an endpoint may send `code` in a close frame (RFC 6455, section 7.4): 1000-1003,
/// 1007-1014, and 3000-4999. 1004, 1005, 1006 and 1015 are reserved.
pub fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_ignoring_case() {
        let any = WsSettings::default();
        assert!(any.allows_origin(None));
        assert!(any.allows_origin(Some(b"https://evil.example")));
        let listed = WsSettings {
            origins: vec!["https://app.example".to_owned()],
            ..WsSettings::default()
        };
        assert!(listed.allows_origin(Some(b"https://APP.example")));
        assert!(!listed.allows_origin(Some(b"https://app.example.evil")));
        assert!(!listed.allows_origin(Some(b"http://app.example")));
        assert!(!listed.allows_origin(None));
    }

    #[test]
    fn close_codes_an_endpoint_may_send() {
        for code in [1000, 1001, 1008, 1011, 1012, 3000, 4999] {
            assert!(sendable_close_code(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert!(!sendable_close_code(code), "{code}");
        }
    }
}
