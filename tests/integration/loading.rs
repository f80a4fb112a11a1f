//! The apps directory: what gets mounted where, what `GET /` lists, and how bad files are
//! reported without stopping the good ones.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Berth, Proto, Req, get, send};

/// `GET /` and the `apps` array of its JSON body.
async fn list_apps(berth: &Berth) -> Vec<Value> {
    let reply = get(&berth.url("/")).await;
    assert_eq!(reply.status, 200, "GET /: {}", reply.text());
    assert!(
        reply.content_type().starts_with("application/json"),
        "GET / content-type {:?}",
        reply.content_type()
    );
    let json = reply.json();
    json["apps"]
        .as_array()
        .unwrap_or_else(|| panic!("GET / has no `apps` array: {json}"))
        .clone()
}

/// The `name` of each listed app, sorted.
fn names(apps: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = apps
        .iter()
        .map(|app| app["name"].as_str().unwrap_or("<no name>").to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn index_lists_every_mounted_app() {
    let berth = Berth::builder()
        .app_as("hello", "hello.so")
        .app_as("echo", "echo-app.so")
        .start();
    let apps = list_apps(&berth).await;
    assert_eq!(names(&apps), ["echo", "hello"], "{apps:?}");
    for (name, file) in [("hello", "hello.so"), ("echo", "echo-app.so")] {
        let app = apps.iter().find(|app| app["name"] == name).expect("listed");
        assert_eq!(app["version"], "0.1.0", "{app}");
        assert_eq!(app["mount"], format!("/{name}"), "{app}");
        let listed_file = app["file"].as_str().unwrap_or_default();
        assert!(
            listed_file.ends_with(file),
            "`file` of {name} should name {file}: {app}"
        );
    }
}

#[tokio::test]
async fn empty_apps_dir_serves_an_empty_index() {
    let berth = Berth::builder().start();
    assert!(list_apps(&berth).await.is_empty());
    assert_eq!(get(&berth.url("/hello")).await.status, 404);
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let berth = Berth::with_apps(&["hello"]);
    for path in ["/nope", "/nope/deeper?x=1", "/hellox", "/Hello"] {
        let reply = get(&berth.url(path)).await;
        assert_eq!(reply.status, 404, "GET {path}: {}", reply.text());
    }
    // The app itself is still there.
    assert_eq!(get(&berth.url("/hello")).await.status, 200);
}

/// The stderr line that mentions `file` and contains every one of `reasons`.
async fn rejection_line(berth: &Berth, file: &str, reasons: &[&str]) -> String {
    let mut needles = vec![file];
    needles.extend_from_slice(reasons);
    berth.wait_for_log(&needles, Duration::from_secs(5)).await
}

#[tokio::test]
async fn bad_files_are_reported_and_the_rest_still_serve() {
    let berth = Berth::builder()
        .app_as("hello", "a-hello.so")
        .app_as("hello", "b-hello.so")
        .app("echo")
        .app_as("fixture_no_symbol", "no-symbol.so")
        .app_as("fixture_bad_abi", "bad-abi.so")
        .file("x.so", b"this is a text file, not a shared library\n")
        .start();

    // Each rejected file is named in one log line together with the reason.
    rejection_line(&berth, "x.so", &["not a loadable library"]).await;
    rejection_line(&berth, "no-symbol.so", &["berth_app_descriptor"]).await;
    let abi = rejection_line(&berth, "bad-abi.so", &["ABI major version"]).await;
    assert!(
        abi.contains('1') && abi.contains("99"),
        "the ABI rejection should name both majors (1 and 99): {abi}"
    );

    // One copy of `hello` is served; the other is refused as a duplicate, and that log line
    // names the refused file.
    let apps = list_apps(&berth).await;
    assert_eq!(names(&apps), ["echo", "hello"], "{apps:?}");
    let hello = apps
        .iter()
        .find(|app| app["name"] == "hello")
        .expect("listed");
    let served = hello["file"].as_str().unwrap_or_default();
    let refused = match (
        served.ends_with("a-hello.so"),
        served.ends_with("b-hello.so"),
    ) {
        (true, false) => "b-hello.so",
        (false, true) => "a-hello.so",
        _ => panic!("hello should be served from a-hello.so or b-hello.so: {hello}"),
    };
    let duplicate = rejection_line(&berth, refused, &["duplicate app name"]).await;
    assert!(
        duplicate.contains("hello"),
        "the duplicate line should name the app: {duplicate}"
    );

    let reply = get(&berth.url("/hello")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "Hello, world!\n")
    );
    let reply = send(Req {
        method: hyper::Method::POST,
        body: b"still here",
        ..Req::get(&berth.url("/echo"))
    })
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body"], "still here");
}

#[tokio::test]
async fn index_over_http2() {
    let berth = Berth::with_apps(&["hello"]);
    let reply = send(Req::get(&berth.url("/")).proto(Proto::Http2)).await;
    assert_eq!(reply.version, hyper::Version::HTTP_2);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["apps"][0]["mount"], "/hello");
}

/// The versioning rule's promise: a minor bump only appends, so a plugin built against ABI 1.0
/// (a shorter descriptor, 1.0's layout fingerprint, no lifecycle hooks) loads and serves in a
/// 1.1 host, and the admin API reports its ABI.
#[tokio::test]
async fn a_plugin_built_for_an_older_minor_abi_loads_and_serves() {
    let berth = Berth::with_apps(&["fixture_abi_1_0"]);
    let reply = get(&berth.url("/legacy/anything")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "legacy plugin on ABI 1.0\n")
    );
    let status = get(&berth.admin_url("/apps")).await.json();
    let app = &status["apps"][0];
    assert_eq!(
        (app["name"].as_str(), app["abi"].as_str()),
        (Some("legacy"), Some("1.0")),
        "{status}"
    );
}
