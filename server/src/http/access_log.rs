//! The access log: one line per request (`--access-log`).

use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;

/// With `--access-log`, emits the one log event per request when dropped: with the response
/// status, or, if the request future was dropped first (the client went away), as status 499
/// like NGINX.
pub(super) struct RequestLog {
    pub(super) app: Arc<str>,
    pub(super) method: http::Method,
    pub(super) path: String,
    pub(super) started: Instant,
    /// The response's status, once there is one.
    pub(super) status: Option<StatusCode>,
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let (app, method, path) = (&*self.app, &self.method, &*self.path);
        match self.status {
            Some(status) => {
                let status = status.as_u16();
                tracing::info!(target: "berth::access", app, %method, path, status, latency_ms, "request");
            }
            None => tracing::info!(
                target: "berth::access",
                app,
                %method,
                path,
                status = 499,
                latency_ms,
                "request cancelled: the client went away"
            ),
        }
    }
}
