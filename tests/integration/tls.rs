//! TLS both ways: `--tls-cert`/`--tls-key` (or `tls_cert`/`tls_key` in `berth.toml`) make the
//! listener speak HTTPS with ALPN `h2` and `http/1.1`, and `--outbound-ca-file` (or
//! `outbound_ca_file`) adds a CA the outbound client trusts next to the bundled roots.
//!
//! WebSockets work over it too (`wss://`).
//!
//! Every test makes its own CA and a `localhost`/`127.0.0.1` certificate with rcgen ([`Pki`]),
//! and the clients here trust only that CA.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::harness::{Berth, Reply, encode, exchange, try_send};
use crate::upstream::small_body;

/// How long a process that should refuse to start may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`, written as
/// PEM files (`ca.pem`, `cert.pem`, `key.pem`) into a temporary directory of their own.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl Pki {
    pub(crate) fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("self-signed CA");
        let key = KeyPair::generate().expect("server key");
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let cert = CertificateParams::new(names)
            .expect("server cert params")
            .signed_by(&key, &ca)
            .expect("server cert signed by the CA");
        let pki = Pki {
            dir: tempfile::Builder::new()
                .prefix("berth-tls-")
                .tempdir()
                .expect("create a temporary directory"),
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        pki.write("ca.pem", &pki.ca_pem);
        pki.write("cert.pem", &pki.cert_pem);
        pki.write("key.pem", &pki.key_pem);
        pki
    }

    /// Writes `contents` to `name` in the directory; returns its path.
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap_or_else(|err| panic!("write {name}: {err}"));
        path
    }

    /// The path of `name` in the directory, as a string for the command line.
    pub(crate) fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `--tls-cert cert.pem --tls-key key.pem`.
    fn tls_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.arg("cert.pem"),
            "--tls-key".into(),
            self.arg("key.pem"),
        ]
    }

    /// A client config trusting only the test CA, offering `alpn`.
    fn client_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA as a root");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A server config with the test certificate, ALPN `h2` then `http/1.1`.
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert PEM");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("key PEM");
        let mut config = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("cert and key match");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// rustls' `ring` provider (the one crypto provider compiled in; passed explicitly).
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TOML basic string holding `path` (paths under the temporary directory need no escapes
/// beyond what `{:?}` gives).
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

// ---------------------------------------------------------------------------------------------
// An HTTPS client
// ---------------------------------------------------------------------------------------------

/// `GET url` over TLS, trusting `pki`'s CA and offering exactly `alpn` (nothing when empty);
/// hyper speaks HTTP/2 when the server picks `h2`, else HTTP/1.1.
async fn https_get(pki: &Pki, url: &str, alpn: &[&[u8]]) -> Result<Reply, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    // Taken as is: hyper-rustls' builder would rewrite the ALPN list.
    let connector = HttpsConnector::from((http, pki.client_config(alpn)));
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let request = Request::get(url).body(Empty::new()).expect("valid request");
    exchange(&client, request).await
}

/// `https://localhost:PORT{path}` for a berth serving TLS.
fn localhost_url(berth: &Berth, path: &str) -> String {
    assert!(
        berth.is_tls(),
        "berth logged `listening on http://`, not https://; stderr:\n{}",
        berth.stderr()
    );
    format!("https://localhost:{}{path}", berth.addr().port())
}

// ---------------------------------------------------------------------------------------------
// A TLS upstream
// ---------------------------------------------------------------------------------------------

/// An HTTPS server (HTTP/2 or HTTP/1.1 by ALPN) on `127.0.0.1:0` with the test certificate,
/// on its own runtime and thread. `GET /small` answers [`small_body`]; anything else is 404.
/// Stops when dropped.
struct TlsUpstream {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TlsUpstream {
    fn start(pki: &Pki) -> Self {
        let acceptor = TlsAcceptor::from(pki.server_config());
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        std_listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = std_listener.local_addr().expect("local_addr");
        let (stop, mut stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("upstream runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("tokio listener");
                // Bounded: a test makes a handful of connections.
                for _ in 0..64 {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let handshake = acceptor.accept(stream);
                        // A client that does not trust the CA aborts the handshake: fine.
                        let Ok(Ok(tls)) =
                            tokio::time::timeout(Duration::from_secs(10), handshake).await
                        else {
                            return;
                        };
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tls), service_fn(route))
                            .await;
                    });
                }
                let _ = stopped.await;
            });
        });
        TlsUpstream {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `https://localhost:PORT{path}`.
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn route(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/small" => (StatusCode::OK, small_body()),
        _ => (StatusCode::NOT_FOUND, b"not found\n".to_vec()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Inbound: HTTPS on the listener
// ---------------------------------------------------------------------------------------------

/// GET /hello over HTTP/1.1 (ALPN `http/1.1`), over HTTP/2 (ALPN `h2`, `http/1.1`: the server
/// prefers h2) and without ALPN (HTTP/1.1).
async fn assert_serves_hello_over_https(pki: &Pki, berth: &Berth) {
    let url = localhost_url(berth, "/hello");
    let cases: [(&str, &[&[u8]], Version); 3] = [
        ("ALPN http/1.1", &[b"http/1.1"], Version::HTTP_11),
        ("ALPN h2, http/1.1", &[b"h2", b"http/1.1"], Version::HTTP_2),
        ("no ALPN", &[], Version::HTTP_11),
    ];
    for (what, alpn, version) in cases {
        let reply = https_get(pki, &url, alpn)
            .await
            .unwrap_or_else(|err| panic!("GET {url} ({what}): {err}"));
        assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
        assert_eq!(reply.version, version, "{what}");
        assert_eq!(reply.text(), "Hello, world!\n", "{what}");
    }
}

#[tokio::test]
async fn tls_flags_serve_https_with_http1_and_h2() {
    let pki = Pki::new();
    let args = pki.tls_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let berth = Berth::builder().app("hello").args(&args).start();
    berth
        .wait_for_log(&["listening on https://"], Duration::from_secs(1))
        .await;
    assert_serves_hello_over_https(&pki, &berth).await;
    // By IP address too: the certificate names 127.0.0.1.
    let reply = https_get(&pki, &berth.url("/hello"), &[b"h2"])
        .await
        .unwrap_or_else(|err| panic!("GET {}: {err}", berth.url("/hello")));
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.text(), "Hello, world!\n");
}

#[tokio::test]
async fn websockets_over_tls() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;

    let pki = Pki::new();
    let args = pki.tls_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let berth = Berth::builder().app("ws_echo").args(&args).start();
    let url = localhost_url(&berth, "/ws-echo").replacen("https://", "wss://", 1);
    let tcp = tokio::net::TcpStream::connect(berth.addr())
        .await
        .expect("connected");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(pki.client_config(&[b"http/1.1"])));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (mut socket, response) = tokio_tungstenite::client_async(url.as_str(), tls)
        .await
        .unwrap_or_else(|err| panic!("WebSocket handshake with {url}: {err}"));
    assert_eq!(response.status(), 101);
    socket.send(Message::text("secret")).await.expect("sent");
    let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next()).await;
    assert!(
        matches!(&echoed, Ok(Some(Ok(Message::Text(text)))) if text.as_str() == "secret"),
        "{echoed:?}"
    );
}

#[tokio::test]
async fn tls_keys_in_the_config_file_serve_https() {
    let pki = Pki::new();
    let toml = format!(
        "tls_cert = {}\ntls_key = {}\n",
        toml_path(&pki.path("cert.pem")),
        toml_path(&pki.path("key.pem"))
    );
    let berth = Berth::builder().app("hello").config(&toml).start();
    assert_serves_hello_over_https(&pki, &berth).await;
}

#[tokio::test]
async fn the_tls_listener_does_not_answer_cleartext_http() {
    let pki = Pki::new();
    let args = pki.tls_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let berth = Berth::builder().app("hello").args(&args).start();
    let cleartext = format!("http://{}/hello", berth.addr());
    let result = try_send(crate::harness::Req::get(&cleartext)).await;
    assert!(
        result.is_err(),
        "a cleartext request to the TLS listener was answered: {result:?}"
    );
    // And the server is still fine afterwards.
    let reply = https_get(&pki, &localhost_url(&berth, "/hello"), &[b"http/1.1"])
        .await
        .expect("HTTPS after a cleartext attempt");
    assert_eq!(reply.text(), "Hello, world!\n");
}

/// Starts berth with `args`, expects it to exit with status 2 and to name `file` on stderr.
fn assert_refuses_to_start(args: &[String], file: &Path) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut berth = Berth::builder().app("hello").args(&args).spawn();
    let status = berth.wait_exit_blocking(EXIT_TIMEOUT);
    let stderr = berth.stderr();
    assert_eq!(
        status.code(),
        Some(2),
        "exit status {status}; stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("unexpected argument"),
        "berth does not know the flags:\n{stderr}"
    );
    let name = file.display().to_string();
    assert!(
        stderr.contains(&name),
        "stderr does not name {name}:\n{stderr}"
    );
    stderr
}

#[test]
fn a_missing_key_file_exits_with_2_and_names_it() {
    let pki = Pki::new();
    let missing = pki.path("no-such-key.pem");
    let args = [
        "--tls-cert".into(),
        pki.arg("cert.pem"),
        "--tls-key".into(),
        missing.display().to_string(),
    ];
    let stderr = assert_refuses_to_start(&args, &missing);
    assert!(
        stderr.contains("No such file"),
        "stderr does not say why:\n{stderr}"
    );
}

#[test]
fn a_key_file_without_a_key_exits_with_2_and_names_it() {
    let pki = Pki::new();
    let empty = pki.write("empty.pem", "");
    let args = [
        "--tls-cert".into(),
        pki.arg("cert.pem"),
        "--tls-key".into(),
        empty.display().to_string(),
    ];
    let stderr = assert_refuses_to_start(&args, &empty);
    assert!(
        stderr.contains("no private key found"),
        "stderr does not say why:\n{stderr}"
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_exits_with_2() {
    let pki = Pki::new();
    let other_key = KeyPair::generate().expect("key");
    let other = pki.write("other-key.pem", &other_key.serialize_pem());
    let args = [
        "--tls-cert".into(),
        pki.arg("cert.pem"),
        "--tls-key".into(),
        other.display().to_string(),
    ];
    assert_refuses_to_start(&args, &other);
}

// ---------------------------------------------------------------------------------------------
// Outbound: HTTPS upstreams and the extra CA
// ---------------------------------------------------------------------------------------------

/// `GET /fetch?url=UPSTREAM/small` on a cleartext berth.
async fn fetch_small(berth: &Berth, upstream: &TlsUpstream) -> Reply {
    let url = format!("/fetch?url={}", encode(&upstream.url("/small")));
    let url = berth.url(&url);
    try_send(crate::harness::Req::get(&url))
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"))
}

#[tokio::test]
async fn an_app_fetches_from_an_https_upstream_signed_by_the_extra_ca() {
    let pki = Pki::new();
    let upstream = TlsUpstream::start(&pki);
    let berth = Berth::builder()
        .app("fetch")
        .args(&["--outbound-ca-file", &pki.arg("ca.pem")])
        .args(&["--allow-outbound", "*"])
        .start();
    let reply = fetch_small(&berth, &upstream).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(&reply.body[..], &small_body()[..20]);
}

#[tokio::test]
async fn the_extra_ca_can_come_from_the_config_file() {
    let pki = Pki::new();
    let upstream = TlsUpstream::start(&pki);
    let toml = format!("outbound_ca_file = {}\n", toml_path(&pki.path("ca.pem")));
    let berth = Berth::builder()
        .app("fetch")
        .config(&toml)
        .args(&["--allow-outbound", "*"])
        .start();
    let reply = fetch_small(&berth, &upstream).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(&reply.body[..], &small_body()[..20]);
}

#[tokio::test]
async fn without_the_extra_ca_the_upstream_certificate_is_refused() {
    let pki = Pki::new();
    let upstream = TlsUpstream::start(&pki);
    let berth = Berth::builder()
        .app("fetch")
        .args(&["--allow-outbound", "*"])
        .start();
    let reply = fetch_small(&berth, &upstream).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    let text = reply.text().to_lowercase();
    assert!(
        text.contains("certificate")
            || text.contains("unknownissuer")
            || text.contains("unknown issuer"),
        "the 502 does not say the certificate was refused: {text:?}"
    );
}

#[test]
fn a_missing_outbound_ca_file_exits_with_2_and_names_it() {
    let pki = Pki::new();
    let missing = pki.path("no-such-ca.pem");
    let args = ["--outbound-ca-file".into(), missing.display().to_string()];
    assert_refuses_to_start(&args, &missing);
}
