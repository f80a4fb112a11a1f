//! TLS with rustls, both ways: terminating HTTPS on the listener (`--tls-cert`, `--tls-key`) and
//! the outbound client's HTTPS (bundled Mozilla roots plus an optional extra CA file).
//!
//! Everything here uses rustls' `ring` crypto provider, passed explicitly, so no process-wide
//! default provider has to be installed (and the aws-lc-rs provider, which needs cmake to
//! build, is never compiled in).
//!
//! * [`server_config`]: a certificate chain and private key from PEM files, ALPN `h2` and
//!   `http/1.1`; wrap it in a [`tokio_rustls::TlsAcceptor`] and call [`accept`] per connection;
//! * [`client_config`] and [`https_connector`]: the outbound side, for hyper-util's client;
//!   [`without_alpn`]: the same roots for apps' TLS sockets.
//!
//! Every [`TlsError`] names the file it is about, so `berth` can print it as it is.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The ALPN protocol id of HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// The ALPN protocol id of HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a TLS configuration could not be built, or a handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A PEM file is malformed (bad base64, a section without its end line, ...).
    #[error("invalid PEM in {}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        source: pem::Error,
    },
    /// A certificate file holds no `CERTIFICATE` section.
    #[error("no certificate found in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no PKCS#8, PKCS#1 or SEC1 private key section.
    #[error("no private key found in {} (expected PEM PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificate chain and key: the key does not match the certificate,
    /// or is of a kind the crypto provider does not support.
    #[error(
        "cannot use the certificate in {} with the private key in {}: {source}",
        cert.display(),
        key.display()
    )]
    CertifiedKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// A certificate in the extra CA file cannot be used as a trust anchor.
    #[error("invalid CA certificate in {}: {source}", path.display())]
    CaCertificate {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// The crypto provider supports none of the protocol versions asked for (not expected with
    /// the `ring` provider and the default versions).
    #[error("cannot configure TLS: {0}")]
    Config(rustls::Error),
    /// The TLS handshake with a client failed (not TLS, no common protocol version or cipher
    /// suite, the connection closed, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The client did not finish the TLS handshake in time.
    #[error("TLS handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
}

/// The `ring` crypto provider, passed explicitly to every config built here.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a whole PEM file.
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every `CERTIFICATE` section of the PEM file at `path`, in order; at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in the PEM file at `path`.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// The listener's TLS configuration: the certificate chain in `cert` (PEM, leaf first) and the
/// private key in `key` (PEM: PKCS#8, PKCS#1 or SEC1), TLS 1.2 and 1.3, ALPN `h2` then
/// `http/1.1`, no client certificates.
///
/// Fails when either file cannot be read or holds no certificate / key, or when the key does
/// not belong to the first certificate; the error names the file.
///
/// ```no_run
/// # fn example() -> Result<(), berth_server::tls::TlsError> {
/// use std::path::Path;
/// let config = berth_server::tls::server_config(Path::new("cert.pem"), Path::new("key.pem"))?;
/// let acceptor = tokio_rustls::TlsAcceptor::from(config);
/// # Ok(()) }
/// ```
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let private_key = private_key(key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|source| TlsError::CertifiedKey {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The outbound client's TLS configuration: the bundled Mozilla root certificates
/// (`webpki-roots`) plus, when given, every certificate in the PEM file `extra_ca`; ALPN `h2`
/// then `http/1.1`; no client certificate.
///
/// Fails when `extra_ca` cannot be read, holds no certificate, or holds one that cannot be a
/// trust anchor; the error names the file.
pub fn client_config(extra_ca: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        for cert in certificates(path)? {
            roots.add(cert).map_err(|source| TlsError::CaCertificate {
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(config)
}

/// `client` without ALPN, for apps' raw TLS sockets: they speak PostgreSQL or Redis, not
/// HTTP, and a server that checks ALPN must not be told otherwise.
pub fn without_alpn(client: &ClientConfig) -> Arc<ClientConfig> {
    let mut config = client.clone();
    config.alpn_protocols.clear();
    Arc::new(config)
}

/// A connector for hyper-util's client that speaks plain HTTP for `http://` URLs and TLS with
/// `client` for `https://` URLs (HTTP/2 when the server agrees through ALPN, else HTTP/1.1).
///
/// The TCP connections have `TCP_NODELAY` set and give up after `connect_timeout`. The ALPN
/// list of `client` is replaced by `h2`, `http/1.1` (hyper-rustls sets it to match the
/// protocols the connector enables).
pub fn https_connector(
    mut client: ClientConfig,
    connect_timeout: Duration,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    // hyper-rustls panics on a preset ALPN list; it writes its own from the enabled protocols.
    client.alpn_protocols.clear();
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(client)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http)
}

/// Runs the server side of the TLS handshake on an accepted connection, giving up after
/// `handshake_timeout` (a client that connects and sends nothing must not hold a task and a
/// socket forever).
///
/// Returns the TLS stream and whether the client and server agreed on HTTP/2 through ALPN
/// (serve the connection with HTTP/2 if so, else with HTTP/1.1).
pub async fn accept(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    handshake_timeout: Duration,
) -> Result<(TlsStream<TcpStream>, bool), TlsError> {
    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
        Err(_) => Err(TlsError::HandshakeTimeout(handshake_timeout)),
        Ok(Err(err)) => Err(TlsError::Handshake(err)),
        Ok(Ok(tls)) => {
            let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
            Ok((tls, h2))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    /// A directory removed when dropped (no tempfile dependency in this crate).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "berth-tls-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        /// Writes `contents` to `name` in the directory and returns its path.
        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A CA and a `localhost`/`127.0.0.1` server certificate it signed, as PEM:
    /// `(ca cert, server cert, server key)`.
    fn ca_and_server_cert() -> (String, String, String) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    fn message(err: TlsError) -> String {
        err.to_string()
    }

    #[test]
    fn a_self_signed_certificate_loads_with_alpn_h2_then_http1() {
        let dir = TempDir::new("self-signed");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.write("cert.pem", &generated.cert.pem());
        let key = dir.write("key.pem", &generated.signing_key.serialize_pem());
        let config = server_config(&cert, &key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn pkcs1_and_sec1_keys_load() {
        // PKCS#8 is what rcgen writes (above); these fixed keys are the other two encodings.
        let testdata = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/tls");
        for (cert, key) in [
            ("rsa-cert.pem", "rsa-pkcs1-key.pem"),
            ("ec-cert.pem", "ec-sec1-key.pem"),
        ] {
            server_config(&testdata.join(cert), &testdata.join(key))
                .unwrap_or_else(|err| panic!("{key}: {err}"));
        }
    }

    #[test]
    fn missing_files_are_named() {
        let dir = TempDir::new("missing");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.write("cert.pem", &generated.cert.pem());
        let key = dir.write("key.pem", &generated.signing_key.serialize_pem());
        let missing = dir.0.join("missing.pem");

        let err = message(server_config(&missing, &key).unwrap_err());
        assert!(
            err.starts_with(&format!("cannot read {}: ", missing.display())),
            "{err}"
        );
        assert!(err.contains("No such file"), "{err}");
        let err = message(server_config(&cert, &missing).unwrap_err());
        assert!(
            err.starts_with(&format!("cannot read {}: ", missing.display())),
            "{err}"
        );
        let err = message(client_config(Some(&missing)).unwrap_err());
        assert!(
            err.starts_with(&format!("cannot read {}: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn empty_files_are_named() {
        let dir = TempDir::new("empty");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.write("cert.pem", &generated.cert.pem());
        let key = dir.write("key.pem", &generated.signing_key.serialize_pem());
        let empty = dir.write("empty.pem", "");

        let err = message(server_config(&empty, &key).unwrap_err());
        assert_eq!(err, format!("no certificate found in {}", empty.display()));
        let err = message(server_config(&cert, &empty).unwrap_err());
        assert!(
            err.starts_with(&format!("no private key found in {}", empty.display())),
            "{err}"
        );
        let err = message(client_config(Some(&empty)).unwrap_err());
        assert_eq!(err, format!("no certificate found in {}", empty.display()));
    }

    #[test]
    fn swapped_files_are_named() {
        // The key file given as the certificate and the other way round: each file holds PEM,
        // just not what is asked of it.
        let dir = TempDir::new("swapped");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.write("cert.pem", &generated.cert.pem());
        let key = dir.write("key.pem", &generated.signing_key.serialize_pem());
        let err = message(server_config(&key, &cert).unwrap_err());
        assert_eq!(err, format!("no certificate found in {}", key.display()));
    }

    #[test]
    fn malformed_pem_is_named() {
        let dir = TempDir::new("malformed");
        let broken = dir.write(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        );
        let err = message(client_config(Some(&broken)).unwrap_err());
        assert!(
            err.starts_with(&format!("invalid PEM in {}: ", broken.display())),
            "{err}"
        );
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let dir = TempDir::new("mismatch");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.write("cert.pem", &generated.cert.pem());
        let other = KeyPair::generate().unwrap();
        let key = dir.write("key.pem", &other.serialize_pem());
        let err = server_config(&cert, &key).unwrap_err();
        assert!(
            matches!(
                &err,
                TlsError::CertifiedKey {
                    source: rustls::Error::InconsistentKeys(_),
                    ..
                }
            ),
            "{err:?}"
        );
        let err = message(err);
        assert!(err.contains(&cert.display().to_string()), "{err}");
        assert!(err.contains(&key.display().to_string()), "{err}");
    }

    #[test]
    fn client_config_works_with_and_without_an_extra_ca() {
        let dir = TempDir::new("client");
        let (ca, _, _) = ca_and_server_cert();
        let (other_ca, _, _) = ca_and_server_cert();
        let bundle = dir.write("ca.pem", &format!("{ca}{other_ca}"));

        let bundled = client_config(None).unwrap();
        assert_eq!(
            bundled.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        client_config(Some(&bundle)).unwrap();
        // And the connector takes either (it rewrites the ALPN list itself).
        let _ = https_connector(bundled, Duration::from_secs(1));
    }

    /// Serves one TLS connection with `server_config(cert, key)` and connects to it with a
    /// client trusting `ca` and offering `alpn`; returns what `accept` said and the client's
    /// negotiated protocol.
    async fn handshake(dir: &TempDir, alpn: &[&[u8]]) -> (bool, Option<Vec<u8>>) {
        let (ca, cert, key) = ca_and_server_cert();
        let ca = dir.write("ca.pem", &ca);
        let cert = dir.write("cert.pem", &cert);
        let key = dir.write("key.pem", &key);
        let acceptor = TlsAcceptor::from(server_config(&cert, &key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (mut tls, h2) = accept(&acceptor, stream, Duration::from_secs(5))
                .await
                .unwrap();
            tls.write_all(b"hi").await.unwrap();
            tls.shutdown().await.unwrap();
            h2
        });

        let mut client = client_config(Some(&ca)).unwrap();
        client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = TlsConnector::from(std::sync::Arc::new(client));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let mut text = String::new();
        tls.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "hi");
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        (server.await.unwrap(), negotiated)
    }

    #[tokio::test]
    async fn accept_reports_h2_when_alpn_agrees_on_it() {
        let dir = TempDir::new("accept-h2");
        let (h2, negotiated) = handshake(&dir, &[b"h2", b"http/1.1"]).await;
        assert!(h2);
        assert_eq!(negotiated.as_deref(), Some(&b"h2"[..]));
    }

    #[tokio::test]
    async fn accept_reports_http1_when_the_client_offers_only_http1() {
        let dir = TempDir::new("accept-http1");
        let (h2, negotiated) = handshake(&dir, &[b"http/1.1"]).await;
        assert!(!h2);
        assert_eq!(negotiated.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test]
    async fn accept_gives_up_on_a_silent_client() {
        let dir = TempDir::new("accept-silent");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.write("cert.pem", &generated.cert.pem());
        let key = dir.write("key.pem", &generated.signing_key.serialize_pem());
        let acceptor = TlsAcceptor::from(server_config(&cert, &key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let err = accept(&acceptor, stream, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, TlsError::HandshakeTimeout(_)), "{err:?}");
    }

    #[tokio::test]
    async fn accept_reports_a_client_that_is_not_tls() {
        let dir = TempDir::new("accept-cleartext");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.write("cert.pem", &generated.cert.pem());
        let key = dir.write("key.pem", &generated.signing_key.serialize_pem());
        let acceptor = TlsAcceptor::from(server_config(&cert, &key).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let err = accept(&acceptor, stream, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, TlsError::Handshake(_)), "{err:?}");
        assert!(
            message(err).starts_with("TLS handshake failed: "),
            "handshake error message"
        );
    }

    #[test]
    fn paths_in_messages_are_as_given() {
        let err = message(server_config(Path::new("cert.pem"), Path::new("key.pem")).unwrap_err());
        assert!(err.starts_with("cannot read cert.pem: "), "{err}");
    }
}
