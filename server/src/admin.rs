//! The admin listener: health, readiness, the apps' status, reloads, and the pub/sub broker's
//! channels. It runs on its own address (loopback by default), away from the public port.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::apps::{Registry, Rescan};

/// Serves the admin API on `listener` until the process exits.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("admin listening on http://{addr}");
    }
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("admin accept failed: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        let service = service_fn(move |request| {
            let registry = Arc::clone(&registry);
            async move { Ok::<_, Infallible>(handle(&registry, request).await) }
        });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                tracing::debug!(%peer, "admin connection error: {err}");
            }
        });
    }
}

async fn handle(registry: &Arc<Registry>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let method = request.method();
    match path {
        "/healthz" if method == Method::GET => text(StatusCode::OK, "ok\n"),
        "/readyz" if method == Method::GET => {
            if registry.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "loading apps\n")
            }
        }
        "/apps" if method == Method::GET => json_response(StatusCode::OK, &registry.status()),
        // {"backend": "memory"|"redis", "connected", "channels": [{"name", "subscribers",
        // "published", "delivered", "dropped"}], "reconnects"}
        "/pubsub" if method == Method::GET => {
            json_response(StatusCode::OK, &registry.broker().status())
        }
        "/healthz" | "/readyz" | "/apps" | "/pubsub" => {
            text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        _ => match reload_target(path) {
            Some(name) if method == Method::POST => reload(registry, name).await,
            Some(_) => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// `/apps/<name>/reload` → `name`.
fn reload_target(path: &str) -> Option<&str> {
    let name = path.strip_prefix("/apps/")?.strip_suffix("/reload")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// Loads the app's file again as a new version (even if unchanged), swapping it in if it loads.
async fn reload(registry: &Arc<Registry>, name: &str) -> Response<Full<Bytes>> {
    let Some(file) = registry.file_of(name) else {
        let error = json!({ "error": format!("no app named {name:?} is mounted") });
        return json_response(StatusCode::NOT_FOUND, &error);
    };
    let outcomes = registry.rescan(Rescan::App(name)).await;
    match outcomes.get(&file) {
        Some(Ok(version)) => json_response(
            StatusCode::OK,
            &json!({ "app": registry.describe(version) }),
        ),
        Some(Err(error)) => {
            let body = json!({ "error": error.to_string(), "file": file.display().to_string() });
            json_response(StatusCode::UNPROCESSABLE_ENTITY, &body)
        }
        None => {
            let error =
                json!({ "error": format!("{} disappeared during the reload", file.display()) });
            json_response(StatusCode::CONFLICT, &error)
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        Bytes::from_static(body.as_bytes()),
        "text/plain; charset=utf-8",
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    respond(status, Bytes::from(format!("{body}\n")), "application/json")
}

fn respond(status: StatusCode, body: Bytes, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::reload_target;

    #[test]
    fn reload_paths() {
        assert_eq!(reload_target("/apps/hello/reload"), Some("hello"));
        assert_eq!(reload_target("/apps//reload"), None);
        assert_eq!(reload_target("/apps/a/b/reload"), None);
        assert_eq!(reload_target("/apps/hello"), None);
    }
}
