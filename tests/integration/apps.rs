//! The sample apps through the real server, over HTTP/1.1 and HTTP/2.

use std::time::{Duration, Instant};

use hyper::{Method, Version};
use serde_json::{Value, json};

use crate::harness::{Berth, Proto, Req, encode, get, send};
use crate::upstream::{HangServer, Upstream, closed_port_url, small_body};

#[tokio::test]
async fn hello_says_hello() {
    let berth = Berth::with_apps(&["hello"]);
    for path in ["/hello", "/hello/", "/hello/any/path?x=1"] {
        let reply = get(&berth.url(path)).await;
        assert_eq!(reply.status, 200, "GET {path}");
        assert_eq!(reply.text(), "Hello, world!\n", "GET {path}");
        assert!(
            reply.content_type().starts_with("text/plain"),
            "GET {path}: content-type {:?}",
            reply.content_type()
        );
    }
}

#[tokio::test]
async fn hello_over_http2_prior_knowledge() {
    let berth = Berth::with_apps(&["hello"]);
    let reply = send(Req::get(&berth.url("/hello")).proto(Proto::Http2)).await;
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello, world!\n");
}

/// POSTs to `/echo/a/b?...` with repeated headers and checks everything echo reports.
async fn echo_reports_the_request(proto: Proto) {
    let berth = Berth::with_apps(&["echo"]);
    let body = "hello body \u{e9}";
    let url = berth.url("/echo/a/b?q=1&x=y%20z&q=2");
    let reply = send(Req {
        proto,
        method: Method::POST,
        url: &url,
        headers: &[
            ("x-dup", "one"),
            ("x-single", "s"),
            ("x-dup", "two"),
            ("content-type", "text/plain"),
        ],
        body: body.as_bytes(),
    })
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(reply.content_type().starts_with("application/json"));
    let got = reply.json();

    assert_eq!(got["method"], "POST", "{got}");
    assert_eq!(got["prefix"], "/echo", "{got}");
    assert_eq!(got["path"], "/a/b", "{got}");
    assert_eq!(got["query"], "q=1&x=y%20z&q=2", "{got}");
    assert_eq!(
        got["query_params"],
        json!([["q", "1"], ["x", "y z"], ["q", "2"]]),
        "{got}"
    );
    let expected_version = match proto {
        Proto::Http1 => "HTTP/1.1",
        Proto::Http2 => "HTTP/2.0",
    };
    assert_eq!(got["version"], expected_version, "{got}");
    let peer = got["peer"].as_str().unwrap_or_default();
    assert!(peer.starts_with("127.0.0.1:"), "peer {peer:?}");
    assert_eq!(got["body"], body, "{got}");
    assert_eq!(got["body_len"], body.len(), "{got}");

    // Headers are [name, value] pairs, in order, with repeated names kept.
    let headers: Vec<(String, String)> = got["headers"]
        .as_array()
        .unwrap_or_else(|| panic!("headers is not an array: {got}"))
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(name), Value::String(value)]) => (name.clone(), value.clone()),
            _ => panic!("header entry is not a [name, value] pair: {pair}"),
        })
        .collect();
    let dups: Vec<&str> = headers
        .iter()
        .filter(|(name, _)| name == "x-dup")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(dups, ["one", "two"], "{headers:?}");
    assert!(
        headers.contains(&("x-single".into(), "s".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("content-type".into(), "text/plain".into())),
        "{headers:?}"
    );
    if proto == Proto::Http1 {
        // HTTP/2 carries the authority in a pseudo-header instead.
        assert!(
            headers.iter().any(|(name, _)| name == "host"),
            "{headers:?}"
        );
    }
}

#[tokio::test]
async fn echo_reports_the_request_over_http1() {
    echo_reports_the_request(Proto::Http1).await;
}

#[tokio::test]
async fn echo_reports_the_request_over_http2() {
    echo_reports_the_request(Proto::Http2).await;
}

#[tokio::test]
async fn mount_point_alone_is_the_root_path() {
    let berth = Berth::with_apps(&["echo"]);
    for (path, app_path, query) in [
        ("/echo", "/", ""),
        ("/echo/", "/", ""),
        ("/echo?k=v", "/", "k=v"),
        ("/echo/deep/er/", "/deep/er/", ""),
    ] {
        let reply = get(&berth.url(path)).await;
        assert_eq!(reply.status, 200, "GET {path}");
        let got = reply.json();
        assert_eq!(got["prefix"], "/echo", "GET {path}: {got}");
        assert_eq!(got["path"], app_path, "GET {path}: {got}");
        assert_eq!(got["query"], query, "GET {path}: {got}");
        assert_eq!(got["method"], "GET", "GET {path}: {got}");
        assert_eq!(got["body_len"], 0, "GET {path}: {got}");
    }
}

#[tokio::test]
async fn fetch_returns_the_first_20_bytes_of_the_upstream_body() {
    let upstream = Upstream::start();
    let berth = Berth::with_apps(&["fetch"]);
    // Both spellings: the url parameter percent-encoded and as-is (`:` and `/` are valid in a
    // query).
    for url in [
        berth.url(&format!("/fetch?url={}", encode(&upstream.url("/small")))),
        berth.url(&format!("/fetch/?url={}", upstream.url("/small"))),
    ] {
        let reply = get(&url).await;
        assert_eq!(reply.status, 200, "GET {url}: {}", reply.text());
        assert_eq!(reply.body, small_body()[..20], "GET {url}");
    }
}

#[tokio::test]
async fn fetch_of_an_unreachable_upstream_is_502() {
    let berth = Berth::with_apps(&["fetch"]);
    let url = berth.url(&format!("/fetch?url={}", encode(&closed_port_url("/"))));
    let reply = get(&url).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
}

/// Slow: waits for the fetch app's own 10 s limit.
#[tokio::test]
async fn fetch_of_a_hanging_upstream_is_504_after_10_s() {
    let hang = HangServer::start();
    let berth = Berth::with_apps(&["fetch"]);
    let url = berth.url(&format!("/fetch?url={}", encode(&hang.url("/"))));
    let started = Instant::now();
    let reply = get(&url).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(
        elapsed >= Duration::from_millis(9500) && elapsed < Duration::from_secs(15),
        "the 504 should come after about 10 s, came after {elapsed:?}"
    );
}

#[tokio::test]
async fn gather_overlaps_its_waits() {
    let upstream = Upstream::start();
    let berth = Berth::with_apps(&["gather"]);
    let a = upstream.url("/slow?ms=600");
    let b = upstream.url("/slow?ms=800");
    let url = berth.url(&format!("/gather?url={}&url={}", encode(&a), encode(&b)));

    // Warm up the app and the connection machinery so the measurement is about overlap only.
    assert_eq!(get(&berth.url("/gather?sleep_ms=0")).await.status, 200);

    let started = Instant::now();
    let reply = get(&url).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let got = reply.json();
    let results = got["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results array: {got}"));
    assert_eq!(results.len(), 2, "{got}");
    for (result, url, body) in [
        (&results[0], &a, "slow 600\n"),
        (&results[1], &b, "slow 800\n"),
    ] {
        assert_eq!(result["url"], url.as_str(), "{got}");
        assert_eq!(result["status"], 200, "{got}");
        assert_eq!(result["bytes"], body.len(), "{got}");
    }
    // Sequential waits would take 1 s + 0.6 s + 0.8 s = 2.4 s; overlapped, about 1 s.
    assert!(
        elapsed >= Duration::from_millis(950) && elapsed < Duration::from_millis(1600),
        "gather took {elapsed:?}: its sleep and fetches should overlap ({got})"
    );
}

/// The access log is off by default, as in gunicorn and granian; `--access-log` writes one line
/// per request with the app, method, path, status and latency, and 499 for a request whose
/// client went away before the answer.
#[tokio::test]
async fn the_access_log_is_opt_in() {
    let quiet = Berth::with_apps(&["hello"]);
    assert_eq!(get(&quiet.url("/hello")).await.status, 200);

    let logged = Berth::builder()
        .app("hello")
        .app("gather")
        .args(&["--access-log"])
        .start();
    assert_eq!(get(&logged.url("/hello/a?b=1")).await.status, 200);
    let line = logged
        .wait_for_log(&["berth::access", "status=200"], Duration::from_secs(5))
        .await;
    for field in [
        "app=\"hello\"",
        "method=GET",
        "path=\"/hello/a\"",
        "latency_ms=",
    ] {
        assert!(line.contains(field), "{field} missing from {line:?}");
    }
    let gone = tokio::time::timeout(
        Duration::from_millis(300),
        get(&logged.url("/gather?sleep_ms=5000")),
    )
    .await;
    assert!(gone.is_err(), "the slow request should still be waiting");
    logged
        .wait_for_log(
            &["berth::access", "app=\"gather\"", "status=499"],
            Duration::from_secs(5),
        )
        .await;

    assert!(
        !quiet.stderr().contains("berth::access"),
        "no access log without --access-log:\n{}",
        quiet.stderr()
    );
}

/// What the host lends an app (ABI 1.3) outlives the request's answer: testkit keeps a whole
/// request in a static, and describes it after other requests came and went. The kept request
/// is larger than the host keeps inline (a long header, more headers than its inline list),
/// so both the inline and the spilled storage are read after the fact.
async fn a_kept_request_reads_what_the_client_sent(proto: Proto) {
    let berth = Berth::with_apps(&["fixture_testkit"]);
    let long = "v".repeat(300);
    let url = berth.url("/testkit/keep?a=1&b=two");
    let mut headers = vec![
        ("x-dup", "first"),
        ("x-long", long.as_str()),
        ("x-dup", "second"),
    ];
    let extra: Vec<String> = (0..6).map(|i| format!("value-{i}")).collect();
    let names = ["x-e0", "x-e1", "x-e2", "x-e3", "x-e4", "x-e5"];
    headers.extend(names.iter().copied().zip(extra.iter().map(String::as_str)));
    let reply = send(Req {
        proto,
        method: Method::GET,
        url: &url,
        headers: &headers,
        body: b"",
    })
    .await;
    assert_eq!(
        (reply.status.as_u16(), reply.text()),
        (200, "kept\n".into())
    );
    // Other requests, with heads of their own, come and go before the kept one is read.
    for i in 0..20 {
        let churn = "c".repeat(i * 20);
        let url = berth.url(&format!("/testkit/ok?i={i}"));
        let reply = send(Req {
            proto,
            method: Method::GET,
            url: &url,
            headers: &[("x-churn", churn.as_str())],
            body: b"",
        })
        .await;
        assert_eq!(reply.status, 200);
    }
    let described = get(&berth.url("/testkit/kept")).await.text();
    let lines: Vec<&str> = described.lines().collect();
    let target = "/testkit/keep?a=1&b=two";
    assert!(
        lines[1].starts_with("uri ") && lines[1].ends_with(target),
        "{described}"
    );
    assert_eq!(
        lines[..5]
            .iter()
            .copied()
            .filter(|l| !l.starts_with("uri "))
            .collect::<Vec<_>>(),
        [
            "method GET",
            "prefix /testkit",
            "path /keep",
            "query a=1&b=two"
        ],
        "{described}"
    );
    let expected_long = format!("x-long: {long}");
    let mut wanted = vec!["x-dup: first", "x-dup: second", expected_long.as_str()];
    let extra_lines: Vec<String> = names
        .iter()
        .zip(&extra)
        .map(|(name, value)| format!("{name}: {value}"))
        .collect();
    wanted.extend(extra_lines.iter().map(String::as_str));
    let got: Vec<&str> = lines[5..]
        .iter()
        .copied()
        .filter(|line| line.starts_with("x-"))
        .collect();
    assert_eq!(got, wanted, "{described}");
}

#[tokio::test]
async fn a_kept_request_reads_what_the_client_sent_over_http1() {
    a_kept_request_reads_what_the_client_sent(Proto::Http1).await;
}

#[tokio::test]
async fn a_kept_request_reads_what_the_client_sent_over_http2() {
    a_kept_request_reads_what_the_client_sent(Proto::Http2).await;
}
