//! Outbound HTTP for apps: one pooled hyper client shared by every app.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, TryAcquireError};

use berth_app::ffi::ForeignBody;
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::ClientConfig;

use crate::host::allowlist::{Allowlist, Target};

/// An app's outbound rules: the upstreams it may call, a cap on its requests in flight, and
/// its sockets' limits. Clones share the cap.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    /// Upstreams the app may call, and hosts and ports it may open sockets to.
    pub allowlist: Allowlist,
    /// One permit per outbound request in flight.
    pub permits: Arc<tokio::sync::Semaphore>,
    /// The largest response body the app may read whole into memory.
    pub max_buffered: u64,
    /// Time limit for opening a socket (and its TLS handshake) when the app sets none.
    pub connect_timeout: Duration,
    /// Most sockets one version of the app holds open at once (connects under way count).
    pub max_sockets: usize,
}

/// The socket limits of an [`OutboundPolicy`], defaulting to the server's (5 s, 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// See [`OutboundPolicy::connect_timeout`].
    pub connect_timeout: Duration,
    /// See [`OutboundPolicy::max_sockets`].
    pub max_sockets: usize,
}

impl Default for SocketLimits {
    fn default() -> Self {
        SocketLimits {
            connect_timeout: Duration::from_secs(5),
            max_sockets: 100,
        }
    }
}

impl OutboundPolicy {
    /// Rules allowing `allowlist`, at most `max_concurrency` requests at once, response
    /// bodies of up to `max_buffered` bytes read whole, and `sockets`' limits.
    pub fn new(
        allowlist: Allowlist,
        max_concurrency: usize,
        max_buffered: u64,
        sockets: SocketLimits,
    ) -> Self {
        OutboundPolicy {
            allowlist,
            permits: Arc::new(tokio::sync::Semaphore::new(max_concurrency)),
            max_buffered,
            connect_timeout: sockets.connect_timeout,
            max_sockets: sockets.max_sockets,
        }
    }
}

/// Why an outbound request failed; each becomes a `FETCH_*` tag for the app.
#[derive(Debug, thiserror::Error)]
pub enum FetchFailure {
    /// The request could not be built.
    #[error("{0}")]
    InvalidRequest(String),
    /// No connection could be made.
    #[error("{0}")]
    Connect(String),
    /// The time limit passed before the response head.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The app may not call this upstream; no connection was made.
    #[error("{0}")]
    Denied(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// The shared outbound client. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Shared, so that a request's future holds a pointer rather than a copy of the client.
    client: Arc<Client<HttpsConnector<HttpConnector>, ForeignBody>>,
    default_timeout: Duration,
    /// The TLS settings of apps' sockets: the client's roots, no ALPN. Made once, shared by
    /// every socket (rustls keeps its session cache in it).
    socket_tls: Arc<ClientConfig>,
}

impl Outbound {
    /// A pooled client whose requests time out after `default_timeout` unless the app sets its
    /// own limit.
    pub fn new(default_timeout: Duration, connect_timeout: Duration, tls: ClientConfig) -> Self {
        let socket_tls = crate::tls::without_alpn(&tls);
        let connector = crate::tls::https_connector(tls, connect_timeout);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Outbound {
            client: Arc::new(client),
            default_timeout,
            socket_tls,
        }
    }

    /// The TLS settings of apps' sockets (the client's roots, no ALPN).
    pub fn socket_tls(&self) -> &Arc<ClientConfig> {
        &self.socket_tls
    }

    /// Sends a request for `app` under its `policy` and waits for the response head, within
    /// the request's own time limit. The inbound request's deadline needs no timer here: when it
    /// passes, the host drops the app's future (answering 504), and with it this exchange and
    /// its connection, so no outbound call outlives its request. Returns the response and the
    /// concurrency permit, to be held until its body is done.
    pub fn fetch(
        &self,
        app: &str,
        exchange: Exchange<'_>,
        policy: &OutboundPolicy,
    ) -> impl Future<Output = Exchanged> + Send + 'static {
        use futures_util::future::{Either, FutureExt as _};
        let limit = exchange.timeout.unwrap_or(self.default_timeout);
        let request = match build_request(exchange, &policy.allowlist, app) {
            Ok(request) => request,
            Err(failure) => return Either::Left(std::future::ready(Err(failure))),
        };
        let retired = || FetchFailure::Other("the app is being retired".into());
        // A permit is nearly always free: then the request is sent at once, and the future
        // holds no more than hyper's. Waiting for one is rare, and boxed.
        let exchange = match Arc::clone(&policy.permits).try_acquire_owned() {
            Ok(permit) => Either::Left(send(&self.client, request, permit)),
            Err(TryAcquireError::NoPermits) => {
                let permits = Arc::clone(&policy.permits);
                let client = Arc::clone(&self.client);
                Either::Right(Box::pin(async move {
                    let permit = permits.acquire_owned().await.map_err(|_| retired())?;
                    send(&client, request, permit).await
                }))
            }
            Err(TryAcquireError::Closed) => {
                return Either::Left(std::future::ready(Err(retired())));
            }
        };
        // Waiting for a permit counts inside the time limit. Combinators rather than an async
        // block, which would hold the request and the exchange twice each (as captured and as
        // awaited): the whole future is moved into a box per fetch.
        let timed = tokio::time::timeout(limit, exchange)
            .map(move |timed| timed.unwrap_or(Err(FetchFailure::Timeout(limit))));
        Either::Right(timed)
    }
}

type Exchanged = Result<(Response<Incoming>, OwnedSemaphorePermit), FetchFailure>;

/// Sends `request` and waits for the response head, holding `permit`.
fn send(
    client: &Client<HttpsConnector<HttpConnector>, ForeignBody>,
    request: Request<ForeignBody>,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = Exchanged> + Send + 'static {
    futures_util::FutureExt::map(client.request(request), move |response| match response {
        Ok(response) => Ok((response, permit)),
        Err(err) if err.is_connect() => Err(FetchFailure::Connect(crate::error_chain(&err))),
        Err(err) => Err(FetchFailure::Other(crate::error_chain(&err))),
    })
}

/// An app's outbound request as the host received it.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// Method, still to be validated.
    pub method: &'a [u8],
    /// Absolute URL, still to be validated (its bytes: `Uri` checks each, no separate UTF-8
    /// check needed).
    pub url: &'a [u8],
    /// Headers (already validated).
    pub headers: HeaderMap,
    /// The request body, streamed from the app.
    pub body: ForeignBody,
    /// The app's time limit, if it set one.
    pub timeout: Option<Duration>,
}

/// Checks an app's request, and its URL against the app's allowlist.
fn build_request(
    exchange: Exchange<'_>,
    allowlist: &Allowlist,
    app: &str,
) -> Result<Request<ForeignBody>, FetchFailure> {
    let Exchange {
        method,
        url,
        headers,
        body,
        ..
    } = exchange;
    let invalid = FetchFailure::InvalidRequest;
    let method = Method::from_bytes(method).map_err(|_| {
        let method = String::from_utf8_lossy(method);
        invalid(format!("invalid method {method:?}"))
    })?;
    // For messages only.
    let shown = || String::from_utf8_lossy(url);
    let uri = Uri::try_from(url).map_err(|e| invalid(format!("invalid URL {:?}: {e}", shown())))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(invalid(format!(
                "URL must be absolute http:// or https://: {:?}",
                shown()
            )));
        }
    }
    let Some(target) = Target::of(&uri) else {
        return Err(invalid(format!("URL has no host: {:?}", shown())));
    };
    if !allowlist.allows(&target) {
        let origin = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("?"),
            uri.authority().map_or("?", |a| a.as_str())
        );
        return Err(FetchFailure::Denied(format!(
            "app {app:?} may not call {origin}: it is not in the app's allowed_outbound_hosts"
        )));
    }
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}
