//! What apps may call and for how long: the outbound allowlist (a denied fetch fails inside
//! the app and opens no connection; the list is matched on the URL, never on a `Host` header),
//! the inbound request's deadline bounding every outbound call, and the per-app cap on
//! outbound requests in flight.
//!
//! The harness allows every upstream by default (`BERTH_ALLOW_OUTBOUND=*`); these tests clear
//! or remove that variable and give their own lists.

use std::time::{Duration, Instant};

use crate::harness::{Berth, Reply, assert_about, encode, get, run_berth};
use crate::upstream::{HangEvent, HangServer, Upstream, small_body};

/// `GET /testkit/fetch?url=URL`: testkit fetches `url` and answers `status N` (or 502).
async fn testkit_fetch(berth: &Berth, url: &str) -> Reply {
    get(&berth.url(&format!("/testkit/fetch?url={}", encode(url)))).await
}

/// `GET /testkit/fetch-with-host?url=URL&host=HOST`: the same with a `Host` header of `host`.
async fn testkit_fetch_with_host(berth: &Berth, url: &str, host: &str) -> Reply {
    let path = format!(
        "/testkit/fetch-with-host?url={}&host={}",
        encode(url),
        encode(host)
    );
    get(&berth.url(&path)).await
}

/// The body testkit answers when its fetch of `origin` (`http://HOST:PORT`) is denied.
fn denied(origin: &str) -> String {
    format!(
        "fetch failed: denied: app \"testkit\" may not call {origin}: it is not in the app's \
         allowed_outbound_hosts\n"
    )
}

/// Asserts that `reply` is testkit's answer to a denied fetch of `origin`.
fn assert_denied(reply: &Reply, origin: &str) {
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (502, denied(origin)),
        "a fetch of {origin} should be denied"
    );
}

/// Asserts that `reply` is testkit's answer to a successful fetch.
fn assert_fetched(reply: &Reply, what: &str) {
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "status 200\n"),
        "{what} should be allowed"
    );
}

/// Gives a connection the server might (wrongly) have started time to reach the upstream,
/// then asserts the upstream accepted exactly `expected` connections.
async fn assert_connections(upstream: &Upstream, expected: usize, what: &str) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.connections(), expected, "{what}");
}

/// Asserts that the host answered 504 for a request whose deadline passed while its app was
/// waiting on an outbound call. The app's fetch is bounded by the same deadline, so the app may
/// see its fetch time out at that instant and answer first (testkit says 502 `fetch failed:
/// timed out`); the request still ran out of time, and the client must be told 504.
fn assert_deadline_504(reply: &Reply) {
    assert_eq!(
        reply.status,
        504,
        "the request's deadline passed, so the answer should be the host's 504, not the \
         app's answer to its own fetch timing out: {:?}",
        reply.text()
    );
}

/// `http://127.0.0.1:PORT`, as the denial message names it.
fn origin(upstream: &Upstream) -> String {
    format!("http://127.0.0.1:{}", upstream.port())
}

#[tokio::test]
async fn without_any_list_an_app_may_call_nothing_and_no_connection_is_made() {
    let upstream = Upstream::start();
    // `BERTH_ALLOW_OUTBOUND` set but empty, then not set at all: both mean no global list.
    for cleared in [true, false] {
        let builder = Berth::builder().app("fixture_testkit");
        let builder = if cleared {
            builder.env("BERTH_ALLOW_OUTBOUND", "")
        } else {
            builder.env_remove("BERTH_ALLOW_OUTBOUND")
        };
        let berth = builder.start();
        let reply = testkit_fetch(&berth, &upstream.url("/small")).await;
        assert_denied(&reply, &origin(&upstream));
        assert_connections(&upstream, 0, "a denied fetch opens no connection").await;
    }
}

#[tokio::test]
async fn an_apps_list_allows_its_entries_and_nothing_else() {
    let allowed = Upstream::start();
    let other = Upstream::start();
    let berth = Berth::builder()
        .app("fixture_testkit")
        .env("BERTH_ALLOW_OUTBOUND", "")
        .config(&format!(
            "[apps.testkit]\nallowed_outbound_hosts = [\"{}\"]\n",
            origin(&allowed)
        ))
        .start();

    let reply = testkit_fetch(&berth, &allowed.url("/small")).await;
    assert_fetched(&reply, "the listed upstream");
    assert!(allowed.connections() >= 1, "the allowed fetch connected");

    // Another port on the same host.
    let reply = testkit_fetch(&berth, &other.url("/small")).await;
    assert_denied(&reply, &origin(&other));
    assert_connections(&other, 0, "a denied fetch opens no connection").await;

    // The same server under another name: hosts are matched as written, not resolved.
    let before = allowed.connections();
    let by_name = format!("http://localhost:{}/small", allowed.port());
    let reply = testkit_fetch(&berth, &by_name).await;
    assert_denied(&reply, &format!("http://localhost:{}", allowed.port()));
    assert_connections(&allowed, before, "a denied fetch opens no connection").await;
}

#[tokio::test]
async fn a_port_wildcard_allows_every_port_of_the_host() {
    let first = Upstream::start();
    let second = Upstream::start();
    let berth = Berth::builder()
        .app("fixture_testkit")
        .env("BERTH_ALLOW_OUTBOUND", "")
        .config("[apps.testkit]\nallowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n")
        .start();
    for upstream in [&first, &second] {
        let reply = testkit_fetch(&berth, &upstream.url("/small")).await;
        assert_fetched(&reply, &upstream.url("/small"));
        assert!(upstream.connections() >= 1);
    }
}

#[tokio::test]
async fn a_host_header_cannot_smuggle_a_request_past_the_list() {
    let allowed = Upstream::start();
    let other = Upstream::start();
    let allowed_name = format!("localhost:{}", allowed.port());
    let berth = Berth::builder()
        .app("fixture_testkit")
        .env("BERTH_ALLOW_OUTBOUND", "")
        .config(&format!(
            "[apps.testkit]\nallowed_outbound_hosts = [\"http://{allowed_name}\"]\n"
        ))
        .start();

    // Another port, with the allowed host in the Host header.
    let reply = testkit_fetch_with_host(&berth, &other.url("/small"), &allowed_name).await;
    assert_denied(&reply, &origin(&other));
    // The allowed server itself, by an address that is not on the list, with the listed name
    // in the Host header.
    let reply = testkit_fetch_with_host(&berth, &allowed.url("/small"), &allowed_name).await;
    assert_denied(&reply, &origin(&allowed));
    assert_connections(&other, 0, "a denied fetch opens no connection").await;
    assert_connections(&allowed, 0, "a denied fetch opens no connection").await;

    // The listed URL with some other Host header is allowed (the URL decides).
    let url = format!("http://{allowed_name}/small");
    let reply = testkit_fetch_with_host(&berth, &url, "evil.example").await;
    assert_fetched(&reply, "the listed URL with another Host header");
    assert!(allowed.connections() >= 1);
    assert_connections(&other, 0, "nothing reached the other upstream").await;
}

#[tokio::test]
async fn the_global_list_is_the_default_and_an_apps_own_list_replaces_it() {
    let global = Upstream::start();
    let own = Upstream::start();
    let config = format!(
        "allowed_outbound_hosts = [\"{}\"]\n\
         [apps.testkit]\n\
         allowed_outbound_hosts = [\"{}\"]\n",
        origin(&global),
        origin(&own)
    );
    let berth = Berth::builder()
        .app("fixture_testkit")
        .app("fetch")
        .env_remove("BERTH_ALLOW_OUTBOUND")
        .config(&config)
        .start();

    // testkit has its own list: only that.
    assert_fetched(
        &testkit_fetch(&berth, &own.url("/small")).await,
        "testkit's own",
    );
    assert_denied(
        &testkit_fetch(&berth, &global.url("/small")).await,
        &origin(&global),
    );
    // `fetch` has none: the global list.
    let fetch = |url: String| {
        let berth = &berth;
        async move { get(&berth.url(&format!("/fetch?url={}", encode(&url)))).await }
    };
    let reply = fetch(global.url("/small")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(&reply.body[..], &small_body()[..20]);
    let reply = fetch(own.url("/small")).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply.text().contains("denied") && reply.text().contains("\"fetch\""),
        "{}",
        reply.text()
    );
    assert_eq!(global.connections(), 1, "only `fetch`'s allowed call");
    assert_eq!(own.connections(), 1, "only testkit's allowed call");
    drop(berth);

    // --allow-outbound beats the file's global list (not an app's own).
    let berth = Berth::builder()
        .app("fixture_testkit")
        .app("fetch")
        .env_remove("BERTH_ALLOW_OUTBOUND")
        .config(&config)
        .args(&["--allow-outbound", &origin(&own)])
        .start();
    let fetch = |url: String| {
        let berth = &berth;
        async move { get(&berth.url(&format!("/fetch?url={}", encode(&url)))).await }
    };
    assert_eq!(fetch(own.url("/small")).await.status, 200);
    assert_eq!(fetch(global.url("/small")).await.status, 502);
    assert_denied(
        &testkit_fetch(&berth, &global.url("/small")).await,
        &origin(&global),
    );
}

#[test]
fn an_invalid_entry_is_a_config_error_naming_the_key_and_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let apps = dir.path().join("apps");
    std::fs::create_dir(&apps).expect("apps dir");
    let path = dir.path().join("berth.toml");
    std::fs::write(
        &path,
        "request_timeout = \"5s\"\n\
         [apps.testkit]\n\
         allowed_outbound_hosts = [\"http://127.0.0.1:8080\", \"ftp://example.com\"]\n",
    )
    .expect("write berth.toml");
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
        Duration::from_secs(10),
    );
    eprintln!("exit {status}; stderr:\n{stderr}");
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    for needle in [
        "apps.testkit.allowed_outbound_hosts",
        "line 3",
        "ftp://example.com",
    ] {
        assert!(
            stderr.contains(needle),
            "stderr should name {needle:?}:\n{stderr}"
        );
    }

    // On the command line too.
    let (status, _stdout, stderr) = run_berth(
        &[
            "--apps-dir",
            apps,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--allow-outbound",
            "http://127.0.0.1:8080,example.com",
        ],
        Duration::from_secs(10),
    );
    eprintln!("exit {status}; stderr:\n{stderr}");
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains("--allow-outbound") && stderr.contains("example.com"),
        "stderr:\n{stderr}"
    );
}

#[tokio::test]
async fn the_request_deadline_cuts_an_outbound_call_short() {
    let mut hang = HangServer::start();
    let berth = Berth::builder()
        .app("fixture_testkit")
        .config("[apps.testkit]\nrequest_timeout = \"1s\"\n")
        .start();
    let started = Instant::now();
    let reply = testkit_fetch(&berth, &hang.url("/never")).await;
    let elapsed = started.elapsed();
    assert_about("the answer came", elapsed, 0.8..=2.5);

    assert_eq!(
        hang.next_event(Duration::from_secs(2)).await,
        Some(HangEvent::Request(0)),
        "the upstream got the request"
    );
    assert_eq!(
        hang.next_event(Duration::from_secs(2)).await,
        Some(HangEvent::Closed(0)),
        "the upstream saw its connection dropped at the deadline"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the upstream connection outlived its request: closed after {:?}",
        started.elapsed()
    );
    assert_deadline_504(&reply);
}

#[tokio::test]
async fn an_app_can_read_the_time_left() {
    let berth = Berth::builder()
        .app("fixture_testkit")
        .args(&["--request-timeout", "5"])
        .start();
    let reply = get(&berth.url("/testkit/time-left")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    let ms: u64 = text
        .strip_prefix("time left ")
        .and_then(|rest| rest.strip_suffix(" ms\n"))
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {text:?}"));
    assert!((4000..=5000).contains(&ms), "time left {ms} ms");
}

#[tokio::test]
async fn waiting_for_an_outbound_permit_counts_inside_the_deadline() {
    let upstream = Upstream::start();
    let berth = Berth::builder()
        .app("fixture_testkit")
        .config(
            "[apps.testkit]\n\
             request_timeout = \"1s\"\n\
             outbound_max_concurrency = 1\n",
        )
        .start();
    let slow = upstream.url("/slow?ms=3000");
    let timed = |url: String| {
        let berth = &berth;
        async move {
            let started = Instant::now();
            let reply = testkit_fetch(berth, &url).await;
            (reply, started.elapsed())
        }
    };
    let watch = async {
        // Half-way through, one request holds the only permit and the other waits for it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        upstream.connections()
    };
    let ((first, first_took), (second, second_took), halfway) =
        tokio::join!(timed(slow.clone()), timed(slow.clone()), watch);
    assert_eq!(
        halfway, 1,
        "with outbound_max_concurrency = 1, one fetch reaches the upstream at a time"
    );
    eprintln!(
        "answers: {} after {first_took:?}, {} after {second_took:?}",
        first.status, second.status
    );
    for took in [first_took, second_took] {
        assert_about("the answer came", took, 0.8..=2.5);
    }

    // The permit came back when the deadline dropped the fetch.
    let reply = testkit_fetch(&berth, &upstream.url("/small")).await;
    assert_fetched(&reply, "a fetch after both timed out");

    assert_deadline_504(&first);
    assert_deadline_504(&second);
}
