//! Boundary cost: one request crossing host → app → host, against the same handler called
//! directly.
//!
//! Run with:
//!
//! ```sh
//! cargo build --release -p hello
//! cargo bench -p berth-server --bench boundary                 # full run
//! cargo bench -p berth-server --bench boundary -- --quick      # a few seconds (CI smoke)
//! ```
//!
//! * `boundary/abi`: the real `hello` app's release cdylib, loaded through the host's loader
//!   ([`LoadedApp`]), called with a GET and an empty body: the host builds the borrowed request
//!   view, calls the plugin's `handle` through the C ABI, polls the returned `FfiFuture` to
//!   completion, converts the outcome back into status and headers, and drains the body (one
//!   chunk) through its `poll_chunk`.
//! * `boundary/direct`: the same handler compiled into this binary — an async fn building the
//!   same `200 text/plain` response from the same `http` and `bytes` types — polled the same way
//!   and taken apart into the same status, headers and body.
//!
//! Both run on one tokio current-thread runtime, one `block_on` per request, from the same
//! already-parsed request (three headers, as curl sends). At the end, the difference per request
//! is printed next to the target of issue 5 (≤ 1 µs over the direct call).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use berth_server::embed::LoadedApp;
use bytes::{Bytes, BytesMut};
use criterion::Criterion;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};

/// Issue 5's target for the boundary's cost over the direct call.
const TARGET_NS: f64 = 1000.0;

/// What both sides answer.
const HELLO: &str = "Hello, world!\n";

fn main() {
    let started = SystemTime::now();
    let mut criterion = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let app = load_hello();
    let request = sample_request();

    // Both sides must give the same answer, or the comparison means nothing.
    let via_abi = runtime.block_on(through_abi(&app, &request));
    let compiled_in = runtime.block_on(direct(&request));
    assert_eq!(
        via_abi, compiled_in,
        "the app and the direct handler disagree"
    );
    assert_eq!(
        (via_abi.0, &via_abi.2[..]),
        (StatusCode::OK, HELLO.as_bytes())
    );

    let mut group = criterion.benchmark_group("boundary");
    group.bench_function("direct", |b| {
        b.iter(|| runtime.block_on(direct(black_box(&request))))
    });
    group.bench_function("abi", |b| {
        b.iter(|| runtime.block_on(through_abi(&app, black_box(&request))))
    });
    group.finish();
    criterion.final_summary();
    summarize(started);
}

/// A GET for `/` with an empty body and the headers curl sends.
fn sample_request() -> Request<Bytes> {
    Request::builder()
        .method(Method::GET)
        .uri("/")
        .header("host", "127.0.0.1:8080")
        .header("user-agent", "curl/8.5.0")
        .header("accept", "*/*")
        .body(Bytes::new())
        .expect("a valid request")
}

type Answer = (StatusCode, HeaderMap, Bytes);

/// host → app → host: the whole exchange through the C ABI.
async fn through_abi(app: &LoadedApp, request: &Request<Bytes>) -> Answer {
    let answer = app
        .call(
            request.method(),
            request.uri(),
            request.headers(),
            request.body().clone(),
        )
        .await;
    answer.expect("hello answers")
}

/// The same handler as the `hello` app (`Response::text("Hello, world!\n")`: a `String` body and
/// one inserted header), compiled in.
async fn hello(_request: &Request<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(String::from(HELLO))));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The direct call, its response taken apart and its body drained like the app's.
async fn direct(request: &Request<Bytes>) -> Answer {
    let (parts, mut body) = hello(request).await.into_parts();
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame.expect("infallible").into_data() else {
            continue;
        };
        match &first {
            None => first = Some(chunk),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&chunk);
            }
        }
    }
    let body = if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    };
    (parts.status, parts.headers, body)
}

// ---------------------------------------------------------------------------------------------
// Finding the app
// ---------------------------------------------------------------------------------------------

/// Loads the `hello` cdylib of this bench's profile (`target/release` under `cargo bench`).
fn load_hello() -> LoadedApp {
    let file = format!(
        "{}hello{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let candidates = candidate_dirs();
    let Some(path) = candidates
        .iter()
        .map(|dir| dir.join(&file))
        .find(|path| path.is_file())
    else {
        let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
        eprintln!(
            "error: {file} not found (looked in {}).\n\
             Build the sample app first: cargo build --release -p hello",
            looked.join(", ")
        );
        std::process::exit(2);
    };
    match LoadedApp::load(&path) {
        Ok(app) => app,
        Err(err) => {
            eprintln!(
                "error: cannot load {}: {err}\n\
                 Rebuild it against this berth-app: cargo build --release -p hello",
                path.display()
            );
            std::process::exit(2);
        }
    }
}

/// Where the cdylib may be: beside this executable's profile directory (`<target>/release`
/// for `<target>/release/deps/boundary-*`), then under `$CARGO_TARGET_DIR/release`, then the
/// workspace's `target/release`.
fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(profile) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()))
    {
        dirs.push(profile);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        dirs.push(root.join(target).join("release"));
    }
    dirs.push(root.join("target").join("release"));
    dirs
}

// ---------------------------------------------------------------------------------------------
// The summary
// ---------------------------------------------------------------------------------------------

/// Prints the difference per request from the estimates criterion just saved (skipped when a
/// filter or `--profile-time` left one of them unmeasured in this run).
fn summarize(started: SystemTime) {
    let Some(home) = criterion_home() else {
        return;
    };
    let estimate = |name: &str| read_estimate(&home.join("boundary").join(name), started);
    let (Some(direct), Some(abi)) = (estimate("direct"), estimate("abi")) else {
        return;
    };
    let overhead = abi - direct;
    let verdict = if overhead <= TARGET_NS {
        "within"
    } else {
        "OVER"
    };
    println!(
        "boundary cost per request: direct {direct:.1} ns, through the ABI {abi:.1} ns, \
         difference {overhead:.1} ns ({verdict} the target of {TARGET_NS:.0} ns)"
    );
}

/// Criterion's output directory, found the way criterion finds it.
fn criterion_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    // `<target>/release/deps/boundary-*`
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The time per iteration criterion reports for one benchmark (its slope estimate, or the mean
/// when it sampled flat), if it was measured after `since`.
fn read_estimate(dir: &Path, since: SystemTime) -> Option<f64> {
    let file = dir.join("new").join("estimates.json");
    let modified = std::fs::metadata(&file).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let text = std::fs::read_to_string(&file).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let slope = &json["slope"]["point_estimate"];
    slope
        .as_f64()
        .or_else(|| json["mean"]["point_estimate"].as_f64())
}
