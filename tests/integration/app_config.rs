//! The config file (`berth.toml`, `--config PATH`) and the app lifecycle hooks it feeds: mount
//! overrides, disabled apps, settings passed to `init`, per-app request time limits, failing
//! `init`, `shutdown` on exit, and configuration errors that name the key and the line.

use std::time::{Duration, Instant};

use crate::harness::{Berth, admin_apps, app_entry, berth_bin, get, run_berth, wait_for_apps};

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn settings_reach_init_and_shutdown_runs_on_sigterm() {
    let mut berth = Berth::builder()
        .app("greeter")
        .config(
            r#"
[apps.greeter.settings]
greeting = "Ahoy"
"#,
        )
        .start();
    berth
        .wait_for_log(&["greeter ready with greeting \"Ahoy\""], TIMEOUT)
        .await;
    let reply = get(&berth.url("/greeter?name=Ada")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "Ahoy, Ada!\n")
    );
    assert_eq!(get(&berth.url("/greeter")).await.text(), "Ahoy, world!\n");
    assert!(!berth.stderr().contains("greeter shutting down"));

    berth.sigterm();
    let status = berth.wait_exit(TIMEOUT).await;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        berth.stderr().contains("greeter shutting down"),
        "the shutdown hook should run on SIGTERM; stderr:\n{}",
        berth.stderr()
    );
}

#[tokio::test]
async fn greeter_without_settings_says_hello() {
    let berth = Berth::with_apps(&["greeter"]);
    berth
        .wait_for_log(&["greeter ready with greeting \"Hello\""], TIMEOUT)
        .await;
    assert_eq!(
        get(&berth.url("/greeter?name=Ada")).await.text(),
        "Hello, Ada!\n"
    );
}

#[tokio::test]
async fn mount_overrides_the_path() {
    let berth = Berth::builder()
        .app("greeter")
        .config(
            r#"
[apps.greeter]
mount = "/hi"
"#,
        )
        .start();
    let reply = get(&berth.url("/hi?name=Ada")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "Hello, Ada!\n")
    );
    assert_eq!(get(&berth.url("/hi/x")).await.status, 200);
    assert_eq!(get(&berth.url("/greeter")).await.status, 404);
    let apps = admin_apps(&berth).await;
    assert_eq!(
        app_entry(&apps, "greeter").expect("greeter is listed")["mount"],
        "/hi",
        "{apps:#}"
    );
}

#[tokio::test]
async fn a_disabled_app_is_not_mounted() {
    let berth = Berth::builder()
        .app("greeter")
        .app("hello")
        .config(
            r#"
[apps.hello]
enabled = false
"#,
        )
        .start();
    assert_eq!(get(&berth.url("/hello")).await.status, 404);
    assert_eq!(get(&berth.url("/greeter")).await.status, 200);
    let apps = admin_apps(&berth).await;
    eprintln!("/apps with hello disabled: {apps}");
    assert!(app_entry(&apps, "greeter").is_some(), "{apps:#}");
}

#[tokio::test]
async fn a_per_app_request_timeout_answers_504() {
    let berth = Berth::builder()
        .app("fixture_testkit")
        .app("hello")
        .config(
            r#"
[apps.testkit]
request_timeout = "1s"
"#,
        )
        .start();
    let started = Instant::now();
    let reply = get(&berth.url("/testkit/sleep?ms=3000")).await;
    let took = started.elapsed();
    eprintln!("request_timeout = \"1s\": {} after {took:?}", reply.status);
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "the 504 should come after about 1 s, came after {took:?}"
    );
    // Quicker requests to the same app, and other apps, are unaffected.
    let reply = get(&berth.url("/testkit/sleep?ms=100")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(get(&berth.url("/hello")).await.status, 200);
}

#[tokio::test]
async fn the_config_file_can_give_every_address_and_the_apps_dir() {
    let mut berth = Berth::builder()
        .app("hello")
        .config(
            r#"
# Everything from the file; `apps_dir` is relative to this file's directory.
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
apps_dir = "apps"
drain_timeout = "5s"
outbound_timeout = 10
request_timeout = "30s"
hook_timeout = "500ms"
watch = true
"#,
        )
        .only_config()
        .start();
    berth.admin_addr();
    assert_eq!(get(&berth.url("/hello")).await.text(), "Hello, world!\n");
    assert_eq!(get(&berth.admin_url("/healthz")).await.status, 200);
}

#[tokio::test]
async fn a_failing_init_keeps_the_app_unmounted_and_says_why() {
    let berth = Berth::builder()
        .app_as("fixture_init_fail", "init-fail.so")
        .app("hello")
        .start();
    berth
        .wait_for_log(&["refusing to start: no database"], TIMEOUT)
        .await;
    assert_eq!(get(&berth.url("/swap/")).await.status, 404);
    assert_eq!(get(&berth.url("/hello")).await.status, 200);
    let apps = wait_for_apps(&berth, "init-fail.so in `failed`", TIMEOUT, |apps| {
        apps["failed"].as_array().is_some_and(|failed| {
            failed.iter().any(|entry| {
                entry["file"]
                    .as_str()
                    .is_some_and(|file| file.ends_with("init-fail.so"))
            })
        })
    })
    .await;
    let failed = apps["failed"]
        .as_array()
        .and_then(|failed| {
            failed.iter().find(|entry| {
                entry["file"]
                    .as_str()
                    .is_some_and(|file| file.ends_with("init-fail.so"))
            })
        })
        .expect("found above");
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|error| error.contains("refusing to start: no database")),
        "{apps:#}"
    );
    assert!(!failed["at"].is_null(), "`at` is missing: {apps:#}");
    assert!(app_entry(&apps, "swap").is_none(), "{apps:#}");
    // The server is ready even though one app failed.
    assert_eq!(get(&berth.admin_url("/readyz")).await.status, 200);
}

#[test]
fn help_lists_the_config_and_reload_flags() {
    let (status, stdout, stderr) = run_berth(&["--help"], TIMEOUT);
    assert!(
        status.success(),
        "--help exited with {status}; stderr:\n{stderr}"
    );
    for flag in [
        "--config",
        "--admin-listen",
        "--no-watch",
        "--request-timeout",
    ] {
        assert!(
            stdout.contains(flag),
            "--help does not mention {flag}:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn an_init_that_overruns_hook_timeout_keeps_the_app_unmounted() {
    // Build (or find) the artifacts first, so that only berth's start is timed.
    berth_bin();
    let started = Instant::now();
    let berth = Berth::builder()
        .app_as("fixture_init_fail", "init-hang.so")
        .app("hello")
        .config(
            r#"
[apps.swap]
hook_timeout = "500ms"

[apps.swap.settings]
init = "hang"
"#,
        )
        .start();
    let ready = started.elapsed();
    assert_eq!(get(&berth.url("/hello")).await.status, 200);
    assert_eq!(get(&berth.url("/swap/")).await.status, 404);
    let apps = wait_for_apps(&berth, "init-hang.so in `failed`", TIMEOUT, |apps| {
        apps["failed"].as_array().is_some_and(|failed| {
            failed.iter().any(|entry| {
                entry["file"]
                    .as_str()
                    .is_some_and(|file| file.ends_with("init-hang.so"))
            })
        })
    })
    .await;
    eprintln!(
        "ready after {ready:?}; init over its time limit: {}",
        apps["failed"]
    );
    assert!(
        ready < Duration::from_secs(5),
        "a hanging init should delay the start by about its 500 ms limit, took {ready:?}"
    );
    assert!(
        !apps.to_string().contains("no database"),
        "the init was cut off, it did not fail by itself: {apps:#}"
    );
}

/// Runs `berth --config FILE` with `toml` in FILE and checks that it exits with 2 and that its
/// stderr names `key` and `line {line}`.
fn assert_config_error(toml: &str, key: &str, line: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let apps = dir.path().join("apps");
    std::fs::create_dir(&apps).expect("apps dir");
    let path = dir.path().join("berth.toml");
    std::fs::write(&path, toml).expect("write berth.toml");
    let path = path.to_str().expect("UTF-8 temp path");
    let apps = apps.to_str().expect("UTF-8 temp path");
    let (status, _stdout, stderr) = run_berth(
        &[
            "--config",
            path,
            "--apps-dir",
            apps,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
        ],
        TIMEOUT,
    );
    eprintln!("--- {key}: exit {status}; stderr:\n{stderr}");
    assert_eq!(
        status.code(),
        Some(2),
        "a bad {key} should exit with 2; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(key),
        "the error should name the key {key:?}:\n{stderr}"
    );
    let line = format!("line {line}");
    assert!(
        stderr.contains(&line),
        "the error should name the line ({line}):\n{stderr}"
    );
}

#[test]
fn an_unknown_key_is_an_error_naming_it_and_its_line() {
    assert_config_error("drain_timeout = 5\nlistne = \"127.0.0.1:0\"\n", "listne", 2);
}

#[test]
fn an_unknown_key_in_an_app_table_is_an_error() {
    assert_config_error(
        "[apps.greeter]\nmount = \"/hi\"\nmonut = \"/ho\"\n",
        "monut",
        3,
    );
}

#[test]
fn a_wrong_type_is_an_error_naming_the_key_and_its_line() {
    assert_config_error("\n\ndrain_timeout = true\n", "drain_timeout", 3);
}

/// Numbers and booleans are accepted as their TOML text (`port = 8080` gives `"8080"`); a table
/// or an array is not a setting.
#[test]
fn a_setting_that_is_not_a_scalar_is_an_error() {
    assert_config_error(
        "[apps.greeter.settings]\ngreeting = [\"Hi\"]\n",
        "greeting",
        2,
    );
}

#[test]
fn a_bad_duration_is_an_error() {
    assert_config_error(
        "[apps.testkit]\nrequest_timeout = \"soon\"\n",
        "request_timeout",
        2,
    );
}

#[test]
fn a_bad_address_is_an_error_naming_the_key_and_its_line() {
    assert_config_error("# addresses\nlisten = \"nowhere:http\"\n", "listen", 2);
}

#[test]
fn a_bad_admin_address_is_an_error() {
    assert_config_error("admin_listen = \"9090\"\n", "admin_listen", 1);
}
