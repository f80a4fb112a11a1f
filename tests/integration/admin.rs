//! The admin listener: `/healthz`, `/readyz`, `/apps` and `POST /apps/<name>/reload`, on its own
//! port, and `--admin-listen off`.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    Berth, Builds, Replace, SWAP_SO, admin_apps, app_entry, get, post, replace, replace_with_bytes,
    wait_for_apps,
};

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn health_and_readiness() {
    let berth = Berth::with_apps(&["hello"]);
    let healthz = get(&berth.admin_url("/healthz")).await;
    assert_eq!(healthz.status, 200, "{}", healthz.text());
    let readyz = get(&berth.admin_url("/readyz")).await;
    assert_eq!(readyz.status, 200, "{}", readyz.text());
    // The status endpoints are not on the public port.
    assert_eq!(get(&berth.url("/healthz")).await.status, 404);
    assert_eq!(get(&berth.url("/apps")).await.status, 404);
}

#[tokio::test]
async fn apps_describes_every_app() {
    let berth = Berth::builder()
        .app_as("fixture_testkit", "testkit.so")
        .app_as("fixture_swap_a", SWAP_SO)
        .start();
    for path in ["/testkit/ok", "/testkit/ok", "/testkit/panic"] {
        get(&berth.url(path)).await;
    }
    let reply = get(&berth.admin_url("/apps")).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.content_type().starts_with("application/json"),
        "content-type {:?}",
        reply.content_type()
    );
    // The counters are settled once the server has finished with the last response (which can
    // be a moment after the client has read it).
    let apps = wait_for_apps(&berth, "testkit with 3 requests done", TIMEOUT, |apps| {
        app_entry(apps, "testkit")
            .is_some_and(|testkit| testkit["requests"] == 3 && testkit["in_flight"] == 0)
    })
    .await;
    eprintln!("admin /apps: {apps:#}");
    assert_eq!(apps["apps"].as_array().map(Vec::len), Some(2), "{apps:#}");
    assert_eq!(apps["failed"], Value::Array(vec![]), "{apps:#}");
    assert_eq!(apps["retiring"], Value::Array(vec![]), "{apps:#}");
    assert_eq!(apps["retired"], 0, "{apps:#}");

    let testkit = app_entry(&apps, "testkit").expect("testkit is listed");
    for field in [
        "name",
        "version",
        "mount",
        "file",
        "file_hash",
        "loaded_at",
        "requests",
        "errors",
        "in_flight",
        "last_error",
        "id",
    ] {
        assert!(
            testkit.get(field).is_some(),
            "testkit has no `{field}`: {testkit:#}"
        );
    }
    assert_eq!(testkit["version"], "0.1.0");
    assert_eq!(testkit["mount"], "/testkit");
    assert!(
        testkit["file"]
            .as_str()
            .is_some_and(|file| file.ends_with("testkit.so")),
        "{testkit}"
    );
    assert!(
        testkit["file_hash"]
            .as_str()
            .is_some_and(|hash| hash.len() >= 16),
        "{testkit}"
    );
    assert!(!testkit["loaded_at"].is_null(), "{testkit}");
    assert_eq!(testkit["requests"], 3, "{testkit}");
    assert_eq!(testkit["errors"], 1, "{testkit}");
    assert_eq!(testkit["in_flight"], 0, "{testkit}");
    assert_eq!(testkit["last_error"], Value::Null, "{testkit}");

    let swap = app_entry(&apps, "swap").expect("swap is listed");
    assert_eq!(swap["version"], "1.0.0");
    assert_eq!(swap["requests"], 0, "{swap}");
    assert_ne!(swap["id"], testkit["id"]);
    assert_ne!(swap["file_hash"], testkit["file_hash"]);
}

#[tokio::test]
async fn reload_loads_a_new_copy_and_reports_failures() {
    let builds = Builds::new();
    let berth = Berth::builder()
        .app_as("fixture_swap_a", SWAP_SO)
        .args(&["--no-watch"])
        .start();
    let before = admin_apps(&berth).await;
    let old = app_entry(&before, "swap").expect("swap is listed").clone();

    // Unchanged file: still a new version, with the same hash.
    let reply = post(&berth.admin_url("/apps/swap/reload")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    let app = &json["app"];
    assert_eq!(app["name"], "swap", "{json}");
    assert_eq!(app["version"], "1.0.0", "{json}");
    assert_ne!(app["id"], old["id"], "a reload is a new version: {json}");
    assert_eq!(app["file_hash"], old["file_hash"], "{json}");
    berth
        .wait_for_log(&["retired app version", "swap"], TIMEOUT)
        .await;
    berth.wait_for_log(&["swap A shutting down"], TIMEOUT).await;
    assert_eq!(get(&berth.url("/swap/")).await.text(), "A\n");

    // A changed file: the new build, with another hash.
    replace(berth.apps_dir(), SWAP_SO, &builds.b, Replace::Rename);
    let reply = post(&berth.admin_url("/apps/swap/reload")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["app"]["version"], "2.0.0", "{json}");
    assert_ne!(json["app"]["file_hash"], old["file_hash"], "{json}");
    assert_eq!(get(&berth.url("/swap/")).await.text(), "B\n");

    // Unknown app.
    let reply = post(&berth.admin_url("/apps/nope/reload")).await;
    assert_eq!(reply.status, 404, "{}", reply.text());

    // A broken file: 422 with the reason, and the old version keeps serving.
    replace_with_bytes(berth.apps_dir(), SWAP_SO, b"not a library\n");
    let reply = post(&berth.admin_url("/apps/swap/reload")).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let json = reply.json();
    eprintln!("reload of a text file: 422 {json}");
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|error| !error.is_empty()),
        "{json}"
    );
    assert_eq!(get(&berth.url("/swap/")).await.text(), "B\n");
    let apps = admin_apps(&berth).await;
    let swap = app_entry(&apps, "swap").expect("swap is still listed");
    assert_eq!(swap["version"], "2.0.0", "{apps:#}");
    assert!(
        swap["last_error"].is_string(),
        "last_error should report the failed reload: {apps:#}"
    );
    assert!(!berth.stderr().contains("swap B shutting down"));

    // The file is gone: a reload of this one app fails and leaves it mounted (only a rescan of
    // the directory, by a file event or SIGHUP, unmounts it).
    std::fs::remove_file(berth.apps_dir().join(SWAP_SO)).expect("remove swap.so");
    let reply = post(&berth.admin_url("/apps/swap/reload")).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(
        reply.text().contains("no longer exists"),
        "{}",
        reply.text()
    );
    assert_eq!(get(&berth.url("/swap/")).await.text(), "B\n");
}

#[tokio::test]
async fn admin_listen_off_starts_no_admin_listener() {
    let berth = Berth::builder().app("hello").admin_off().start();
    assert_eq!(get(&berth.url("/hello")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stderr = berth.stderr();
    assert!(
        !stderr.contains("admin listening"),
        "--admin-listen off should start no admin listener:\n{stderr}"
    );
}
