//! `berth_server::embed`: sample apps loaded and called without the HTTP server.
//!
//! The sample cdylibs are built with `cargo build --workspace` on first use (the same command as
//! the integration harness, so the two never rebuild each other's artifacts; a no-op when they
//! are fresh). With `BERTH_TESTS_NO_BUILD=1` the build is skipped and they must already exist.

use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use berth_server::apps::LoadError;
use berth_server::embed::{CallError, LoadedApp};
use berth_server::plugin::OpenError;
use berth_server::{AppConfig, Config};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};

/// `<target dir>/debug`, honouring `CARGO_TARGET_DIR` (relative to the workspace root).
fn profile_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("server/ has a parent directory");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    target.join("debug")
}

/// The debug cdylib of sample app `name`, built once per test process.
fn cdylib(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        if std::env::var_os("BERTH_TESTS_NO_BUILD").is_some() {
            return Ok(());
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let output = Command::new(env!("CARGO"))
            .args(["build", "--workspace"])
            .current_dir(root)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run `cargo build --workspace`: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`cargo build --workspace` failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(message) = built {
        panic!("{message}");
    }
    let path = profile_dir().join(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        path.is_file(),
        "{} does not exist: run `cargo build --workspace`",
        path.display()
    );
    path
}

#[tokio::test]
async fn hello_answers_through_the_boundary() {
    let app = LoadedApp::load(&cdylib("hello")).expect("hello loads");
    assert_eq!((app.name(), app.version()), ("hello", "0.1.0"));
    app.init().await.expect("no init hook is fine");
    let uri = "/".parse().expect("uri");
    for _ in 0..3 {
        let (status, headers, body) = app
            .call(&Method::GET, &uri, &HeaderMap::new(), Bytes::new())
            .await
            .expect("hello answers");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(body, "Hello, world!\n");
    }
    app.shutdown().await.expect("no shutdown hook is fine");
}

#[tokio::test]
async fn echo_sees_the_request_as_sent() {
    let app = LoadedApp::load(&cdylib("echo")).expect("echo loads");
    let mut headers = HeaderMap::new();
    headers.append("x-a", HeaderValue::from_static("1"));
    headers.append("x-a", HeaderValue::from_static("2"));
    let uri = "/a/b?x=1".parse().expect("uri");
    let (status, _, body) = app
        .call(&Method::POST, &uri, &headers, Bytes::from_static(b"hi"))
        .await
        .expect("echo answers");
    assert_eq!(status, StatusCode::OK);
    let echoed: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["prefix"], "");
    assert_eq!(echoed["path"], "/a/b");
    assert_eq!(echoed["query"], "x=1");
    assert_eq!(
        echoed["headers"],
        serde_json::json!([["x-a", "1"], ["x-a", "2"]])
    );
    assert_eq!(echoed["body"], "hi");
    assert_eq!(echoed["version"], "HTTP/1.1");
}

#[tokio::test]
async fn greeter_gets_its_settings_in_init() {
    let mut config = Config::new(".", "127.0.0.1:0".parse().expect("address"));
    let mut greeter = AppConfig::default();
    greeter.settings.insert("greeting".into(), "Ahoy".into());
    config.apps.insert("greeter".into(), greeter);
    let app = LoadedApp::load_with(&cdylib("greeter"), &config).expect("greeter loads");
    app.init().await.expect("init succeeds");
    let uri = "/?name=Ada".parse().expect("uri");
    let (_, _, body) = app
        .call(&Method::GET, &uri, &HeaderMap::new(), Bytes::new())
        .await
        .expect("greeter answers");
    assert_eq!(body, "Ahoy, Ada!\n");
    app.shutdown().await.expect("shutdown succeeds");
}

#[test]
fn refuses_what_is_not_an_app_and_calls_outside_a_runtime() {
    let text = std::env::temp_dir().join(format!("berth-embed-{}.so", std::process::id()));
    std::fs::write(&text, "not a library").expect("write");
    let refused = LoadedApp::load(&text).expect_err("a text file is refused");
    let _ = std::fs::remove_file(&text);
    assert!(
        matches!(refused, LoadError::Open(OpenError::NotALibrary(_))),
        "{refused}"
    );

    let app = LoadedApp::load(&cdylib("hello")).expect("hello loads");
    let (uri, headers) = ("/".parse().expect("uri"), HeaderMap::new());
    let call = pin!(app.call(&Method::GET, &uri, &headers, Bytes::new()));
    let polled = call.poll(&mut Context::from_waker(Waker::noop()));
    assert!(
        matches!(polled, Poll::Ready(Err(CallError::NoRuntime))),
        "{polled:?}"
    );
}
