//! What is mounted: the apps loaded from the apps directory, each version's requests, and how
//! they change while Berth serves.
//!
//! * [`loader`]: a file in the apps directory → a checked [`Plugin`](crate::plugin::Plugin),
//!   through a private shadow copy, and its `init` hook;
//! * [`version`]: one loaded version of an app and the requests in flight on it;
//! * [`router`]: path prefix → app version;
//! * [`registry`]: the live set of versions: rescans, hot swaps, retiring, the admin's view;
//! * [`watch`]: rescans on file events and on SIGHUP.

pub mod loader;
pub mod registry;
pub mod router;
pub mod version;
pub mod watch;

pub use loader::LoadError;
pub use registry::{Registry, Rescan};
pub use router::Router;
pub use version::{AppVersion, InFlight};

use crate::config::{AppConfig, Config};
use crate::host::{OutboundPolicy, SocketLimits};

/// An app's outbound rules (fetches and sockets): its own entry's where it has them, the
/// server's otherwise.
pub fn outbound_policy(config: &Config, app: &AppConfig) -> OutboundPolicy {
    OutboundPolicy::new(
        app.allowed_outbound_hosts
            .clone()
            .unwrap_or_else(|| config.outbound.allowed_hosts.clone()),
        app.outbound_max_concurrency
            .unwrap_or(config.outbound.max_concurrency),
        app.outbound_max_buffered
            .unwrap_or(config.outbound.max_buffered),
        SocketLimits {
            connect_timeout: app
                .connect_timeout
                .unwrap_or(config.outbound.connect_timeout),
            max_sockets: app.max_sockets.unwrap_or(config.outbound.max_sockets),
        },
    )
}
