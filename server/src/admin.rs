//! The admin listener: health, readiness, the apps' status, reloads, the pub/sub broker's
//! channels, and with worker processes the workers. It runs on its own address (loopback by
//! default), away from the public port, and on a thread of its own: in a single process it
//! still answers while the serving runtime is blocked, and says so in `/healthz`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

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
use crate::host::calls::{self, CallTable};

/// What the admin API reports on.
#[derive(Debug)]
pub enum Admin {
    /// A single process.
    Process(Process),
    /// A supervisor and its workers: the apps' paths are asked of every worker.
    Workers(Arc<dyn Supervision>),
}

/// The admin API of a supervisor (`crate::workers`), which answers every path itself: its own
/// (`/workers`, `/readyz`) and the apps', which it asks each worker.
pub trait Supervision: std::fmt::Debug + Send + Sync {
    /// The answer to `method` `path`.
    fn answer<'a>(
        &'a self,
        method: &'a Method,
        path: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Answer> + Send + 'a>>;
}

/// A single process: its apps, and the runtime that serves them.
#[derive(Debug)]
pub struct Process {
    /// The apps.
    pub registry: Arc<Registry>,
    /// The runtime that serves the apps: reloads run there, not on the admin thread.
    pub serving: tokio::runtime::Handle,
    /// Where the serving runtime stamps its heartbeat.
    pub calls: &'static CallTable,
    /// How long the heartbeat may be late before `/healthz` fails.
    pub hang_grace: Duration,
}

/// An answer of the admin API, also sent by a worker to its supervisor.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `text/plain`.
    Text(StatusCode, Cow<'static, str>),
    /// `application/json`.
    Json(StatusCode, Value),
}

impl Answer {
    /// The status.
    pub fn status(&self) -> StatusCode {
        match self {
            Answer::Text(status, _) | Answer::Json(status, _) => *status,
        }
    }

    /// The body as JSON (a text body as a string).
    pub fn into_json(self) -> Value {
        match self {
            Answer::Text(_, text) => Value::String(text.into_owned()),
            Answer::Json(_, body) => body,
        }
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let (status, body, content_type) = match self {
            Answer::Text(status, text) => (
                status,
                Bytes::from(text.into_owned()),
                "text/plain; charset=utf-8",
            ),
            Answer::Json(status, body) => {
                (status, Bytes::from(format!("{body}\n")), "application/json")
            }
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

fn text(status: StatusCode, body: &'static str) -> Answer {
    Answer::Text(status, Cow::Borrowed(body))
}

/// Serves the admin API on `listener` on a thread and runtime of its own, so that it answers
/// (`/healthz` with 503) while every thread of the serving runtime is blocked.
pub fn spawn(listener: std::net::TcpListener, admin: Admin) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("berth-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, Arc::new(admin)).await,
                    Err(err) => tracing::error!("cannot serve the admin API: {err}"),
                }
            });
        })?;
    Ok(())
}

/// Serves the admin API on `listener` until the process exits.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
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
        let admin = Arc::clone(&admin);
        let service = service_fn(move |request| {
            let admin = Arc::clone(&admin);
            async move { Ok::<_, Infallible>(handle(&admin, request).await.into_response()) }
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

async fn handle(admin: &Admin, request: Request<Incoming>) -> Answer {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match admin {
        Admin::Process(process) => match path.as_str() {
            "/healthz" if method == Method::GET => process.health(),
            // Reloads run app code (init hooks): on the serving runtime.
            _ if method == Method::POST => {
                let registry = Arc::clone(&process.registry);
                let reloading = process
                    .serving
                    .spawn(async move { answer(&registry, &method, &path).await });
                reloading.await.unwrap_or_else(|err| {
                    Answer::Json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        json!({ "error": format!("the reload failed: {err}") }),
                    )
                })
            }
            _ => answer(&process.registry, &method, &path).await,
        },
        Admin::Workers(supervisor) => supervisor.answer(&method, &path).await,
    }
}

impl Process {
    /// `/healthz`: 200 while the serving runtime's heartbeat is on time, else 503 naming the
    /// app calls its threads are stuck in.
    fn health(&self) -> Answer {
        let now = calls::now_ns();
        let late = self
            .calls
            .heartbeat_age(now)
            .filter(|age| *age > calls::HEARTBEAT + self.hang_grace);
        let Some(age) = late else {
            return text(StatusCode::OK, "ok\n");
        };
        let mut body = format!(
            "the serving runtime has not run its tasks for {:.1}s (hang_grace {:?})\n",
            age.as_secs_f64(),
            self.hang_grace
        );
        for call in self.calls.calls() {
            body.push_str(&format!(
                "thread {} is inside app {:?}, {:?}, for {:.1}s\n",
                call.thread,
                call.app,
                call.request,
                call.elapsed(now).as_secs_f64()
            ));
        }
        Answer::Text(StatusCode::SERVICE_UNAVAILABLE, Cow::Owned(body))
    }
}

/// Answers the paths about apps, in a single process and in each worker: `/healthz`,
/// `/readyz`, `/apps`, `/pubsub` and `POST /apps/<name>/reload`.
pub async fn answer(registry: &Arc<Registry>, method: &Method, path: &str) -> Answer {
    match path {
        "/healthz" if method == Method::GET => text(StatusCode::OK, "ok\n"),
        "/readyz" if method == Method::GET => {
            if registry.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "loading apps\n")
            }
        }
        "/apps" if method == Method::GET => Answer::Json(StatusCode::OK, registry.status()),
        // {"backend": "memory"|"redis", "connected", "channels": [{"name", "subscribers",
        // "published", "delivered", "dropped"}], "reconnects"}
        "/pubsub" if method == Method::GET => {
            Answer::Json(StatusCode::OK, registry.broker().status())
        }
        "/healthz" | "/readyz" | "/apps" | "/pubsub" | "/workers" => {
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
async fn reload(registry: &Arc<Registry>, name: &str) -> Answer {
    let Some(file) = registry.file_of(name) else {
        let error = json!({ "error": format!("no app named {name:?} is mounted") });
        return Answer::Json(StatusCode::NOT_FOUND, error);
    };
    let outcomes = registry.rescan(Rescan::App(name)).await;
    match outcomes.get(&file) {
        Some(Ok(version)) => {
            Answer::Json(StatusCode::OK, json!({ "app": registry.describe(version) }))
        }
        Some(Err(error)) => {
            let body = json!({ "error": error.to_string(), "file": file.display().to_string() });
            Answer::Json(StatusCode::UNPROCESSABLE_ENTITY, body)
        }
        None => {
            let error =
                json!({ "error": format!("{} disappeared during the reload", file.display()) });
            Answer::Json(StatusCode::CONFLICT, error)
        }
    }
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
