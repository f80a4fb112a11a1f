//! Outbound HTTP for apps: one pooled hyper client shared by every app.

use std::time::Duration;

use berth_app::ffi::ForeignBody;
use http::{HeaderMap, Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

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
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// The shared outbound client. Cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct Outbound {
    client: Client<HttpConnector, ForeignBody>,
    default_timeout: Duration,
}

impl Outbound {
    /// A pooled client whose requests time out after `default_timeout` unless the app sets its
    /// own limit.
    pub fn new(default_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(default_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Outbound {
            client,
            default_timeout,
        }
    }

    /// Sends a request and waits for the response head, within the time limit.
    pub fn fetch(
        &self,
        exchange: Exchange<'_>,
    ) -> impl Future<Output = Result<Response<Incoming>, FetchFailure>> + Send + 'static {
        let limit = exchange.timeout.unwrap_or(self.default_timeout);
        let request = build_request(exchange);
        let client = self.client.clone();
        async move {
            let request = request?;
            match tokio::time::timeout(limit, client.request(request)).await {
                Err(_) => Err(FetchFailure::Timeout(limit)),
                Ok(Ok(response)) => Ok(response),
                Ok(Err(err)) if err.is_connect() => {
                    Err(FetchFailure::Connect(crate::error_chain(&err)))
                }
                Ok(Err(err)) => Err(FetchFailure::Other(crate::error_chain(&err))),
            }
        }
    }
}

/// An app's outbound request as the host received it.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// Method, still to be validated.
    pub method: &'a str,
    /// Absolute URL, still to be validated.
    pub url: &'a str,
    /// Headers (already validated).
    pub headers: HeaderMap,
    /// The request body, streamed from the app.
    pub body: ForeignBody,
    /// The app's time limit, if it set one.
    pub timeout: Option<Duration>,
}

fn build_request(exchange: Exchange<'_>) -> Result<Request<ForeignBody>, FetchFailure> {
    let Exchange {
        method,
        url,
        headers,
        body,
        ..
    } = exchange;
    let invalid = FetchFailure::InvalidRequest;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| invalid(format!("invalid method {method:?}")))?;
    let uri: Uri = url
        .parse()
        .map_err(|e| invalid(format!("invalid URL {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(format!(
                "HTTPS is not supported yet for outbound requests: {url}"
            )));
        }
        _ => return Err(invalid(format!("URL must be absolute http://: {url:?}"))),
    }
    if uri.host().is_none() {
        return Err(invalid(format!("URL has no host: {url:?}")));
    }
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Ok(request)
}
