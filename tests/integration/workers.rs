//! Worker processes (`--workers N`): a supervisor binds the listeners and runs N workers, each
//! loading every app. Through the `faults` fixture, an app crashes (SIGSEGV, abort, stack
//! overflow, exit), blocks its thread or leaks: only that worker goes down, only the requests in
//! flight on it fail, and the supervisor says why and where (which app, which request) and
//! replaces it. Also healthy replacements (SIGHUP, `--max-requests`, `--max-lifetime`,
//! `--worker-max-rss`), the drain on SIGTERM, workers going with a SIGKILLed supervisor, the
//! admin API asked of every worker, and the single-process `/healthz` while its only runtime
//! thread is blocked.

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::Value;

use crate::harness::{Berth, BerthBuilder, BoundedLoad, LoadPlan, Req, get, post, try_send};

/// What `/hello` answers.
const HELLO: &str = "Hello, world!\n";

/// How long every worker may take to be ready after start (debug build, shared CPUs).
const START: Duration = Duration::from_secs(15);

/// The bound: a dead worker is back (its replacement ready) this soon after its death.
const RESPAWN: Duration = Duration::from_secs(2);

/// Bound for waiting on a log line that follows an event the test has already seen.
const LOG: Duration = Duration::from_secs(5);

/// A builder for `berth --workers N` with the `faults` fixture and `hello`, plus `args`.
fn workers_builder(n: usize, args: &[&str]) -> BerthBuilder {
    Berth::builder()
        .app("fixture_faults")
        .app("hello")
        .args(&["--workers", &n.to_string()])
        .args(args)
}

/// Starts `builder` and waits until `/workers` shows `n` ready workers.
async fn start_workers(builder: BerthBuilder, n: usize) -> Berth {
    let berth = builder.start();
    wait_workers(&berth, &format!("{n} ready workers"), START, |doc| {
        ready_pids(doc).len() == n
    })
    .await;
    berth
}

/// The supervisor's `GET /workers`.
async fn workers(berth: &Berth) -> Value {
    let reply = get(&berth.admin_url("/workers")).await;
    assert_eq!(reply.status, 200, "GET /workers: {}", reply.text());
    reply.json()
}

/// Polls `/workers` until `check` accepts it; panics with the last document and the log after
/// `timeout`.
async fn wait_workers(
    berth: &Berth,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    crate::harness::wait_for_admin(berth, "/workers", what, timeout, check).await
}

/// The entries of `/workers`'s `workers` array.
fn entries(doc: &Value) -> &[Value] {
    doc["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("/workers has no `workers` array: {doc:#}"))
}

/// The pids of the workers in state `ready`.
fn ready_pids(doc: &Value) -> Vec<u32> {
    pids_in_state(doc, "ready")
}

fn pids_in_state(doc: &Value, state: &str) -> Vec<u32> {
    entries(doc)
        .iter()
        .filter(|worker| worker["state"] == state)
        .map(pid_of)
        .collect()
}

/// The pids of every worker listed, whatever its state.
fn all_pids(doc: &Value) -> Vec<u32> {
    entries(doc).iter().map(pid_of).collect()
}

fn pid_of(worker: &Value) -> u32 {
    worker["pid"]
        .as_u64()
        .and_then(|pid| u32::try_from(pid).ok())
        .unwrap_or_else(|| panic!("a worker without a pid: {worker:#}"))
}

/// The total of restarts for `reason` (0 when absent).
fn restarts(doc: &Value, reason: &str) -> u64 {
    doc["restarts"][reason].as_u64().unwrap_or(0)
}

/// The pids of the workers with a thread inside a call whose request is `request`.
fn inside(doc: &Value, request: &str) -> Vec<u32> {
    entries(doc)
        .iter()
        .filter(|worker| {
            worker["calls"]
                .as_array()
                .is_some_and(|calls| calls.iter().any(|call| call["request"] == request))
        })
        .map(pid_of)
        .collect()
}

/// The pid in a supervisor line `worker N (pid P) ...`.
fn pid_in(line: &str) -> u32 {
    let start = line
        .find("(pid ")
        .unwrap_or_else(|| panic!("no `(pid ` in {line:?}"))
        + "(pid ".len();
    let rest = &line[start..];
    let end = rest.find(')').expect("`(pid N)` closes");
    rest[..end]
        .parse()
        .unwrap_or_else(|err| panic!("bad pid in {line:?}: {err}"))
}

/// How many stderr lines so far contain every one of `needles`.
fn count_lines(berth: &Berth, needles: &[&str]) -> usize {
    berth
        .stderr_lines()
        .iter()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .count()
}

/// Waits until at least `count` stderr lines contain every one of `needles`; returns them.
async fn wait_for_lines(
    berth: &Berth,
    needles: &[&str],
    count: usize,
    timeout: Duration,
) -> Vec<String> {
    let started = Instant::now();
    loop {
        let lines: Vec<String> = berth
            .stderr_lines()
            .into_iter()
            .filter(|line| needles.iter().all(|needle| line.contains(needle)))
            .collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            started.elapsed() < timeout,
            "fewer than {count} stderr lines contain all of {needles:?} after {timeout:?} \
             (found {}); stderr:\n{}",
            lines.len(),
            berth.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` has ended: no `/proc/<pid>` any more, or a zombie (ended, not yet
/// reaped by whoever inherited it, which is not this process) none of whose threads is still
/// exiting. (The main thread of a killed process can be a zombie while its other threads are
/// still tearing down, holding the process's descriptors: its listener among them.)
fn has_ended(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // `pid (comm) S ...`: the state follows the last `)` (comm may contain one).
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next())
        .unwrap_or("?");
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    matches!(state, "Z" | "X" | "x") && threads <= 1
}

/// `GET path` on a new connection, bounded by `timeout` (an `Err` if it is not complete by
/// then).
async fn get_within(url: &str, timeout: Duration) -> Result<crate::harness::Reply, String> {
    let req = Req {
        headers: &[("connection", "close")],
        ..Req::get(url)
    };
    tokio::time::timeout(timeout, try_send(req))
        .await
        .unwrap_or_else(|_| Err(format!("no complete response within {timeout:?}")))
}

// ---------------------------------------------------------------------------------------------
// Crashes
// ---------------------------------------------------------------------------------------------

/// Under steady load on `/hello`, a segfault and then an abort in `faults` each take down one
/// worker: only requests in flight on it fail, the supervisor names the app and the request,
/// and the worker is back within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_app_takes_down_one_worker_and_only_its_requests() {
    const CLIENTS: usize = 4;
    /// Successes the load must reach before the first fault, and after each replacement.
    const PROGRESS: usize = 40;
    let berth = start_workers(workers_builder(2, &[]), 2).await;
    let origin = Instant::now();
    let plan = LoadPlan {
        clients: CLIENTS,
        max_requests: 1500,
        max_time: Duration::from_secs(40),
        pause: Duration::from_millis(5),
        ..LoadPlan::default()
    };
    let load = BoundedLoad::start(&berth.url("/hello"), HELLO, &plan);
    assert!(
        load.wait_ok(PROGRESS, Duration::from_secs(10)).await,
        "the load did not get going: {} ok, {} failed",
        load.ok(),
        load.failed()
    );

    let faults = [
        ("/faults/segv", "was killed by SIGSEGV (segmentation fault)"),
        ("/faults/abort", "was killed by SIGABRT (abort"),
    ];
    let mut sent_at = Vec::new();
    for (crash, (path, cause)) in faults.into_iter().enumerate() {
        let before = ready_pids(&workers(&berth).await);
        assert_eq!(before.len(), 2, "two ready workers before {path}");
        sent_at.push(Instant::now());
        let fault = get_within(&berth.url(path), Duration::from_secs(10)).await;
        // The client sees the connection break when the worker dies: the death is now.
        let died = Instant::now();
        assert!(
            fault.is_err(),
            "GET {path} should never be answered, its worker dies: {fault:?}"
        );
        let request = format!("inside app \"faults\", \"GET {path}\"");
        let line = berth
            .wait_for_log(&[cause, &request, "replacing it"], LOG)
            .await;
        let dead = pid_in(&line);
        assert!(
            before.contains(&dead),
            "the dead worker {dead} was one of {before:?}: {line}"
        );
        let expected_crashes = crash as u64 + 1;
        let doc = wait_workers(
            &berth,
            &format!("2 ready workers without {dead} and {expected_crashes} crash restart(s)"),
            RESPAWN.saturating_sub(died.elapsed()),
            |doc| {
                let ready = ready_pids(doc);
                ready.len() == 2
                    && !all_pids(doc).contains(&dead)
                    && restarts(doc, "crash") == expected_crashes
            },
        )
        .await;
        let respawned = died.elapsed();
        let now = ready_pids(&doc);
        let new: Vec<u32> = now
            .iter()
            .copied()
            .filter(|p| !before.contains(p))
            .collect();
        assert_eq!(
            new.len(),
            1,
            "one new worker after {path}: {before:?} -> {now:?}"
        );
        eprintln!(
            "{path}: worker {dead} died, {} back after {respawned:?}; {line}",
            new[0]
        );
        berth
            .wait_for_log(&["is ready after", &format!("(pid {})", new[0])], LOG)
            .await;
        let ok = load.ok();
        assert!(
            load.wait_ok(ok + PROGRESS, Duration::from_secs(10)).await,
            "the load did not carry on after {path}: {} ok, {} failed",
            load.ok(),
            load.failed()
        );
    }
    let report = load.stop().await;
    let summary = report.summary(origin);
    eprintln!("load: {summary}");
    assert_eq!(
        report.failed_between(origin, sent_at[0]),
        0,
        "requests failed before any fault: {summary}"
    );
    let after_segv = report.failed_between(sent_at[0], sent_at[1]);
    let after_abort = report.failed_between(sent_at[1], Instant::now());
    assert!(
        after_segv <= CLIENTS && after_abort <= CLIENTS,
        "at most one request per client (those in flight on the dead worker) may fail per \
         crash; failed {after_segv} around the segfault and {after_abort} around the abort: \
         {summary}"
    );
    assert!(
        report.ok_sent_after(sent_at[1]) >= PROGRESS,
        "requests sent after the abort succeed: {summary}"
    );
    let doc = workers(&berth).await;
    assert_eq!(restarts(&doc, "crash"), 2, "{doc:#}");
}

/// A stack overflow kills its worker and the log says so; then a worker that keeps dying (five
/// `/faults/exit` deaths in a row in one slot) is reported as crash-looping, replaced with a
/// growing backoff, and still comes back.
#[tokio::test]
async fn a_stack_overflow_and_then_a_crash_loop_are_reported() {
    let berth = start_workers(workers_builder(1, &[]), 1).await;
    let first = ready_pids(&workers(&berth).await);

    let overflow = get_within(&berth.url("/faults/overflow"), Duration::from_secs(10)).await;
    assert!(
        overflow.is_err(),
        "a stack overflow is never answered: {overflow:?}"
    );
    let line = berth
        .wait_for_log(
            &[
                "was killed by SIGABRT",
                "stack overflow",
                "inside app \"faults\", \"GET /faults/overflow\"",
            ],
            LOG,
        )
        .await;
    assert_eq!(pid_in(&line), first[0], "{line}");
    // The worker's own last words reach the same log.
    berth
        .wait_for_log(&["fatal runtime error: stack overflow"], LOG)
        .await;

    // Four more deaths: `exit` with status 3. Deaths 3, 4 and 5 of the slot in a minute wait
    // 250 ms, 500 ms and 1 s before their replacement.
    let mut pid = first[0];
    for exit in 1..=4 {
        let doc = wait_workers(&berth, "a new ready worker", RESPAWN * 2, |doc| {
            let ready = ready_pids(doc);
            ready.len() == 1 && ready[0] != pid
        })
        .await;
        pid = ready_pids(&doc)[0];
        let reply = get_within(&berth.url("/faults/exit?code=3"), Duration::from_secs(10)).await;
        assert!(reply.is_err(), "/faults/exit is never answered: {reply:?}");
        wait_for_lines(
            &berth,
            &[
                "exited with status 3",
                "inside app \"faults\", \"GET /faults/exit?code=3\"",
            ],
            exit,
            LOG,
        )
        .await;
    }
    let crash_loop = berth
        .wait_for_log(
            &["worker 0 is crash-looping: 5 deaths in the last 60s"],
            LOG,
        )
        .await;
    eprintln!("{crash_loop}");
    let fifth = berth
        .wait_for_log(
            &[&format!("worker 0 (pid {pid}) exited with status 3")],
            LOG,
        )
        .await;
    assert!(
        fifth.contains("replacing it in 1s"),
        "the fifth death in a minute waits 1 s: {fifth}"
    );
    assert_eq!(
        count_lines(&berth, &["is crash-looping"]),
        1,
        "only the fifth death reports the loop so far"
    );

    // Still replaced, after its backoff.
    let doc = wait_workers(
        &berth,
        "the worker back after the backoff",
        RESPAWN * 2,
        |doc| {
            let ready = ready_pids(doc);
            ready.len() == 1 && ready[0] != pid
        },
    )
    .await;
    assert_eq!(restarts(&doc, "crash"), 1, "{doc:#}");
    assert_eq!(restarts(&doc, "exit"), 4, "{doc:#}");
    let hello = get(&berth.url("/hello")).await;
    assert_eq!((hello.status.as_u16(), hello.text().as_str()), (200, HELLO));
}

// ---------------------------------------------------------------------------------------------
// Hangs
// ---------------------------------------------------------------------------------------------

/// Two calls stuck in `faults` (a blocked thread) take two of three workers out: the third
/// keeps answering, and the watchdog kills each stuck worker past request_timeout + hang_grace
/// and replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_app_calls_are_killed_by_the_watchdog_while_a_free_worker_serves() {
    const BLOCK: &str = "GET /faults/block?secs=30";
    let berth = start_workers(
        workers_builder(3, &["--request-timeout", "2s", "--hang-grace", "1s"]),
        3,
    )
    .await;
    let before = ready_pids(&workers(&berth).await);

    // One at a time: a worker accepts no connection while blocked, so the second request goes
    // to another worker once the first is seen blocked.
    let mut stuck = Vec::new();
    let mut blocks = Vec::new();
    for n in 1..=2 {
        let url = berth.url("/faults/block?secs=30");
        blocks.push(tokio::spawn(async move {
            get_within(&url, Duration::from_secs(15)).await
        }));
        let doc = wait_workers(
            &berth,
            &format!("{n} worker(s) inside {BLOCK}"),
            LOG,
            |doc| inside(doc, BLOCK).len() == n,
        )
        .await;
        stuck = inside(&doc, BLOCK);
    }
    // Both calls have begun by now: each is killed 3 s (+ a tick) after its start, and its
    // replacement is ready within 2 s of that.
    let deadline = Instant::now() + Duration::from_secs(2 + 1 + 2);
    eprintln!("stuck workers: {stuck:?} of {before:?}");

    // Meanwhile the free worker answers, each request on a new connection within 1 s.
    let mut probes = 0;
    let mut slowest = Duration::ZERO;
    let doc = loop {
        let sent = Instant::now();
        let reply = get_within(&berth.url("/hello"), Duration::from_secs(1)).await;
        probes += 1;
        slowest = slowest.max(sent.elapsed());
        if sent.elapsed() > Duration::from_millis(200) {
            eprintln!("slow probe {probes}: {:?}", sent.elapsed());
        }
        match reply {
            Ok(reply) if reply.status == 200 && reply.text() == HELLO => {}
            other => panic!(
                "/hello (probe {probes}) while two workers are stuck: {other:?}; stderr:\n{}",
                berth.stderr()
            ),
        }
        let doc = workers(&berth).await;
        let ready = ready_pids(&doc);
        if restarts(&doc, "hang") == 2
            && ready.len() == 3
            && !stuck.iter().any(|pid| all_pids(&doc).contains(pid))
        {
            break doc;
        }
        assert!(
            Instant::now() < deadline,
            "the stuck workers {stuck:?} were not killed and replaced within 2 + 1 + 2 s; \
             /workers:\n{doc:#}\nstderr:\n{}",
            berth.stderr()
        );
        assert!(probes < 200, "bounded probe loop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{probes} probes of /hello answered, the slowest in {slowest:?}");
    let now = ready_pids(&doc);
    assert_eq!(
        now.iter().filter(|pid| before.contains(pid)).count(),
        1,
        "only the free worker is left of {before:?}: {now:?}"
    );

    for pid in &stuck {
        let line = berth
            .wait_for_log(
                &[
                    &format!("(pid {pid}) has been inside app \"faults\", \"{BLOCK}\""),
                    "past its limit of 2s + hang_grace 1s: killing it",
                ],
                LOG,
            )
            .await;
        // `..., for 3.0s, past its limit ...`: not before request_timeout + hang_grace.
        let inside_for: f64 = line
            .split(", for ")
            .nth(1)
            .and_then(|rest| rest.split("s, past").next())
            .and_then(|secs| secs.parse().ok())
            .unwrap_or_else(|| panic!("no `for N.Ns, past` in {line}"));
        assert!(
            (3.0..5.0).contains(&inside_for),
            "killed after 2 s + 1 s (and soon after): {line}"
        );
        berth
            .wait_for_log(
                &[
                    &format!("(pid {pid}) was killed by the watchdog (stuck in one app call)"),
                    &format!("inside app \"faults\", \"{BLOCK}\""),
                ],
                LOG,
            )
            .await;
    }
    for block in blocks {
        let outcome = block.await.expect("block task");
        assert!(
            !outcome.as_ref().is_ok_and(|reply| reply.status == 200),
            "a call killed by the watchdog cannot have been answered: {outcome:?}"
        );
    }
}

/// In a single process (no `--workers`), the admin listener's `/healthz` turns 503 and names
/// the stuck call while the only runtime thread is blocked in an app, then 200 again after.
#[tokio::test]
async fn single_process_healthz_fails_while_the_runtime_is_blocked() {
    let berth = Berth::builder()
        .app("fixture_faults")
        .args(&["--threads", "1", "--hang-grace", "1s"])
        .start();
    let healthz = get(&berth.admin_url("/healthz")).await;
    assert_eq!(healthz.status, 200, "{}", healthz.text());

    let url = berth.url("/faults/block?secs=4");
    let sent = Instant::now();
    let block = tokio::spawn(async move { get_within(&url, Duration::from_secs(15)).await });
    let unhealthy = loop {
        let reply = get_within(&berth.admin_url("/healthz"), Duration::from_secs(2))
            .await
            .expect("the admin listener answers while the runtime is blocked");
        if reply.status == 503 {
            break reply;
        }
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            sent.elapsed() < Duration::from_millis(3500),
            "/healthz still 200 {:?} into a 4 s block with hang_grace 1s",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let body = unhealthy.text();
    eprintln!("/healthz after {:?}: 503 {body}", sent.elapsed());
    assert!(
        body.contains("\"faults\"") && body.contains("GET /faults/block?secs=4"),
        "the 503 names the stuck app call: {body:?}"
    );

    let reply = block
        .await
        .expect("block task")
        .expect("the blocking request completes");
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "slept\n")
    );
    let healthy_at = Instant::now();
    loop {
        let reply = get_within(&berth.admin_url("/healthz"), Duration::from_secs(2))
            .await
            .expect("/healthz answers");
        if reply.status == 200 {
            break;
        }
        assert!(
            healthy_at.elapsed() < Duration::from_secs(2),
            "/healthz still {} after the block ended: {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Healthy replacements
// ---------------------------------------------------------------------------------------------

/// A worker whose memory stays above `--worker-max-rss` is replaced (the replacement ready
/// first, then it drains): no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaking_worker_is_recycled_without_failing_a_request() {
    const LIMIT_MIB: u64 = 150;
    let berth = start_workers(
        workers_builder(1, &["--worker-max-rss", &format!("{LIMIT_MIB}MiB")]),
        1,
    )
    .await;
    let leaky = ready_pids(&workers(&berth).await)[0];
    let origin = Instant::now();
    let plan = LoadPlan {
        clients: 2,
        max_requests: 1500,
        max_time: Duration::from_secs(30),
        pause: Duration::from_millis(10),
        ..LoadPlan::default()
    };
    let load = BoundedLoad::start(&berth.url("/hello"), HELLO, &plan);

    // Leak 64 MiB at a time until the worker is over the limit (bounded: 4 steps is 256 MiB).
    let mut rss = 0;
    for _ in 0..4 {
        let reply = get(&berth.url("/faults/leak?mb=64")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        eprintln!("{}", reply.text().trim_end());
        let doc = workers(&berth).await;
        rss = entries(&doc)
            .iter()
            .find(|worker| pid_of(worker) == leaky)
            .and_then(|worker| worker["rss_bytes"].as_u64())
            .unwrap_or_else(|| panic!("no rss_bytes for worker {leaky}: {doc:#}"));
        if rss > LIMIT_MIB << 20 {
            break;
        }
    }
    assert!(
        rss > LIMIT_MIB << 20,
        "leaked past {LIMIT_MIB} MiB: rss {rss}"
    );
    let over_at = Instant::now();

    // Three samples a second apart, a replacement to start, the old worker to drain.
    let doc = wait_workers(
        &berth,
        "the leaking worker replaced (max_rss)",
        Duration::from_secs(10),
        |doc| {
            let ready = ready_pids(doc);
            restarts(doc, "max_rss") == 1
                && ready.len() == 1
                && ready[0] != leaky
                && !all_pids(doc).contains(&leaky)
        },
    )
    .await;
    eprintln!(
        "replaced {:?} after going over the limit",
        over_at.elapsed()
    );
    berth
        .wait_for_log(
            &[
                &format!("(pid {leaky})"),
                &format!("over worker_max_rss ({LIMIT_MIB} MiB)"),
            ],
            LOG,
        )
        .await;
    berth
        .wait_for_log(&[&format!("(pid {leaky}) drained and exited")], LOG)
        .await;
    let fresh = ready_pids(&doc)[0];
    let ok = load.ok();
    assert!(
        load.wait_ok(ok + 20, Duration::from_secs(10)).await,
        "the load carries on after the replacement"
    );
    let report = load.stop().await;
    let summary = report.summary(origin);
    eprintln!("load: {summary}");
    assert_eq!(report.failures().len(), 0, "{summary}");
    let doc = workers(&berth).await;
    let fresh_rss = entries(&doc)
        .iter()
        .find(|worker| pid_of(worker) == fresh)
        .and_then(|worker| worker["rss_bytes"].as_u64())
        .unwrap_or(0);
    assert!(
        fresh_rss < LIMIT_MIB << 20,
        "the replacement starts small: {fresh_rss} bytes"
    );
    assert_eq!(
        restarts(&doc, "crash") + restarts(&doc, "hang"),
        0,
        "{doc:#}"
    );
}

/// `--max-requests 50` under a load of a few hundred requests: workers are replaced one at a
/// time, the replacement ready first, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_recycles_workers_under_load_without_failures() {
    let berth = start_workers(workers_builder(2, &["--max-requests", "50"]), 2).await;
    let before = ready_pids(&workers(&berth).await);
    let origin = Instant::now();
    let plan = LoadPlan {
        clients: 4,
        max_requests: 250,
        max_time: Duration::from_secs(30),
        pause: Duration::from_millis(5),
        ..LoadPlan::default()
    };
    let load = BoundedLoad::start(&berth.url("/hello"), HELLO, &plan);
    let doc = wait_workers(
        &berth,
        "two max_requests restarts",
        Duration::from_secs(25),
        |doc| restarts(doc, "max_requests") >= 2,
    )
    .await;
    let ok = load.ok();
    assert!(
        load.wait_ok(ok + 40, Duration::from_secs(10)).await,
        "the load carries on after the replacements"
    );
    let report = load.stop().await;
    let summary = report.summary(origin);
    eprintln!("load: {summary}; /workers restarts: {}", doc["restarts"]);
    assert!(
        report.outcomes.len() >= 100,
        "a load of some hundreds: {summary}"
    );
    assert_eq!(report.failures().len(), 0, "{summary}");
    berth
        .wait_for_log(&["reached max_requests (50)", "replacing it"], LOG)
        .await;
    wait_for_lines(&berth, &["is replaced (max_requests)"], 2, LOG).await;
    let doc = workers(&berth).await;
    assert!(
        before.iter().any(|pid| !ready_pids(&doc).contains(pid)),
        "a worker was replaced: {before:?} -> {doc:#}"
    );
    assert_eq!(
        restarts(&doc, "crash") + restarts(&doc, "exit"),
        0,
        "{doc:#}"
    );
}

/// `--max-lifetime 1s --max-lifetime-jitter 500ms`: every worker is replaced once it has run
/// its lifetime (each its own, drawn in 1 to 1.5 s), one at a time, the replacement ready
/// first: no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_recycles_every_worker_without_failures() {
    let berth = start_workers(
        workers_builder(
            2,
            &["--max-lifetime", "1s", "--max-lifetime-jitter", "500ms"],
        ),
        2,
    )
    .await;
    let before = ready_pids(&workers(&berth).await);
    let origin = Instant::now();
    let plan = LoadPlan {
        clients: 2,
        max_requests: 800,
        max_time: Duration::from_secs(20),
        pause: Duration::from_millis(10),
        ..LoadPlan::default()
    };
    let load = BoundedLoad::start(&berth.url("/hello"), HELLO, &plan);
    let doc = wait_workers(
        &berth,
        "both first workers replaced (max_lifetime) and gone",
        Duration::from_secs(10),
        |doc| {
            let all = all_pids(doc);
            restarts(doc, "max_lifetime") >= 2
                && ready_pids(doc).len() == 2
                && !before.iter().any(|pid| all.contains(pid))
        },
    )
    .await;
    let ok = load.ok();
    assert!(
        load.wait_ok(ok + 20, Duration::from_secs(10)).await,
        "the load carries on after the replacements"
    );
    let report = load.stop().await;
    let summary = report.summary(origin);
    eprintln!("load: {summary}; /workers restarts: {}", doc["restarts"]);
    assert_eq!(report.failures().len(), 0, "{summary}");
    for pid in &before {
        let line = berth
            .wait_for_log(&[&format!("(pid {pid}) reached max_lifetime (")], LOG)
            .await;
        // `reached max_lifetime (1.234s)`: the lifetime with its jitter.
        let start = line.find("max_lifetime (").expect("found") + "max_lifetime (".len();
        let value = &line[start..];
        let value = &value[..value.find(')').expect("closing parenthesis")];
        let secs: f64 = value
            .strip_suffix("ms")
            .map(|ms| ms.parse::<f64>().map(|ms| ms / 1000.0))
            .or_else(|| value.strip_suffix('s').map(str::parse::<f64>))
            .unwrap_or_else(|| panic!("not a duration: {value:?} in {line}"))
            .unwrap_or_else(|err| panic!("not a duration: {value:?} in {line}: {err}"));
        assert!(
            (1.0..=1.5).contains(&secs),
            "the lifetime is 1 s plus at most 500 ms of jitter: {line}"
        );
        berth
            .wait_for_log(&[&format!("(pid {pid}) drained and exited")], LOG)
            .await;
    }
    assert_eq!(
        restarts(&doc, "crash") + restarts(&doc, "exit"),
        0,
        "{doc:#}"
    );
}

/// SIGHUP replaces every worker, one at a time and each replacement ready first, under load:
/// no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_every_worker_under_load_without_failures() {
    let berth = start_workers(workers_builder(2, &[]), 2).await;
    let before = ready_pids(&workers(&berth).await);
    let origin = Instant::now();
    let plan = LoadPlan {
        clients: 4,
        max_requests: 1500,
        max_time: Duration::from_secs(30),
        pause: Duration::from_millis(5),
        ..LoadPlan::default()
    };
    let load = BoundedLoad::start(&berth.url("/hello"), HELLO, &plan);
    assert!(
        load.wait_ok(40, Duration::from_secs(10)).await,
        "the load got going"
    );
    berth.sighup();
    let doc = wait_workers(
        &berth,
        "both workers replaced (reload) and the old ones gone",
        Duration::from_secs(15),
        |doc| {
            let all = all_pids(doc);
            restarts(doc, "reload") == 2
                && ready_pids(doc).len() == 2
                && all.len() == 2
                && !before.iter().any(|pid| all.contains(pid))
        },
    )
    .await;
    let ok = load.ok();
    assert!(
        load.wait_ok(ok + 40, Duration::from_secs(10)).await,
        "the load carries on after the rolling restart"
    );
    let report = load.stop().await;
    let summary = report.summary(origin);
    eprintln!(
        "load: {summary}; after SIGHUP: {:?} -> {:?}",
        before,
        ready_pids(&doc)
    );
    assert_eq!(report.failures().len(), 0, "{summary}");
    berth.wait_for_log(&["received SIGHUP"], LOG).await;
    for pid in &before {
        berth
            .wait_for_log(&[&format!("(pid {pid}) is replaced (reload)")], LOG)
            .await;
        berth
            .wait_for_log(&[&format!("(pid {pid}) drained and exited")], LOG)
            .await;
    }
}

// ---------------------------------------------------------------------------------------------
// Stopping
// ---------------------------------------------------------------------------------------------

/// SIGTERM drains the workers: a request in flight completes, and the supervisor exits 0
/// within the drain timeout.
#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let mut berth = start_workers(workers_builder(2, &["--drain-timeout", "5s"]), 2).await;
    let pids = ready_pids(&workers(&berth).await);
    let url = berth.url("/faults/block?secs=2");
    let sent = Instant::now();
    let slow = tokio::spawn(async move { get_within(&url, Duration::from_secs(15)).await });
    wait_workers(&berth, "a worker inside the slow call", LOG, |doc| {
        !inside(doc, "GET /faults/block?secs=2").is_empty()
    })
    .await;
    berth.sigterm();
    let sigterm_at = Instant::now();
    let status = berth.wait_exit(Duration::from_secs(5 + 2)).await;
    let exited_after = sigterm_at.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status}");
    let reply = slow
        .await
        .expect("slow task")
        .expect("the request in flight at SIGTERM completes");
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "slept\n")
    );
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "the request took its 2 s"
    );
    eprintln!("exited {exited_after:?} after SIGTERM");
    let stderr = berth.stderr();
    assert!(stderr.contains("received SIGTERM"), "{stderr}");
    assert!(stderr.contains("every worker has exited"), "{stderr}");
    for pid in pids {
        assert!(has_ended(pid), "worker {pid} outlived the supervisor");
    }
}

/// A supervisor killed with SIGKILL (no chance to drain) takes its workers with it, and the
/// port stops accepting connections.
#[tokio::test]
async fn workers_exit_when_the_supervisor_is_killed() {
    // The number of workers from the environment this time.
    let builder = Berth::builder()
        .app("fixture_faults")
        .app("hello")
        .env("BERTH_WORKERS", "2");
    let berth = start_workers(builder, 2).await;
    let pids = ready_pids(&workers(&berth).await);
    let addr = berth.addr();
    berth.sigkill();
    let killed = Instant::now();
    loop {
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| !has_ended(*pid))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "workers {left:?} of {pids:?} still running 1 s after the supervisor's SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "workers {pids:?} gone {:?} after the supervisor",
        killed.elapsed()
    );
    // Nobody holds the listener any more.
    let connect =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await;
    assert!(
        matches!(connect, Ok(Err(_))),
        "connecting to the port of a dead server is refused: {connect:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The admin API
// ---------------------------------------------------------------------------------------------

/// `/readyz` and `/healthz` are the supervisor's; `/apps` and `POST /apps/<name>/reload` are
/// asked of every ready worker, one entry each.
#[tokio::test]
async fn admin_requests_reach_every_worker() {
    // The number of workers from the config file this time.
    let builder = Berth::builder()
        .app("fixture_faults")
        .app("hello")
        .config("workers = 2\n");
    let berth = start_workers(builder, 2).await;
    let pids = {
        let mut pids = ready_pids(&workers(&berth).await);
        pids.sort_unstable();
        pids
    };
    let readyz = get(&berth.admin_url("/readyz")).await;
    assert_eq!(readyz.status, 200, "{}", readyz.text());
    let healthz = get(&berth.admin_url("/healthz")).await;
    assert_eq!(healthz.status, 200, "{}", healthz.text());

    /// The sorted pids of the entries, checking each has `status`.
    fn answered_by(doc: &Value, status: u16) -> Vec<u32> {
        let mut pids: Vec<u32> = entries(doc)
            .iter()
            .map(|entry| {
                assert_eq!(entry["status"], status, "{entry:#}");
                pid_of(entry)
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    let apps = get(&berth.admin_url("/apps")).await;
    assert_eq!(apps.status, 200, "{}", apps.text());
    let apps = apps.json();
    assert_eq!(answered_by(&apps, 200), pids, "{apps:#}");
    for entry in entries(&apps) {
        let mut names: Vec<&str> = entry["body"]["apps"]
            .as_array()
            .unwrap_or_else(|| panic!("no apps in {entry:#}"))
            .iter()
            .filter_map(|app| app["name"].as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["faults", "hello"], "{entry:#}");
    }
    // And merged: one entry per app version, held by both workers.
    let merged = apps["apps"]
        .as_array()
        .unwrap_or_else(|| panic!("no merged `apps` in {apps:#}"));
    for name in ["faults", "hello"] {
        let held: Vec<&Value> = merged.iter().filter(|app| app["name"] == name).collect();
        assert_eq!(held.len(), 1, "one version of {name}: {apps:#}");
        assert_eq!(held[0]["state"], "mounted", "{apps:#}");
        let mut slots: Vec<u64> = held[0]["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 1], "{name} is mounted in both workers: {apps:#}");
    }

    let pubsub = get(&berth.admin_url("/pubsub")).await;
    assert_eq!(pubsub.status, 200, "{}", pubsub.text());
    let pubsub = pubsub.json();
    assert_eq!(answered_by(&pubsub, 200), pids, "{pubsub:#}");
    for entry in entries(&pubsub) {
        assert_eq!(entry["body"]["backend"], "memory", "{entry:#}");
    }

    let reload = post(&berth.admin_url("/apps/hello/reload")).await;
    assert_eq!(reload.status, 200, "{}", reload.text());
    let reload = reload.json();
    assert_eq!(answered_by(&reload, 200), pids, "{reload:#}");
    for entry in entries(&reload) {
        assert_eq!(entry["body"]["app"]["name"], "hello", "{entry:#}");
    }
    // Each worker swapped its own copy.
    wait_for_lines(&berth, &["swapped app", "app=\"hello\""], 2, LOG).await;
    for pid in &pids {
        assert_eq!(
            count_lines(
                &berth,
                &[&format!("(pid {pid})"), "swapped app", "app=\"hello\""]
            ),
            1,
            "worker {pid} swapped hello once"
        );
    }

    // The first worker's error is the answer's status.
    let missing = try_send(Req {
        method: Method::POST,
        ..Req::get(&berth.admin_url("/apps/nosuch/reload"))
    })
    .await
    .expect("admin answers");
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(answered_by(&missing.json(), 404), pids);

    let hello = get(&berth.url("/hello")).await;
    assert_eq!((hello.status.as_u16(), hello.text().as_str()), (200, HELLO));
}

/// The `/pubsub` entries of every worker (the supervisor asks each): subscribers on `channel`,
/// by worker.
fn subscribers_by_worker(document: &Value, channel: &str) -> Vec<u64> {
    entries_of(document)
        .iter()
        .map(|worker| {
            worker["body"]["channels"]
                .as_array()
                .and_then(|channels| channels.iter().find(|c| c["name"] == channel))
                .map_or(0, |c| c["subscribers"].as_u64().unwrap_or(0))
        })
        .collect()
}

fn entries_of(document: &Value) -> &[Value] {
    document["workers"].as_array().map_or(&[], Vec::as_slice)
}

/// With the in-memory broker, a message published in one worker reaches the WebSockets of
/// every worker (the supervisor relays it); on SIGTERM every socket gets its close code and the
/// supervisor exits 0.
#[tokio::test]
async fn pubsub_and_websockets_span_workers_and_close_on_sigterm() {
    use crate::chat::{Client, connect, next_text, publish};
    use futures_util::StreamExt as _;
    let mut berth = start_workers(Berth::builder().app("chat").args(&["--workers", "2"]), 2).await;
    // Sockets until both workers hold some: which worker accepts is the kernel's choice.
    let mut sockets: Vec<Client> = Vec::new();
    let spread = loop {
        sockets.push(connect(&berth).await);
        let document = get(&berth.admin_url("/pubsub")).await.json();
        let by_worker = subscribers_by_worker(&document, "messages");
        if by_worker.iter().sum::<u64>() == sockets.len() as u64 && by_worker.iter().all(|n| *n > 0)
        {
            break by_worker;
        }
        assert!(
            sockets.len() < 64,
            "64 sockets and still not on both workers: {document:#}"
        );
        if by_worker.iter().sum::<u64>() < sockets.len() as u64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    eprintln!("subscribers by worker: {spread:?}");

    publish(&berth, "across workers").await;
    for socket in &mut sockets {
        assert_eq!(next_text(socket, LOG).await, "across workers");
    }

    berth.sigterm();
    for socket in &mut sockets {
        let closed = tokio::time::timeout(LOG, socket.next()).await;
        match closed {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
            }
            other => panic!("expected a close frame with 1001, got {other:?}"),
        }
    }
    let status = berth.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", berth.stderr());
}

/// With `--reuse-port` every worker listens on a socket of its own: both serve, and a crashed
/// one is replaced and serves again.
#[tokio::test]
async fn reuse_port_workers_each_serve_and_are_replaced() {
    use std::collections::BTreeSet;
    /// The pids that answer `/faults/pid` on fresh connections, until two have (bounded).
    async fn serving(berth: &Berth) -> BTreeSet<u32> {
        let url = berth.url("/faults/pid");
        let mut pids = BTreeSet::new();
        for _ in 0..200 {
            if let Ok(reply) = get_within(&url, LOG).await {
                pids.insert(reply.text().trim().parse::<u32>().unwrap_or(0));
            }
            if pids.len() == 2 {
                break;
            }
        }
        pids
    }
    let berth = start_workers(workers_builder(2, &["--reuse-port"]), 2).await;
    let before = ready_pids(&workers(&berth).await);
    assert_eq!(serving(&berth).await, before.iter().copied().collect());
    let migrates = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|value| value.trim() == "1");
    assert!(migrates || berth.stderr().contains("tcp_migrate_req is not 1"));

    let _ = get_within(&berth.url("/faults/segv"), Duration::from_secs(3)).await;
    let after = wait_workers(&berth, "a replacement ready", RESPAWN + LOG, |doc| {
        let ready = ready_pids(doc);
        ready.len() == 2 && ready != before
    })
    .await;
    let now: BTreeSet<u32> = ready_pids(&after).into_iter().collect();
    assert_eq!(serving(&berth).await, now);
}
