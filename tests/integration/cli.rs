//! Flags, environment variables, `--help` and exit codes.

use std::time::{Duration, Instant};

use crate::harness::{Berth, Req, encode, get, run_berth, send};
use crate::upstream::{HangEvent, HangServer};

#[test]
fn help_lists_every_flag() {
    let (status, stdout, stderr) = run_berth(&["--help"], Duration::from_secs(10));
    assert!(
        status.success(),
        "--help exited with {status}; stderr:\n{stderr}"
    );
    for flag in [
        "--apps-dir",
        "--listen",
        "--drain-timeout",
        "--outbound-timeout",
    ] {
        assert!(
            stdout.contains(flag),
            "--help does not mention {flag}:\n{stdout}"
        );
    }
}

#[test]
fn missing_apps_dir_exits_with_2_and_names_the_path() {
    let parent = tempfile::tempdir().expect("tempdir");
    let missing = parent.path().join("no-such-apps-dir");
    let mut berth = Berth::builder().apps_dir(&missing).spawn();
    let status = berth.wait_exit_blocking(Duration::from_secs(10));
    let stderr = berth.stderr();
    assert_eq!(
        status.code(),
        Some(2),
        "exit status {status}; stderr:\n{stderr}"
    );
    let path = missing.display().to_string();
    assert!(
        stderr.contains(&path),
        "stderr does not name {path}:\n{stderr}"
    );
}

#[tokio::test]
async fn environment_variables_configure_the_server() {
    // BERTH_APPS_DIR and BERTH_LISTEN instead of flags; BERTH_OUTBOUND_TIMEOUT observed through
    // an outbound call to a server that never answers.
    let mut hang = HangServer::start();
    let berth = Berth::builder()
        .app("hello")
        .app("fixture_testkit")
        .config_through_env()
        .env("BERTH_OUTBOUND_TIMEOUT", "1")
        .start();

    let reply = get(&berth.url("/hello")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello, world!\n");

    let url = berth.url(&format!("/testkit/fetch?url={}", encode(&hang.url("/"))));
    let started = Instant::now();
    let reply = send(Req::get(&url)).await;
    let elapsed = started.elapsed();
    assert_eq!(
        reply.status,
        502,
        "testkit/fetch of a hanging upstream: {}",
        reply.text()
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "BERTH_OUTBOUND_TIMEOUT=1 should fail the fetch after about 1 s, took {elapsed:?}"
    );
    assert_eq!(
        hang.next_event(Duration::from_secs(1)).await,
        Some(HangEvent::Request(0))
    );
}

#[tokio::test]
async fn berth_variables_of_the_developers_shell_do_not_reach_the_server() {
    // Every variable Berth reads, each with a value that would stop it from starting or would
    // change what a test sees, plus one Berth does not read yet: the harness drops them all by
    // their prefix, so this berth starts as any other and serves `hello`.
    let shell = [
        ("BERTH_CONFIG", "/nonexistent/berth.toml"),
        ("BERTH_APPS_DIR", "/nonexistent/apps"),
        ("BERTH_LISTEN", "not an address"),
        ("BERTH_ADMIN_LISTEN", "not an address"),
        ("BERTH_DRAIN_TIMEOUT", "soon"),
        ("BERTH_OUTBOUND_TIMEOUT", "soon"),
        ("BERTH_REQUEST_TIMEOUT", "soon"),
        ("BERTH_TLS_CERT", "/nonexistent/cert.pem"),
        ("BERTH_TLS_KEY", "/nonexistent/key.pem"),
        ("BERTH_OUTBOUND_CA_FILE", "/nonexistent/ca.pem"),
        ("BERTH_ALLOW_OUTBOUND", "ftp://example.com"),
        ("BERTH_MAX_BODY_SIZE", "huge"),
        ("BERTH_MAX_CONNECTIONS", "many"),
        ("BERTH_HEADER_READ_TIMEOUT", "soon"),
        ("BERTH_KEEPALIVE_TIMEOUT", "soon"),
        ("BERTH_NO_WATCH", "1"),
        ("BERTH_ACCESS_LOG", "1"),
        ("BERTH_NOT_READ_YET", "1"),
    ];
    let berth = shell
        .iter()
        .fold(Berth::builder().app("hello"), |builder, (key, value)| {
            builder.shell_env(key, value)
        })
        .start();
    let reply = get(&berth.url("/hello")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "Hello, world!\n");
}

#[tokio::test]
async fn outbound_timeout_flag_limits_outbound_requests() {
    let mut hang = HangServer::start();
    let berth = Berth::builder()
        .app("fixture_testkit")
        .args(&["--outbound-timeout", "1"])
        .start();
    let url = berth.url(&format!("/testkit/fetch?url={}", encode(&hang.url("/"))));
    let started = Instant::now();
    let reply = get(&url).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply.text().starts_with("fetch failed: "),
        "{:?}",
        reply.text()
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "--outbound-timeout 1 should fail the fetch after about 1 s, took {elapsed:?}"
    );
    assert_eq!(
        hang.next_event(Duration::from_secs(1)).await,
        Some(HangEvent::Request(0))
    );
}

/// Berth raises its soft open-file limit to the hard one at start, and warns when even that is
/// too low for `--max-connections` (each connection may hold an outbound socket too).
#[tokio::test]
async fn raises_the_open_file_limit_and_warns_when_it_is_low() {
    let berth = Berth::builder()
        .app("hello")
        .args(&["--max-connections", "100000000"])
        .start();
    berth
        .wait_for_log(
            &["open-file limit is", "--max-connections"],
            Duration::from_secs(5),
        )
        .await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", berth.pid()))
        .expect("read /proc/<pid>/limits");
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("an open-files line");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers.len(), 2, "{open_files}");
    assert_eq!(
        numbers[0], numbers[1],
        "soft limit not raised: {open_files}"
    );
    assert_eq!(get(&berth.url("/hello")).await.status, 200);
}
