//! Hot reload: watching the apps directory, swapping a running app without failing a request,
//! retiring old versions only after their last request, keeping the old version when the new
//! one is broken, unmounting removed files, and what 200 swaps cost in memory.
//!
//! Most tests swap `swap.so` between the `fixture-swap-a` build (version 1.0.0, answers `A`) and
//! the `fixture-swap-b` build (version 2.0.0, answers `B`).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::harness::{
    Berth, Builds, Replace, Req, SWAP_SO, admin_apps, app_entry, cdylib, get, post,
    proc_status_kib, replace, replace_with_bytes, try_send, wait_for_apps,
};

/// How long a swap, a load or an unmount may take to become visible.
const SWAP_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// GETs `url` until it answers 200 with `body`; panics with the last answer and berth's stderr
/// after `timeout`. Returns how long it took.
async fn wait_for_answer(berth: &Berth, path: &str, body: &str, timeout: Duration) -> Duration {
    let url = berth.url(path);
    let started = Instant::now();
    loop {
        let last = match try_send(Req::get(&url)).await {
            Ok(reply) if reply.status == 200 && reply.text() == body => return started.elapsed(),
            Ok(reply) => format!("{} {:?}", reply.status, reply.text()),
            Err(err) => err,
        };
        assert!(
            started.elapsed() < timeout,
            "GET {path} did not answer 200 {body:?} within {timeout:?}; last answer: {last}; \
             stderr:\n{}",
            berth.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `path` until it answers `status`; panics after `timeout`.
async fn wait_for_status(berth: &Berth, path: &str, status: u16, timeout: Duration) {
    let url = berth.url(path);
    let started = Instant::now();
    loop {
        let last = match try_send(Req::get(&url)).await {
            Ok(reply) if reply.status == status => return,
            Ok(reply) => format!("{} {:?}", reply.status, reply.text()),
            Err(err) => err,
        };
        assert!(
            started.elapsed() < timeout,
            "GET {path} did not answer {status} within {timeout:?}; last answer: {last}; \
             stderr:\n{}",
            berth.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether an admin `/apps` document reports an error for `app` (its `last_error`) or for
/// `file` (an entry of `failed`); returns the message.
fn reported_error(apps: &Value, app: &str, file: &str) -> Option<String> {
    let last_error = app_entry(apps, app)
        .and_then(|entry| entry["last_error"].as_str())
        .map(str::to_owned);
    let failed = apps["failed"].as_array().and_then(|failed| {
        failed
            .iter()
            .find(|entry| {
                entry["file"]
                    .as_str()
                    .is_some_and(|path| path.ends_with(file))
            })
            .and_then(|entry| entry["error"].as_str())
            .map(str::to_owned)
    });
    last_error.or(failed)
}

// ---------------------------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------------------------

/// Upper bound for any load run, whatever the test does.
const LOAD_HARD_LIMIT: Duration = Duration::from_secs(90);

/// Upper bound for one request under load; a slower one counts as failed.
const LOAD_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Real HTTP clients hitting one URL until stopped: some on keep-alive connections (HTTP/1.1
/// and HTTP/2), some opening a new connection per request.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<LoadReport>>,
    started: Instant,
}

/// What the clients of a [`Load`] saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Successful responses by body.
    pub answers: BTreeMap<String, u64>,
    /// Number of failed requests (error, reset, timeout, non-200 status, unexpected body).
    pub failed: u64,
    /// The first few failures, described.
    pub failures: Vec<String>,
    /// How long the load ran.
    pub elapsed: Duration,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        for (answer, count) in other.answers {
            *self.answers.entry(answer).or_default() += count;
        }
        self.failed += other.failed;
        self.failures.extend(other.failures);
        self.failures.truncate(20);
    }

    fn record(&mut self, outcome: Result<(u16, String), String>, allowed: &[&str]) {
        match outcome {
            Ok((200, body)) if allowed.contains(&body.as_str()) => {
                *self.answers.entry(body).or_default() += 1;
            }
            Ok((status, body)) => self.fail(format!("{status} {body:?}")),
            Err(err) => self.fail(err),
        }
    }

    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.failures.len() < 20 {
            self.failures.push(what);
        }
    }

    /// The total number of successful requests.
    pub fn ok(&self) -> u64 {
        self.answers.values().sum()
    }
}

impl Load {
    /// Starts `keep_alive` HTTP/1.1 keep-alive clients, `h2` HTTP/2 clients and `fresh` clients
    /// that open a new connection for every request, all GETting `url`; a 200 whose body is one
    /// of `allowed` is a success, anything else a failure.
    pub fn start(url: &str, allowed: &[&str], keep_alive: usize, h2: usize, fresh: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let allowed: Arc<Vec<String>> = Arc::new(allowed.iter().map(|s| (*s).to_owned()).collect());
        let mut tasks = Vec::new();
        for http2 in std::iter::repeat_n(false, keep_alive).chain(std::iter::repeat_n(true, h2)) {
            tasks.push(tokio::spawn(keep_alive_client(
                url.to_owned(),
                http2,
                Arc::clone(&allowed),
                Arc::clone(&stop),
            )));
        }
        for _ in 0..fresh {
            tasks.push(tokio::spawn(fresh_connection_client(
                url.to_owned(),
                Arc::clone(&allowed),
                Arc::clone(&stop),
            )));
        }
        Load {
            stop,
            tasks,
            started: Instant::now(),
        }
    }

    /// Stops the clients and adds up what they saw.
    pub async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport::default();
        for task in self.tasks {
            report.merge(task.await.expect("load task"));
        }
        report.elapsed = self.started.elapsed();
        report
    }
}

fn allowed_refs(allowed: &[String]) -> Vec<&str> {
    allowed.iter().map(String::as_str).collect()
}

async fn keep_alive_client(
    url: String,
    http2: bool,
    allowed: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let uri: hyper::Uri = url.parse().expect("load URL");
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(http2);
    let client = builder.build_http::<Full<Bytes>>();
    let allowed = allowed_refs(&allowed);
    let started = Instant::now();
    let mut report = LoadReport::default();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_HARD_LIMIT {
        let exchange = async {
            let response = client
                .get(uri.clone())
                .await
                .map_err(|err| format!("request failed: {err:?}"))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| format!("body failed after {status}: {err:?}"))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        let outcome = tokio::time::timeout(LOAD_REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no response within {LOAD_REQUEST_TIMEOUT:?}")));
        let proto = if http2 {
            "h2 keep-alive"
        } else {
            "h1 keep-alive"
        };
        report.record(outcome.map_err(|err| format!("{proto}: {err}")), &allowed);
        // Leave some CPU to the server and the other tests.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    report
}

async fn fresh_connection_client(
    url: String,
    allowed: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
) -> LoadReport {
    let allowed = allowed_refs(&allowed);
    let started = Instant::now();
    let mut report = LoadReport::default();
    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_HARD_LIMIT {
        // `try_send` builds a new client, so every request opens a new connection.
        let outcome = try_send(Req::get(&url))
            .await
            .map(|reply| (reply.status.as_u16(), reply.text()))
            .map_err(|err| format!("new connection: {err}"));
        report.record(outcome, &allowed);
        // Bounded rate: every request leaves a socket in TIME_WAIT.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    report
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_fail_no_request() {
    const SWAPS: usize = 50;
    const TOTAL_LIMIT: Duration = Duration::from_secs(75);
    let builds = Builds::new();
    let berth = Berth::builder().app_as("fixture_swap_a", SWAP_SO).start();
    wait_for_answer(&berth, "/swap/", "A\n", SWAP_TIMEOUT).await;

    let load = Load::start(&berth.url("/swap/"), &["A\n", "B\n"], 3, 1, 2);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for swap in 0..SWAPS {
        let (build, answer) = if swap % 2 == 0 {
            (&builds.b, "B\n")
        } else {
            (&builds.a, "A\n")
        };
        // Every fifth swap is a plain `cp` over the loaded file; the rest are atomic renames.
        let how = if swap % 5 == 4 {
            Replace::InPlace
        } else {
            Replace::Rename
        };
        let swap_started = Instant::now();
        replace(berth.apps_dir(), SWAP_SO, build, how);
        wait_for_answer(&berth, "/swap/", answer, SWAP_TIMEOUT).await;
        slowest = slowest.max(swap_started.elapsed());
        assert!(
            started.elapsed() < TOTAL_LIMIT,
            "{swap} swaps took longer than {TOTAL_LIMIT:?}"
        );
    }
    let swaps_took = started.elapsed();
    let report = load.finish().await;
    eprintln!(
        "{SWAPS} swaps in {swaps_took:?} (slowest {slowest:?}, average {:?}); load: {} ok {:?}, \
         {} failed in {:?}",
        swaps_took / SWAPS as u32,
        report.ok(),
        report.answers,
        report.failed,
        report.elapsed
    );
    assert_eq!(
        report.failed, 0,
        "requests failed during the swaps: {:?}",
        report.failures
    );
    for answer in ["A\n", "B\n"] {
        assert!(
            report.answers.get(answer).copied().unwrap_or(0) > 0,
            "the load never saw {answer:?}: {:?}",
            report.answers
        );
    }

    // Every replaced version is retired once its last request is done.
    let apps = wait_for_apps(&berth, "50 retired versions", SWAP_TIMEOUT, |apps| {
        apps["retiring"].as_array().is_some_and(Vec::is_empty)
            && apps["retired"].as_u64().is_some_and(|n| n >= SWAPS as u64)
    })
    .await;
    eprintln!("after {SWAPS} swaps: retired = {}", apps["retired"]);
    let swap = app_entry(&apps, "swap").expect("swap is listed");
    assert_eq!(swap["version"], "1.0.0", "{swap}");
    assert_eq!(get(&berth.admin_url("/healthz")).await.status, 200);
}

#[tokio::test]
async fn a_slow_request_finishes_on_the_old_version_which_retires_after_it() {
    const SLOW_MS: u64 = 3000;
    let builds = Builds::new();
    let berth = Berth::builder().app_as("fixture_swap_a", SWAP_SO).start();
    let before = admin_apps(&berth).await;
    let old_id = app_entry(&before, "swap").expect("swap is listed")["id"].clone();

    let slow_url = berth.url(&format!("/swap/slow?ms={SLOW_MS}"));
    let slow_started = Instant::now();
    let slow = tokio::spawn(async move { try_send(Req::get(&slow_url)).await });
    wait_for_apps(&berth, "the slow request in flight", SWAP_TIMEOUT, |apps| {
        app_entry(apps, "swap").is_some_and(|swap| swap["in_flight"].as_u64() == Some(1))
    })
    .await;

    replace(berth.apps_dir(), SWAP_SO, &builds.b, Replace::Rename);
    let swapped_after = wait_for_answer(&berth, "/swap/", "B\n", SWAP_TIMEOUT).await;
    eprintln!("new version answering {swapped_after:?} after the rename");
    // New requests go to the new version from now on.
    for _ in 0..5 {
        let reply = get(&berth.url("/swap/")).await;
        assert_eq!(reply.text(), "B\n");
    }

    // While the slow request runs, the old version is retiring, not retired.
    let apps = admin_apps(&berth).await;
    let retiring = apps["retiring"]
        .as_array()
        .unwrap_or_else(|| panic!("no `retiring` array: {apps:#}"));
    assert_eq!(retiring.len(), 1, "{apps:#}");
    assert_eq!(retiring[0]["name"], "swap", "{apps:#}");
    assert_eq!(retiring[0]["id"], old_id, "{apps:#}");
    assert_eq!(retiring[0]["in_flight"], 1, "{apps:#}");
    let new = app_entry(&apps, "swap").expect("swap is listed");
    assert_eq!(new["version"], "2.0.0", "{apps:#}");
    assert_ne!(new["id"], old_id, "{apps:#}");

    // Keep checking until shortly before the slow request is due to finish.
    let retired_too_early = |berth: &Berth| {
        berth
            .stderr_lines()
            .into_iter()
            .find(|line| line.contains("retired app version") || line.contains("swap A shutting"))
    };
    while slow_started.elapsed() < Duration::from_millis(SLOW_MS - 300) {
        if let Some(line) = retired_too_early(&berth) {
            panic!("the old version was retired while a request on it was running: {line}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let reply = slow
        .await
        .expect("slow request task")
        .expect("the slow request completes");
    let slow_took = slow_started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "A slow\n",
        "the slow request started on version A"
    );

    let retired = berth
        .wait_for_log(&["retired app version", "swap"], SWAP_TIMEOUT)
        .await;
    berth
        .wait_for_log(&["swap A shutting down"], SWAP_TIMEOUT)
        .await;
    eprintln!("slow request took {slow_took:?}; then: {retired}");
    let apps = wait_for_apps(&berth, "nothing retiring", SWAP_TIMEOUT, |apps| {
        apps["retiring"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    assert_eq!(apps["retired"], 1, "{apps:#}");
    // The shutdown hook of the old version ran; the new one's did not.
    assert!(
        !berth.stderr().contains("swap B shutting down"),
        "{}",
        berth.stderr()
    );
}

/// The handler's future is done as soon as the head is sent; the version must stay until the
/// body has been streamed to the end too.
#[tokio::test]
async fn a_streaming_body_keeps_the_old_version_until_it_ends() {
    const STREAM_MS: u64 = 2000;
    let builds = Builds::new();
    let berth = Berth::builder().app_as("fixture_swap_a", SWAP_SO).start();

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri: hyper::Uri = berth
        .url(&format!("/swap/stream?ms={STREAM_MS}"))
        .parse()
        .expect("URI");
    let started = Instant::now();
    let response = client.get(uri).await.expect("response head");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body
        .frame()
        .await
        .expect("a first frame")
        .expect("first frame ok")
        .into_data()
        .expect("data");
    assert_eq!(&first[..], b"A streaming\n");

    replace(berth.apps_dir(), SWAP_SO, &builds.b, Replace::Rename);
    wait_for_answer(&berth, "/swap/", "B\n", SWAP_TIMEOUT).await;
    let apps = admin_apps(&berth).await;
    eprintln!("swapped while a body streams: {apps}");
    assert_eq!(
        apps["retiring"].as_array().map(Vec::len),
        Some(1),
        "the old version should be retiring while its body streams: {apps:#}"
    );
    while started.elapsed() < Duration::from_millis(STREAM_MS - 300) {
        assert!(
            !berth.stderr().contains("swap A shutting down"),
            "the old version was shut down while its response body was streaming:\n{}",
            berth.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let rest = tokio::time::timeout(SWAP_TIMEOUT, body.collect())
        .await
        .expect("the body ends")
        .expect("the body completes")
        .to_bytes();
    assert_eq!(&rest[..], b"A done\n");
    berth
        .wait_for_log(&["swap A shutting down"], SWAP_TIMEOUT)
        .await;
    berth
        .wait_for_log(&["retired app version", "swap"], SWAP_TIMEOUT)
        .await;
}

#[tokio::test]
async fn copying_over_the_loaded_file_swaps_without_a_crash() {
    let builds = Builds::new();
    let berth = Berth::builder().app_as("fixture_swap_a", SWAP_SO).start();
    wait_for_answer(&berth, "/swap/", "A\n", SWAP_TIMEOUT).await;
    // `std::fs::copy` truncates and rewrites the file, as `cp` does.
    replace(berth.apps_dir(), SWAP_SO, &builds.b, Replace::InPlace);
    let took = wait_for_answer(&berth, "/swap/", "B\n", SWAP_TIMEOUT).await;
    eprintln!("in-place copy: B answering after {took:?}");
    replace(berth.apps_dir(), SWAP_SO, &builds.a, Replace::InPlace);
    wait_for_answer(&berth, "/swap/", "A\n", SWAP_TIMEOUT).await;
    assert_eq!(get(&berth.admin_url("/healthz")).await.status, 200);
    berth
        .wait_for_log(&["swap B shutting down"], SWAP_TIMEOUT)
        .await;
}

#[tokio::test]
async fn a_file_written_slowly_is_not_loaded_half_way() {
    const PIECES: usize = 20;
    let builds = Builds::new();
    let berth = Berth::builder().app_as("fixture_swap_a", SWAP_SO).start();
    wait_for_answer(&berth, "/swap/", "A\n", SWAP_TIMEOUT).await;

    let contents = std::fs::read(&builds.b).expect("read build B");
    let piece = contents.len().div_ceil(PIECES);
    let target = berth.apps_dir().join(SWAP_SO);
    let mut file = std::fs::File::create(&target).expect("truncate swap.so");
    let started = Instant::now();
    for (index, chunk) in contents.chunks(piece).enumerate() {
        file.write_all(chunk).expect("write a piece");
        file.flush().expect("flush");
        if index == PIECES / 2 {
            // Half a library sits there for longer than the debounce: berth looks at it, refuses
            // it, reports that, and keeps serving A.
            let apps = wait_for_apps(
                &berth,
                "the half-written swap.so refused",
                SWAP_TIMEOUT,
                |apps| reported_error(apps, "swap", SWAP_SO).is_some(),
            )
            .await;
            eprintln!(
                "with half of swap.so written, /apps reports: {:?}",
                reported_error(&apps, "swap", SWAP_SO)
            );
            let reply = get(&berth.url("/swap/")).await;
            assert_eq!(
                (reply.status.as_u16(), reply.text().as_str()),
                (200, "A\n"),
                "half-written file"
            );
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(file);
    let written = started.elapsed();
    let took = wait_for_answer(&berth, "/swap/", "B\n", SWAP_TIMEOUT).await;
    eprintln!(
        "slow write of {} bytes in {PIECES} pieces took {written:?}; B answering {took:?} later",
        contents.len()
    );
    assert_eq!(get(&berth.admin_url("/healthz")).await.status, 200);
    let apps = admin_apps(&berth).await;
    assert_eq!(
        app_entry(&apps, "swap").expect("swap is listed")["version"],
        "2.0.0",
        "{apps:#}"
    );
    // The complete file loaded, so nothing is reported any more.
    assert_eq!(reported_error(&apps, "swap", SWAP_SO), None, "{apps:#}");
}

/// Replaces a working `swap.so` (build A) with `broken` and checks that A keeps serving and
/// that `/apps` reports an error containing `expected_error`.
async fn broken_replacement_keeps_the_old_version(broken: &[u8], expected_error: &str) {
    let berth = Berth::builder().app_as("fixture_swap_a", SWAP_SO).start();
    wait_for_answer(&berth, "/swap/", "A\n", SWAP_TIMEOUT).await;
    replace_with_bytes(berth.apps_dir(), SWAP_SO, broken);
    let apps = wait_for_apps(&berth, "an error for swap.so", SWAP_TIMEOUT, |apps| {
        reported_error(apps, "swap", SWAP_SO).is_some()
    })
    .await;
    let error = reported_error(&apps, "swap", SWAP_SO).expect("reported");
    eprintln!("/apps reports: {error}");
    assert!(
        error.contains(expected_error),
        "the error should contain {expected_error:?}: {apps:#}"
    );
    let swap = app_entry(&apps, "swap").expect("the old version is still listed");
    assert_eq!(swap["version"], "1.0.0", "{apps:#}");
    for _ in 0..3 {
        let reply = get(&berth.url("/swap/")).await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "A\n"));
    }
    assert!(
        !berth.stderr().contains("swap A shutting down"),
        "the old version must not be shut down: {}",
        berth.stderr()
    );
}

#[tokio::test]
async fn a_wrong_abi_replacement_keeps_the_old_version() {
    let broken = std::fs::read(cdylib("fixture_bad_abi")).expect("read bad-abi");
    broken_replacement_keeps_the_old_version(&broken, "99").await;
}

#[tokio::test]
async fn a_text_file_replacement_keeps_the_old_version() {
    broken_replacement_keeps_the_old_version(b"not a library, just text\n", "").await;
}

#[tokio::test]
async fn an_init_failure_replacement_keeps_the_old_version() {
    let broken = std::fs::read(cdylib("fixture_init_fail")).expect("read init-fail");
    broken_replacement_keeps_the_old_version(&broken, "refusing to start: no database").await;
}

#[tokio::test]
async fn removing_the_file_unmounts_after_in_flight_requests() {
    let berth = Berth::builder().app_as("fixture_swap_a", SWAP_SO).start();
    let slow_url = berth.url("/swap/slow?ms=2000");
    let slow = tokio::spawn(async move { try_send(Req::get(&slow_url)).await });
    wait_for_apps(&berth, "the slow request in flight", SWAP_TIMEOUT, |apps| {
        app_entry(apps, "swap").is_some_and(|swap| swap["in_flight"].as_u64() == Some(1))
    })
    .await;
    let removed_at = Instant::now();
    std::fs::remove_file(berth.apps_dir().join(SWAP_SO)).expect("remove swap.so");

    // What a new request sees while the old one still runs (either is defensible: unmounted at
    // once, or still served by the old version until it retires).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let during = get(&berth.url("/swap/")).await;
    eprintln!(
        "GET /swap/ {:?} after the removal, with a request in flight: {} {:?}",
        removed_at.elapsed(),
        during.status,
        during.text()
    );
    assert!(
        !berth.stderr().contains("swap A shutting down"),
        "the app was shut down while a request on it was running"
    );

    let reply = slow
        .await
        .expect("slow request task")
        .expect("the in-flight request completes");
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "A slow\n")
    );
    wait_for_status(&berth, "/swap/", 404, SWAP_TIMEOUT).await;
    berth
        .wait_for_log(&["swap A shutting down"], SWAP_TIMEOUT)
        .await;
    let apps = wait_for_apps(&berth, "swap gone", SWAP_TIMEOUT, |apps| {
        app_entry(apps, "swap").is_none() && apps["retiring"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    eprintln!("after the removal: {apps}");
}

#[tokio::test]
async fn a_new_file_is_loaded_and_mounted() {
    let berth = Berth::builder().start();
    assert_eq!(get(&berth.url("/hello")).await.status, 404);
    replace(
        berth.apps_dir(),
        "hello.so",
        &cdylib("hello"),
        Replace::Rename,
    );
    let took = wait_for_answer(&berth, "/hello", "Hello, world!\n", SWAP_TIMEOUT).await;
    eprintln!("hello.so mounted {took:?} after it appeared");
    // A plain copy (not a rename) is picked up too.
    std::fs::copy(cdylib("fixture_swap_a"), berth.apps_dir().join(SWAP_SO)).expect("copy");
    wait_for_answer(&berth, "/swap/", "A\n", SWAP_TIMEOUT).await;
}

#[tokio::test]
async fn without_watching_sighup_rescans() {
    let builds = Builds::new();
    let berth = Berth::builder()
        .app_as("fixture_swap_a", SWAP_SO)
        .args(&["--no-watch"])
        .start();
    replace(berth.apps_dir(), SWAP_SO, &builds.b, Replace::Rename);
    replace(
        berth.apps_dir(),
        "hello.so",
        &cdylib("hello"),
        Replace::Rename,
    );
    // Well past the debounce: nothing changes without a signal.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(get(&berth.url("/swap/")).await.text(), "A\n");
    assert_eq!(get(&berth.url("/hello")).await.status, 404);

    berth.sighup();
    wait_for_answer(&berth, "/swap/", "B\n", SWAP_TIMEOUT).await;
    wait_for_answer(&berth, "/hello", "Hello, world!\n", SWAP_TIMEOUT).await;

    std::fs::remove_file(berth.apps_dir().join("hello.so")).expect("remove hello.so");
    berth.sighup();
    wait_for_status(&berth, "/hello", 404, SWAP_TIMEOUT).await;
    assert_eq!(get(&berth.url("/swap/")).await.text(), "B\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_swaps_under_load_cost_at_most_1_mib_each() {
    const WARM_UP: usize = 10;
    const SWAPS: usize = 200;
    const MAX_GROWTH_PER_SWAP_KIB: u64 = 1024;
    let builds = Builds::new();
    let berth = Berth::builder()
        .app_as("fixture_swap_a", SWAP_SO)
        .args(&["--no-watch"])
        .start();
    let load = Load::start(&berth.url("/swap/"), &["A\n", "B\n"], 2, 0, 1);

    let reload_url = berth.admin_url("/apps/swap/reload");
    let mut rss_before = 0;
    let mut started = Instant::now();
    for swap in 0..WARM_UP + SWAPS {
        if swap == WARM_UP {
            rss_before = proc_status_kib(berth.pid(), "VmRSS");
            started = Instant::now();
        }
        let (build, version) = if swap % 2 == 0 {
            (&builds.b, "2.0.0")
        } else {
            (&builds.a, "1.0.0")
        };
        replace(berth.apps_dir(), SWAP_SO, build, Replace::Rename);
        let reply = post(&reload_url).await;
        assert_eq!(reply.status, 200, "reload {swap}: {}", reply.text());
        let json = reply.json();
        assert_eq!(json["app"]["version"], version, "reload {swap}: {json}");
    }
    let swaps_took = started.elapsed();
    // Let the last versions retire, then measure.
    let apps = wait_for_apps(&berth, "nothing retiring", SWAP_TIMEOUT, |apps| {
        apps["retiring"].as_array().is_some_and(Vec::is_empty)
    })
    .await;
    let rss_after = proc_status_kib(berth.pid(), "VmRSS");
    let report = load.finish().await;

    let growth = rss_after.saturating_sub(rss_before);
    let per_swap = growth / SWAPS as u64;
    eprintln!(
        "{SWAPS} swaps (after {WARM_UP} warm-up) in {swaps_took:?} ({:?} each): VmRSS {rss_before} \
         KiB -> {rss_after} KiB, +{growth} KiB, {per_swap} KiB per swap; retired = {}; load: {} \
         ok {:?}, {} failed",
        swaps_took / SWAPS as u32,
        apps["retired"],
        report.ok(),
        report.answers,
        report.failed
    );
    assert!(
        per_swap <= MAX_GROWTH_PER_SWAP_KIB,
        "VmRSS grew by {per_swap} KiB per swap on average ({rss_before} -> {rss_after} KiB)"
    );
    assert_eq!(
        report.failed, 0,
        "requests failed during the swaps: {:?}",
        report.failures
    );
    assert_eq!(get(&berth.admin_url("/healthz")).await.status, 200);
    wait_for_answer(&berth, "/swap/", "A\n", SWAP_TIMEOUT).await;
}
