//! Conformance and browser tests: clients nobody here wrote, run against the real binary.
//!
//! * Python's `websockets` library talks to the `ws-echo` app (`tests/clients/ws_echo_client.py`):
//!   byte-exact text and binary echo, fragments, ping/pong, close codes answered.
//! * The Autobahn test-suite cases, run by `kosoku`, against `ws-echo`
//!   (`tests/clients/autobahn.py`): every case passes except compression (12.*, 13.*: no
//!   permessage-deflate) and those listed with a reason in `tests/clients/autobahn-allow.txt`.
//!   Autobahn's report is kept in `target/test-artifacts/autobahn/` (open `index.html`).
//! * The `chat` app's page in two pages of Debian's headless Chromium, driven by Playwright
//!   (`tests/clients/chat_browser.py`): a message typed in one appears in the other, with the
//!   in-process broker; and with `pubsub = "redis://..."`, a `redis-cli PUBLISH messages hi`
//!   appears in both. Screenshots go to `target/test-artifacts/chat.png` and `chat-redis.png`.
//!
//! The clients run in a virtualenv, `target/test-clients-venv`, which `tests/clients/setup.py`
//! makes on first use from the pinned `tests/clients/requirements.txt` (it needs `python3-venv`
//! and PyPI). Chromium is Debian's `/usr/bin/chromium`. Nothing is skipped: when either is
//! missing the tests fail and say how to install it (`.ci/run` installs both). A failing test
//! prints the client's stdout and stderr, and berth's stderr.
//!
//! The tests here take a lock so that only one runs at a time: Chromium and the Autobahn run
//! each want both of the machine's cores.

use std::io::{BufRead as _, BufReader, Read};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::harness::{Berth, workspace_root};
use crate::services::Redis;

/// The library names of the sample apps under test (crates `ws-echo` and `chat`).
const WS_ECHO: &str = "ws_echo";
const CHAT: &str = "chat";

/// Debian's Chromium, which Playwright is pointed at (it downloads no browser of its own).
const CHROMIUM: &str = "/usr/bin/chromium";

/// The whole of `ws_echo_client.py` (it bounds each step to 10 s itself).
const ECHO_CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The whole Autobahn run (about 10 s on the debug build, 9.* included; `autobahn.py` stops
/// kosoku at 300 s, as a server that stops answering costs kosoku up to 100 s per case).
const AUTOBAHN_TIMEOUT: Duration = Duration::from_secs(360);

/// The whole of `chat_browser.py`: starting Chromium, two pages, each wait bounded to 10 s.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// `berth.toml` for the Autobahn run. Its performance cases (9.1.* and 9.2.*) send messages of
/// up to 16 MiB in a single frame, and 9.3.* and 9.4.* 4 MiB messages in fragments: `ws-echo`'s
/// message and frame limits are raised to 16 MiB so that the protocol is what is tested. At the
/// 1 MiB defaults those cases are closed with 1009, as documented.
const AUTOBAHN_LIMITS: &str = "[apps.ws-echo]\n\
                               ws_max_message = \"16MiB\"\n\
                               ws_max_frame = \"16MiB\"\n";

/// Serializes the tests of this module (see the module documentation).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The target directory, honouring `CARGO_TARGET_DIR` as the harness does.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// `target/test-artifacts/<name>`, removed if it exists, its parent created.
fn artifact(name: &str) -> PathBuf {
    let path = target_dir().join("test-artifacts").join(name);
    if path.is_dir() {
        std::fs::remove_dir_all(&path).expect("remove the old artifact directory");
    } else if path.exists() {
        std::fs::remove_file(&path).expect("remove the old artifact");
    }
    std::fs::create_dir_all(path.parent().expect("artifacts have a parent"))
        .expect("create target/test-artifacts");
    path
}

fn clients_dir() -> PathBuf {
    workspace_root().join("tests").join("clients")
}

/// The Python of the test clients' virtualenv, made (or found up to date) once per test process
/// by `tests/clients/setup.py`.
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(setup_venv) {
        Ok(python) => python,
        Err(message) => panic!("{message}"),
    }
}

fn setup_venv() -> Result<PathBuf, String> {
    let venv = target_dir().join("test-clients-venv");
    let how = "the test clients need python3 with venv (apt-get install python3 python3-venv) \
               and PyPI; `python3 tests/clients/setup.py` makes their virtualenv \
               (.ci/run does it before the tests)";
    let output = Command::new("python3")
        .arg(clients_dir().join("setup.py"))
        .arg("--venv")
        .arg(&venv)
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("cannot run python3 ({err}): {how}"))?;
    if !output.status.success() {
        return Err(format!(
            "tests/clients/setup.py failed ({}): {how}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let python = venv.join("bin").join("python");
    if !python.is_file() {
        return Err(format!(
            "tests/clients/setup.py did not make {}: {how}",
            python.display()
        ));
    }
    Ok(python)
}

/// Fails, saying how to install it, when Debian's Chromium is missing.
fn require_chromium() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} does not exist: the browser tests drive Debian's Chromium, \
         `apt-get install chromium` (.ci/run installs it)"
    );
}

/// `ws://ADDR{path}` for a berth serving plain HTTP.
fn ws_url(berth: &Berth, path: &str) -> String {
    assert!(!berth.is_tls(), "these tests run berth without TLS");
    format!("ws://{}{path}", berth.addr())
}

// ---------------------------------------------------------------------------------------------
// Running a client
// ---------------------------------------------------------------------------------------------

/// One of the Python clients in `tests/clients`, running, its output read as it comes.
struct Client {
    name: String,
    child: Child,
    /// Every stdout line so far, and a channel that gets each as it is read.
    stdout: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
    started: Instant,
}

/// A finished client.
struct Finished {
    status: ExitStatus,
    stdout: String,
    elapsed: Duration,
}

impl Client {
    /// Starts `tests/clients/<script>` with `args` in the virtualenv's Python.
    fn spawn(script: &str, args: &[&str]) -> Client {
        let path = clients_dir().join(script);
        let mut child = Command::new(python())
            .arg(&path)
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own, so that a client that has to be killed goes with what it
            // started (kosoku, Playwright's driver, Chromium).
            .process_group(0)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", path.display()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (sender, lines) = mpsc::channel();
        let pipe = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&stdout);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                lock(&sink).push(line.clone());
                let _ = sender.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0; 8192];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                lock(&sink).extend_from_slice(&buf[..n]);
            }
        });
        Client {
            name: format!("{script} {}", args.join(" ")),
            child,
            stdout,
            lines,
            stderr,
            started: Instant::now(),
        }
    }

    fn output(&self) -> String {
        format!(
            "----- {} stdout -----\n{}\n----- its stderr -----\n{}\n-----",
            self.name,
            lock(&self.stdout).join("\n"),
            String::from_utf8_lossy(&lock(&self.stderr))
        )
    }

    /// Waits for a stdout line equal to `wanted`; panics with the output after `timeout` or when
    /// the client ends first.
    fn wait_for_line(&mut self, wanted: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == wanted => return,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    panic!(
                        "{} printed no {wanted:?} line within {timeout:?}\n{}",
                        self.name,
                        self.output()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait for the client");
                    panic!(
                        "{} ended ({status}) without printing {wanted:?}\n{}",
                        self.name,
                        self.output()
                    );
                }
            }
        }
    }

    /// Waits for the client to exit; kills it and panics with its output after `timeout`.
    fn wait(mut self, timeout: Duration) -> (Finished, String) {
        let deadline = self.started + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the client") {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{} did not finish within {timeout:?}; killed\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The pipes close with the process; give the readers a moment to see the last lines.
        let drained = Instant::now() + Duration::from_secs(5);
        while self.lines.recv_timeout(Duration::from_millis(100)).is_ok()
            && Instant::now() < drained
        {}
        std::thread::sleep(Duration::from_millis(50));
        let finished = Finished {
            status,
            stdout: lock(&self.stdout).join("\n"),
            elapsed: self.started.elapsed(),
        };
        (finished, self.output())
    }

    /// Waits for the client to exit and panics, with its output, unless it succeeded.
    fn succeed(self, timeout: Duration) -> Finished {
        let name = self.name.clone();
        let (finished, output) = self.wait(timeout);
        assert!(
            finished.status.success(),
            "{name} failed ({})\n{output}",
            finished.status
        );
        // Shown with --nocapture: what was checked, and how long it took.
        println!(
            "{output}\n{name}: passed in {:.1} s",
            finished.elapsed.as_secs_f64()
        );
        finished
    }

    /// Kills the client's process group (the client and what it started), then the client.
    fn kill(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // A client still running here belongs to a test that is failing: do not leave it behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Asserts `path` holds a PNG image (its signature, and more than a few bytes).
fn assert_png(path: &Path) {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|err| panic!("no screenshot at {}: {err}", path.display()));
    assert!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG screenshot ({} bytes)",
        path.display(),
        bytes.len()
    );
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Python's `websockets`, a client nobody here wrote, against `ws-echo`: every text and binary
/// message comes back byte-exact (a 200 KiB binary, multi-byte UTF-8, empty messages, a
/// fragmented message, 100 pipelined), a ping gets its pong, and closes with 1000 and with 4000
/// are answered with the same code.
#[test]
fn python_websockets_client_against_ws_echo() {
    let _one = one_at_a_time();
    python();
    let berth = Berth::builder().app(WS_ECHO).start();
    let url = ws_url(&berth, "/ws-echo");
    let finished = Client::spawn("ws_echo_client.py", &[&url]).succeed(ECHO_CLIENT_TIMEOUT);
    assert!(
        finished
            .stdout
            .contains("ws_echo_client: all checks passed"),
        "{}",
        finished.stdout
    );
}

/// The Autobahn test-suite cases (kosoku's `fuzzingclient`) against `ws-echo`: all pass but
/// the compression ones and those `tests/clients/autobahn-allow.txt` lists with a reason.
#[test]
fn autobahn_cases_against_ws_echo() {
    let _one = one_at_a_time();
    python();
    let berth = Berth::builder()
        .app(WS_ECHO)
        .config(AUTOBAHN_LIMITS)
        .start();
    let url = ws_url(&berth, "/ws-echo");
    let report = artifact("autobahn");
    let report_arg = report.display().to_string();
    let finished =
        Client::spawn("autobahn.py", &[&url, "--outdir", &report_arg]).succeed(AUTOBAHN_TIMEOUT);
    assert!(
        report.join("index.json").is_file(),
        "no Autobahn report in {}",
        report.display()
    );
    assert!(
        finished.stdout.contains(" 0 failed"),
        "autobahn.py passed without its summary line:\n{}",
        finished.stdout
    );
    assert!(
        berth
            .stderr()
            .lines()
            .all(|line| !line.contains("panicked"))
    );
}

/// The talk's demo in a real browser: `/chat/` in two pages of headless Chromium; a message
/// typed in one appears in the other (in-process broker). Keeps a screenshot of the second.
#[test]
fn chat_in_two_browser_pages() {
    let _one = one_at_a_time();
    require_chromium();
    python();
    let berth = Berth::builder().app(CHAT).start();
    let screenshot = artifact("chat.png");
    let screenshot_arg = screenshot.display().to_string();
    Client::spawn(
        "chat_browser.py",
        &[&berth.url("/chat/"), "--screenshot", &screenshot_arg],
    )
    .succeed(BROWSER_TIMEOUT);
    assert_png(&screenshot);
}

/// With `pubsub = "redis://..."`, `redis-cli PUBLISH messages hi` reaches both browser pages.
#[test]
fn chat_in_browser_gets_a_redis_publish() {
    let _one = one_at_a_time();
    require_chromium();
    python();
    let redis = Redis::start();
    let berth = Berth::builder()
        .app(CHAT)
        .config(&format!("pubsub = \"{}\"\n", redis.url()))
        .start();
    let screenshot = artifact("chat-redis.png");
    let screenshot_arg = screenshot.display().to_string();
    let mut client = Client::spawn(
        "chat_browser.py",
        &[
            &berth.url("/chat/"),
            "--screenshot",
            &screenshot_arg,
            "--expect-published",
            "hi",
        ],
    );
    // Both pages are subscribed once their own messages have come back through Redis.
    client.wait_for_line("READY", BROWSER_TIMEOUT);
    let receivers = redis.cli(&["PUBLISH", "messages", "hi"]);
    assert_eq!(
        receivers, "1",
        "one subscriber on `messages` in Redis: berth's single subscription for the channel \
         (PUBLISH returned {receivers:?})"
    );
    client.succeed(BROWSER_TIMEOUT);
    assert_png(&screenshot);
}
