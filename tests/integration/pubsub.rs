//! The pub/sub broker's configuration and admin view, without an app that uses it: the admin
//! `/pubsub` document for each backend, a Redis that is not there at start (a warning, then a
//! connection once it is), and a `pubsub` value that is not a backend (an error naming the
//! file, the key and what is accepted). The `chat` module drives the broker through an app.

use std::time::Duration;

use serde_json::Value;

use crate::harness::{Berth, get, run_berth};
use crate::services::Redis;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The admin `/pubsub` document.
pub async fn pubsub_status(berth: &Berth) -> Value {
    let reply = get(&berth.admin_url("/pubsub")).await;
    assert_eq!(reply.status, 200, "admin GET /pubsub: {}", reply.text());
    assert!(
        reply.content_type().starts_with("application/json"),
        "content-type {:?}",
        reply.content_type()
    );
    reply.json()
}

/// Waits until the admin `/pubsub` document satisfies `condition`, and returns it.
pub async fn wait_for_pubsub(
    berth: &Berth,
    what: &str,
    timeout: Duration,
    condition: impl Fn(&Value) -> bool,
) -> Value {
    crate::harness::wait_for_admin(berth, "/pubsub", what, timeout, condition).await
}

#[tokio::test]
async fn admin_pubsub_describes_the_memory_broker() {
    let berth = Berth::with_apps(&["hello"]);
    let document = pubsub_status(&berth).await;
    assert_eq!(
        document,
        serde_json::json!({
            "backend": "memory",
            "connected": true,
            "channels": [],
            "reconnects": 0,
        })
    );
    let reply = crate::harness::post(&berth.admin_url("/pubsub")).await;
    assert_eq!(reply.status, 405);
}

#[tokio::test]
async fn a_redis_that_is_down_at_start_is_a_warning_and_is_connected_once_up() {
    // Started and stopped at once: a port that nothing listens on, which it will later.
    let mut redis = Redis::start();
    redis.stop();
    let url = redis.url();
    let berth = Berth::builder()
        .app("hello")
        .app("chat")
        .config(&format!("pubsub = \"{url}\"\n"))
        .start();
    let warning = berth
        .wait_for_log(&["WARN", "pub/sub: cannot connect to Redis", &url], TIMEOUT)
        .await;
    assert!(warning.contains("serving anyway"), "{warning}");
    // It serves meanwhile.
    assert_eq!(get(&berth.url("/hello")).await.status, 200);
    let document = pubsub_status(&berth).await;
    assert_eq!(document["backend"], "redis");
    assert_eq!(document["connected"], false);
    // Subscribing and publishing fail, saying why (chat answers 503 with the reason).
    for reply in [
        get(&berth.url("/chat/events")).await,
        crate::harness::post(&berth.url("/chat/publish")).await,
    ] {
        assert_eq!(reply.status, 503, "{}", reply.text());
        let text = reply.text();
        assert!(
            text.contains(&format!("the pub/sub Redis at {url} is not connected")),
            "{text}"
        );
        assert!(text.contains("Connection refused"), "{text}");
    }

    redis.resume();
    wait_for_pubsub(&berth, "connected", Duration::from_secs(20), |d| {
        d["connected"] == true
    })
    .await;
    berth
        .wait_for_log(&["INFO", "pub/sub: connected to Redis", &url], TIMEOUT)
        .await;
    // Now they work.
    let reply = crate::harness::post(&berth.url("/chat/publish")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "0\n");
}

#[tokio::test]
async fn the_backend_comes_from_the_command_line_and_the_environment_too() {
    let redis = Redis::start();
    let berth = Berth::builder()
        .app("hello")
        .args(&["--pubsub", &redis.url()])
        .start();
    wait_for_pubsub(&berth, "on Redis", TIMEOUT, |d| {
        d["backend"] == "redis" && d["connected"] == true
    })
    .await;
    let berth = Berth::builder()
        .app("hello")
        .config("pubsub = \"memory\"\n")
        .env("BERTH_PUBSUB", &redis.url())
        .start();
    wait_for_pubsub(&berth, "on Redis", TIMEOUT, |d| {
        d["backend"] == "redis" && d["connected"] == true
    })
    .await;
}

#[test]
fn a_pubsub_that_is_not_a_backend_is_an_error_naming_file_key_and_choices() {
    let dir = tempfile::tempdir().expect("tempdir");
    let apps = dir.path().join("apps");
    std::fs::create_dir(&apps).expect("apps dir");
    let path = dir.path().join("berth.toml");
    for (toml, needles) in [
        (
            "pubsub = \"http://x\"\n",
            &[
                "berth.toml",
                "line 1",
                "key `pubsub`",
                "\"http://x\" is not a pub/sub backend",
                "expected \"memory\" or a Redis URL like \"redis://127.0.0.1:6379/\"",
            ][..],
        ),
        (
            "pubsub_overflow = \"block\"\n",
            &[
                "key `pubsub_overflow`",
                "expected \"drop-oldest\" or \"close\"",
            ][..],
        ),
        (
            "\npubsub_queue = 0\n",
            &["line 2", "key `pubsub_queue`"][..],
        ),
    ] {
        std::fs::write(&path, toml).expect("write berth.toml");
        let (status, _stdout, stderr) = run_berth(
            &[
                "--config",
                path.to_str().expect("UTF-8 temp path"),
                "--apps-dir",
                apps.to_str().expect("UTF-8 temp path"),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "off",
            ],
            TIMEOUT,
        );
        assert_eq!(status.code(), Some(2), "{toml:?}: stderr:\n{stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{toml:?}: no {needle:?} in:\n{stderr}"
            );
        }
    }
    let (status, _stdout, stderr) = run_berth(&["--pubsub", "rediss://cache"], TIMEOUT);
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("--pubsub"), "{stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");
}
