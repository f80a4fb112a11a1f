//! The test harness: build artifacts once, run one real `berth` per test, talk HTTP to it.
//!
//! [`Berth`] owns a temporary apps directory and the child process. Its stderr (the server's log)
//! is read line by line on a background thread into a shared buffer that tests search with
//! [`Berth::wait_for_log`]. Dropping a [`Berth`] kills the process; if the test is failing, the
//! captured stderr and stdout are printed so the failure explains itself.
//!
//! Each [`Berth`] gets a temporary directory holding its apps directory (`apps/`) and, when the
//! test gives one, its config file (`berth.toml`). Its admin listener is on `127.0.0.1:0` unless
//! the test turns it off, so tests never compete for the default admin port.
//!
//! Helpers that more than one test module uses live here too: reading `/proc/<pid>/status`,
//! timing assertions, replacing files in the apps directory (and the two builds of the `swap`
//! app), and reading the admin listener's `/apps` document.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::{HeaderMap, Method, Request, StatusCode, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long `berth` may take to print its `listening on` line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Upper bound for any single HTTP exchange made by a test (the slowest one waits for the
/// server's 10 s outbound timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The prefix of every environment variable `berth` reads. The harness removes all inherited
/// variables with it (whatever their names, so a variable Berth learns to read later is covered
/// too): the developer's shell cannot change what a test sees.
const BERTH_PREFIX: &str = "BERTH_";

/// The log line prefix of the public listener's address (`listening on http://ADDR`, or
/// `listening on https://ADDR` when it serves TLS).
const LISTENING: &str = "listening on http://";

/// The log line prefix of the public listener's address when it serves TLS.
const LISTENING_TLS: &str = "listening on https://";

/// The log line prefix of the admin listener's address (`admin listening on http://ADDR`).
const ADMIN_LISTENING: &str = "admin listening on http://";

// ---------------------------------------------------------------------------------------------
// Artifacts
// ---------------------------------------------------------------------------------------------

/// The workspace root (this package lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// `<target dir>/debug`, honouring `CARGO_TARGET_DIR` (relative values are relative to the
/// workspace root, as for cargo itself).
fn profile_dir() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    };
    target.join("debug")
}

/// The directory holding `berth` and the app cdylibs, built on first use.
///
/// Runs `cargo build --workspace` once per test process. Cargo releases the build-directory lock
/// before it runs test binaries, so the nested build does not deadlock; it is a no-op when
/// everything is fresh. With `BERTH_TESTS_NO_BUILD=1` the build is skipped and the artifacts must
/// already exist.
fn artifacts() -> &'static Path {
    static ARTIFACTS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match ARTIFACTS.get_or_init(build_artifacts) {
        Ok(dir) => dir,
        Err(message) => panic!("{message}"),
    }
}

fn build_artifacts() -> Result<PathBuf, String> {
    if std::env::var_os("BERTH_TESTS_NO_BUILD").is_none() {
        let output = Command::new(env!("CARGO"))
            .args(["build", "--workspace"])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("cannot run `{} build --workspace`: {err}", env!("CARGO")))?;
        if !output.status.success() {
            return Err(format!(
                "`cargo build --workspace` failed ({}); its output:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
    let dir = profile_dir();
    let bin = dir.join("berth");
    if !bin.is_file() {
        return Err(format!(
            "{} does not exist: run `cargo build --workspace` first",
            bin.display()
        ));
    }
    Ok(dir)
}

/// Path of the `berth` binary.
pub fn berth_bin() -> PathBuf {
    artifacts().join("berth")
}

/// The names in `env` that start with [`BERTH_PREFIX`].
fn berth_vars(env: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<OsString> {
    env.into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.as_encoded_bytes().starts_with(BERTH_PREFIX.as_bytes()))
        .collect()
}

/// A command running `berth` with the test process's environment plus `shell` (variables a test
/// pretends the developer's shell exported), minus every `BERTH_*` variable of either; the
/// caller adds the ones the test sets.
fn berth_command(shell: &[(OsString, OsString)]) -> Command {
    let mut command = Command::new(berth_bin());
    command.envs(shell.iter().cloned());
    for key in berth_vars(std::env::vars_os().chain(shell.iter().cloned())) {
        command.env_remove(key);
    }
    command
}

/// Path of the cdylib built from the crate whose library is named `crate_name`
/// (`hello`, `fixture_testkit`, ...).
pub fn cdylib(crate_name: &str) -> PathBuf {
    let path = artifacts().join(format!(
        "{}{crate_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        path.is_file(),
        "{} does not exist: is `{crate_name}` a cdylib workspace member? \
         (run `cargo build --workspace`)",
        path.display()
    );
    path
}

/// The file name an app gets in the apps directory unless the test chooses one.
pub fn default_file_name(crate_name: &str) -> String {
    format!(
        "{}{crate_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

// ---------------------------------------------------------------------------------------------
// Captured output
// ---------------------------------------------------------------------------------------------

/// Lines read from one of the child's pipes, plus whether the pipe has closed.
#[derive(Debug, Default)]
struct Captured {
    state: Mutex<CapturedState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct CapturedState {
    lines: Vec<String>,
    /// Whether any line carried ANSI escape sequences (they are stripped before storing).
    saw_ansi: bool,
    closed: bool,
}

impl Captured {
    /// Reads `pipe` to its end on a new thread, one line at a time.
    fn spawn_reader(pipe: impl Read + Send + 'static) -> Arc<Self> {
        let captured = Arc::new(Self::default());
        let sink = Arc::clone(&captured);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match reader.read_until(b'\n', &mut raw) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&raw);
                        let line = line.trim_end_matches(['\n', '\r']);
                        let clean = strip_ansi(line);
                        let mut state = sink.lock();
                        state.saw_ansi |= clean.len() != line.len();
                        state.lines.push(clean);
                        drop(state);
                        sink.changed.notify_all();
                    }
                }
            }
            sink.lock().closed = true;
            sink.changed.notify_all();
        });
        captured
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CapturedState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn text(&self) -> String {
        let state = self.lock();
        let mut text = state.lines.join("\n");
        if state.saw_ansi {
            text.push_str("\n[harness: ANSI escape sequences were stripped from this output]");
        }
        text
    }

    /// Blocks until a line satisfies `find` (returning its result), the pipe closes, or `timeout`.
    fn wait_line<T>(&self, timeout: Duration, find: impl Fn(&str) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        let mut checked = 0;
        loop {
            if let Some(found) = state.lines[checked..].iter().find_map(|line| find(line)) {
                return Some(found);
            }
            checked = state.lines.len();
            let now = Instant::now();
            if state.closed || now >= deadline {
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Blocks until the pipe closes, or `timeout`.
    fn wait_closed(&self, timeout: Duration) {
        self.wait_line(timeout, |_| None::<()>);
    }
}

/// Removes ANSI CSI escape sequences (`ESC [ ... final-byte`), which a logger may emit even when
/// stderr is not a terminal.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// Where the admin listener of a `berth` under test goes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum AdminListen {
    /// `--admin-listen 127.0.0.1:0`.
    #[default]
    Ephemeral,
    /// `--admin-listen off`.
    Off,
    /// No flag: whatever the config file (or the default) says.
    Unset,
}

/// Describes a `berth` process to start: which files go into its apps directory, which flags
/// and environment it gets.
#[derive(Debug, Default)]
pub struct BerthBuilder {
    /// `(crate name, file name)` of each cdylib copied into the apps directory.
    apps: Vec<(String, String)>,
    /// Arbitrary files written into the apps directory.
    files: Vec<(String, Vec<u8>)>,
    /// Use this apps directory (possibly missing) instead of the temporary one.
    apps_dir: Option<PathBuf>,
    /// Pass `--apps-dir`/`--listen` through `BERTH_APPS_DIR`/`BERTH_LISTEN` instead of flags.
    config_through_env: bool,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    /// Variables removed from the child's environment (after `envs` and the harness defaults).
    envs_removed: Vec<String>,
    /// Variables added to the environment the child would inherit from the test process, as if
    /// the developer's shell had exported them (the harness must drop the `BERTH_*` ones).
    shell_envs: Vec<(OsString, OsString)>,
    /// Contents of `berth.toml`, passed with `--config`.
    config: Option<String>,
    admin: AdminListen,
    /// Pass no `--apps-dir`, `--listen` or `--admin-listen`: the config file says.
    only_config: bool,
}

impl BerthBuilder {
    /// Copies the cdylib of `crate_name` into the apps directory under its usual file name.
    pub fn app(self, crate_name: &str) -> Self {
        let file = default_file_name(crate_name);
        self.app_as(crate_name, &file)
    }

    /// Copies the cdylib of `crate_name` into the apps directory as `file_name`.
    pub fn app_as(mut self, crate_name: &str, file_name: &str) -> Self {
        self.apps
            .push((crate_name.to_owned(), file_name.to_owned()));
        self
    }

    /// Writes a file with `contents` into the apps directory.
    pub fn file(mut self, file_name: &str, contents: &[u8]) -> Self {
        self.files.push((file_name.to_owned(), contents.to_vec()));
        self
    }

    /// Points `--apps-dir` at `dir` instead of a fresh temporary directory.
    pub fn apps_dir(mut self, dir: &Path) -> Self {
        self.apps_dir = Some(dir.to_path_buf());
        self
    }

    /// Configures the apps directory and listen address through the environment.
    pub fn config_through_env(mut self) -> Self {
        self.config_through_env = true;
        self
    }

    /// Adds command-line arguments after `--apps-dir` and `--listen`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|arg| (*arg).to_owned()));
        self
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Removes an environment variable from the child's environment, including one the harness
    /// sets itself (`BERTH_ALLOW_OUTBOUND`).
    pub fn env_remove(mut self, key: &str) -> Self {
        self.envs_removed.push(key.to_owned());
        self
    }

    /// Adds a variable to the environment the child would inherit from the test process, as if
    /// the developer's shell had exported it: unlike [`BerthBuilder::env`], the harness filters it
    /// like any inherited variable. For testing that filter without touching the test process's
    /// own environment (shared by tests running in parallel).
    pub fn shell_env(mut self, key: &str, value: &str) -> Self {
        self.shell_envs.push((key.into(), value.into()));
        self
    }

    /// Writes `toml` to `berth.toml` next to the apps directory (so `apps_dir = "apps"` names
    /// it) and passes `--config` with its path.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    /// Passes `--admin-listen off` instead of `--admin-listen 127.0.0.1:0`.
    pub fn admin_off(mut self) -> Self {
        self.admin = AdminListen::Off;
        self
    }

    /// Passes neither `--apps-dir`, `--listen` nor `--admin-listen`: the config file gives them.
    pub fn only_config(mut self) -> Self {
        self.only_config = true;
        self.admin = AdminListen::Unset;
        self
    }

    /// Starts `berth` and waits until it prints `listening on http://ADDR` (or `https://ADDR`)
    /// and, with an ephemeral admin listener, `admin listening on http://ADDR`.
    pub fn start(self) -> Berth {
        let mut berth = self.spawn();
        berth.wait_ready();
        berth
    }

    /// Starts `berth` without waiting for it to become ready.
    pub fn spawn(self) -> Berth {
        let temp = test_dir();
        let own_apps_dir = temp.path().join("apps");
        std::fs::create_dir(&own_apps_dir).expect("create the apps directory");
        for (crate_name, file_name) in &self.apps {
            let from = cdylib(crate_name);
            let to = own_apps_dir.join(file_name);
            std::fs::copy(&from, &to)
                .unwrap_or_else(|err| panic!("copy {} to {}: {err}", from.display(), to.display()));
        }
        for (file_name, contents) in &self.files {
            std::fs::write(own_apps_dir.join(file_name), contents).expect("write apps-dir file");
        }
        let apps_dir = self.apps_dir.clone().unwrap_or(own_apps_dir);
        let config_file = self.config.as_ref().map(|toml| {
            let path = temp.path().join("berth.toml");
            std::fs::write(&path, toml).expect("write berth.toml");
            path
        });
        let listen = "127.0.0.1:0";

        let mut command = berth_command(&self.shell_envs);
        // Berth reads `./berth.toml` when it exists: run it where only the test puts one.
        command.current_dir(temp.path());
        // Berth's shadow copies go to a directory under TMPDIR, which it removes when it exits
        // but not when the harness kills it: keep them in the test's own directory.
        command.env("TMPDIR", temp.path());
        command.env("RUST_LOG", "info");
        // Outbound is denied by default; most tests fetch from their own upstreams. Tests of the
        // allowlist override this with `.env("BERTH_ALLOW_OUTBOUND", "")` or per-app lists.
        command.env("BERTH_ALLOW_OUTBOUND", "*");
        if let Some(path) = &config_file {
            command.arg("--config").arg(path);
        }
        if self.only_config {
            // Everything comes from the config file.
        } else if self.config_through_env {
            command.env("BERTH_APPS_DIR", &apps_dir);
            command.env("BERTH_LISTEN", listen);
        } else {
            command.arg("--apps-dir").arg(&apps_dir);
            command.args(["--listen", listen]);
        }
        match self.admin {
            AdminListen::Ephemeral => {
                command.args(["--admin-listen", listen]);
            }
            AdminListen::Off => {
                command.args(["--admin-listen", "off"]);
            }
            AdminListen::Unset => {}
        }
        command.args(&self.args);
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        for key in &self.envs_removed {
            command.env_remove(key);
        }
        Berth::launch(
            command,
            temp,
            apps_dir,
            self.admin == AdminListen::Ephemeral,
        )
    }
}

/// A fresh temporary directory for one `berth` process (its working directory, `TMPDIR`, apps
/// directory and config file).
fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .expect("create a temporary directory")
}

/// A running `berth` process with its own apps directory. Killed on drop.
#[derive(Debug)]
pub struct Berth {
    child: Child,
    /// The command line, for failure messages.
    description: String,
    /// The address parsed from the `listening on` line, once ready.
    addr: Option<SocketAddr>,
    /// Whether that line said `https://`.
    tls: bool,
    /// The address parsed from the `admin listening on` line, once looked for.
    admin_addr: Option<SocketAddr>,
    /// Whether `start()` waits for the admin listener too.
    wait_for_admin: bool,
    /// The directory `berth` loads apps from.
    apps_dir: PathBuf,
    stderr: Arc<Captured>,
    stdout: Arc<Captured>,
    /// The exit status, once observed.
    exit: Option<ExitStatus>,
    /// Holds the apps directory and `berth.toml`; deleted when the test ends.
    _temp: tempfile::TempDir,
}

impl Berth {
    /// Describes a `berth` process; see [`BerthBuilder`].
    pub fn builder() -> BerthBuilder {
        BerthBuilder::default()
    }

    /// Spawns `command` with piped output, read on background threads.
    fn launch(
        mut command: Command,
        temp: tempfile::TempDir,
        apps_dir: PathBuf,
        wait_for_admin: bool,
    ) -> Self {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let description = format!("{command:?}");
        let mut child = command
            .spawn()
            .unwrap_or_else(|err| panic!("spawn {description}: {err}"));
        let stderr = Captured::spawn_reader(child.stderr.take().expect("piped stderr"));
        let stdout = Captured::spawn_reader(child.stdout.take().expect("piped stdout"));
        Berth {
            child,
            description,
            addr: None,
            tls: false,
            admin_addr: None,
            wait_for_admin,
            apps_dir,
            stderr,
            stdout,
            exit: None,
            _temp: temp,
        }
    }

    /// Starts `berth` with the given crates' cdylibs in its apps directory.
    pub fn with_apps(crate_names: &[&str]) -> Self {
        crate_names
            .iter()
            .fold(Self::builder(), |builder, name| builder.app(name))
            .start()
    }

    fn wait_ready(&mut self) {
        let public = |line: &str| !line.contains("admin listening on ");
        let (which, addr) = self.wait_for_address(&[LISTENING, LISTENING_TLS], public);
        self.addr = Some(addr);
        self.tls = which == 1;
        if self.wait_for_admin {
            self.admin_addr();
        }
    }

    /// Waits for the first stderr line containing one of `needles` (and accepted by `accept`)
    /// and parses the address that follows it; returns which needle matched and the address.
    /// Panics after [`READY_TIMEOUT`].
    fn wait_for_address(
        &mut self,
        needles: &[&str],
        accept: impl Fn(&str) -> bool,
    ) -> (usize, SocketAddr) {
        let parsed = self.stderr.wait_line(READY_TIMEOUT, |line| {
            if !accept(line) {
                return None;
            }
            needles.iter().enumerate().find_map(|(which, needle)| {
                let start = line.find(needle)? + needle.len();
                let rest = &line[start..];
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                Some((which, rest[..end].trim_end_matches('/').to_owned()))
            })
        });
        let Some((which, text)) = parsed else {
            let status = self.child.try_wait().ok().flatten();
            panic!(
                "berth did not print `{}ADDR` within {READY_TIMEOUT:?} (exit status: \
                 {status:?}); command: {}\nstderr:\n{}",
                needles.join("ADDR` or `"),
                self.description,
                self.stderr()
            );
        };
        let needle = needles[which];
        let addr = text.parse().unwrap_or_else(|err| {
            panic!("cannot parse the address {text:?} after {needle:?} in berth's log: {err}")
        });
        (which, addr)
    }

    /// The address `berth` listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("berth was started with `start()`")
    }

    /// `http://ADDR{path}` (`https://` when berth serves TLS); `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr())
    }

    /// Whether berth said it serves TLS (`listening on https://ADDR`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The address of the admin listener, from its `admin listening on http://ADDR` line
    /// (waiting for that line if it has not been seen yet).
    pub fn admin_addr(&mut self) -> SocketAddr {
        if let Some(addr) = self.admin_addr {
            return addr;
        }
        let (_, addr) = self.wait_for_address(&[ADMIN_LISTENING], |_| true);
        self.admin_addr = Some(addr);
        addr
    }

    /// `http://ADMIN_ADDR{path}`; `path` starts with `/`. The admin address must be known: the
    /// admin listener was started on an ephemeral port by `start()`, or [`Berth::admin_addr`]
    /// was called.
    pub fn admin_url(&self, path: &str) -> String {
        let addr = self
            .admin_addr
            .expect("the admin address is known (ephemeral admin listener, or admin_addr())");
        format!("http://{addr}{path}")
    }

    /// The apps directory `berth` was started with.
    pub fn apps_dir(&self) -> &Path {
        &self.apps_dir
    }

    /// The process id of `berth`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not exited, crashed or been killed).
    pub fn is_running(&mut self) -> bool {
        match self.child.try_wait().expect("try_wait on berth") {
            Some(status) => {
                self.exit = Some(status);
                false
            }
            None => true,
        }
    }

    /// Everything `berth` has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits until some stderr line contains every one of `needles`; returns that line.
    ///
    /// Panics with the whole stderr when no such line appears within `timeout`.
    pub async fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> String {
        let what = format!("contains all of {needles:?}");
        let needles: Vec<String> = needles.iter().map(|&needle| needle.to_owned()).collect();
        self.wait_for_line(&what, timeout, move |line| {
            needles.iter().all(|needle| line.contains(needle.as_str()))
        })
        .await
    }

    /// Waits until a stderr line satisfies `matches` (described by `what` in the failure
    /// message) and returns it; panics, showing stderr, after `timeout` or when berth closes
    /// stderr without such a line.
    pub async fn wait_for_line(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool + Send + 'static,
    ) -> String {
        // `wait_line` blocks on the reader's condition variable: off the runtime's threads.
        let stderr = Arc::clone(&self.stderr);
        let found = tokio::task::spawn_blocking(move || {
            stderr.wait_line(timeout, |line| matches(line).then(|| line.to_owned()))
        })
        .await
        .expect("the stderr waiter does not panic");
        found.unwrap_or_else(|| {
            panic!(
                "no stderr line of berth {what} within {timeout:?}; stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// The stderr lines so far (ANSI sequences stripped).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().lines.clone()
    }

    /// Sends SIGTERM to the process.
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM, "SIGTERM");
    }

    /// Sends SIGHUP to the process (a full rescan of the apps directory).
    pub fn sighup(&self) {
        self.signal(libc::SIGHUP, "SIGHUP");
    }

    /// Sends SIGKILL to the process (it cannot clean up; the harness still reaps it).
    pub fn sigkill(&self) {
        self.signal(libc::SIGKILL, "SIGKILL");
    }

    #[allow(unsafe_code)]
    fn signal(&self, signal: libc::c_int, name: &str) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits in pid_t");
        // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child, which has
        // not been reaped yet (we only reap in `wait_exit`/`Drop`), so it cannot name a reused
        // pid.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({name}): {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit and for both pipes to close (so [`Berth::stderr`] and
    /// [`Berth::stdout`] are complete); panics (showing stderr) after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on berth") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "berth did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        self.exit = Some(status);
        // The pipes close right after the exit; wait for the readers to see it.
        let rest = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
        let pipes = [Arc::clone(&self.stderr), Arc::clone(&self.stdout)];
        tokio::task::spawn_blocking(move || {
            for pipe in pipes {
                pipe.wait_closed(rest);
            }
        })
        .await
        .expect("the pipe waiter does not panic");
        status
    }

    /// [`Berth::wait_exit`] for tests without a runtime of their own (`--help`, bad
    /// configuration): it runs one for the wait. Panics when called inside a runtime.
    pub fn wait_exit_blocking(&mut self, timeout: Duration) -> ExitStatus {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("build a runtime to wait in")
            .block_on(self.wait_exit(timeout))
    }

    /// Everything `berth` has written to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.text()
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        if self.exit.is_none() {
            // Either it is still running (kill it) or it has exited and kill fails harmlessly.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== berth ({}) stderr =====\n{}\n===== berth stdout =====\n{}\n=====",
                self.description,
                self.stderr(),
                self.stdout()
            );
        }
    }
}

/// Runs `berth` with exactly `args` (no apps directory, no listen address) until it exits;
/// returns its exit status, stdout and stderr. Panics when it has not exited within `timeout`.
pub fn run_berth(args: &[&str], timeout: Duration) -> (ExitStatus, String, String) {
    let temp = test_dir();
    let mut command = berth_command(&[]);
    // Berth reads `./berth.toml` when it exists: run it where there is none.
    command.current_dir(temp.path()).args(args);
    // It is given no apps directory; `apps_dir()` names one that does not exist.
    let apps_dir = temp.path().join("apps");
    let mut berth = Berth::launch(command, temp, apps_dir, false);
    let status = berth.wait_exit_blocking(timeout);
    (status, berth.stdout(), berth.stderr())
}

// ---------------------------------------------------------------------------------------------
// HTTP clients
// ---------------------------------------------------------------------------------------------

/// Which protocol a request goes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c, no upgrade).
    Http2,
}

/// A complete response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {:?}", self.text()))
    }

    /// The `content-type` header, or `""`.
    pub fn content_type(&self) -> &str {
        self.headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }
}

/// A request for [`send`].
#[derive(Debug)]
pub struct Req<'a> {
    pub proto: Proto,
    pub method: Method,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

impl<'a> Req<'a> {
    /// `GET url` over HTTP/1.1.
    pub fn get(url: &'a str) -> Self {
        Self {
            proto: Proto::Http1,
            method: Method::GET,
            url,
            headers: &[],
            body: b"",
        }
    }

    /// The same request over `proto`.
    pub fn proto(self, proto: Proto) -> Self {
        Self { proto, ..self }
    }
}

/// Sends `req` on a fresh client and reads the whole response; `Err` describes a connection,
/// protocol or body error (or the [`REQUEST_TIMEOUT`]).
pub async fn try_send(req: Req<'_>) -> Result<Reply, String> {
    let mut builder = hyper::Request::builder()
        .method(req.method.clone())
        .uri(req.url);
    for (name, value) in req.headers {
        builder = builder.header(*name, HeaderValue::from_str(value).expect("header value"));
    }
    let request: Request<Full<Bytes>> = builder
        .body(Full::new(Bytes::copy_from_slice(req.body)))
        .expect("valid request");
    let mut client = Client::builder(TokioExecutor::new());
    if req.proto == Proto::Http2 {
        client.http2_only(true);
    }
    let client = client.build_http::<Full<Bytes>>();
    exchange(&client, request).await
}

/// Sends `request` with `client` and reads the whole response, within [`REQUEST_TIMEOUT`].
pub async fn exchange<C, B>(client: &Client<C, B>, request: Request<B>) -> Result<Reply, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|err| format!("request failed: {err:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|err| format!("body failed after status {}: {err:?}", parts.status))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no complete response within {REQUEST_TIMEOUT:?}")))
}

/// Like [`try_send`], panicking on error.
pub async fn send(req: Req<'_>) -> Reply {
    let what = format!("{} {} ({:?})", req.method, req.url, req.proto);
    try_send(req)
        .await
        .unwrap_or_else(|err| panic!("{what}: {err}"))
}

/// `GET url` over HTTP/1.1.
pub async fn get(url: &str) -> Reply {
    send(Req::get(url)).await
}

/// `POST url` over HTTP/1.1 with an empty body.
pub async fn post(url: &str) -> Reply {
    send(Req {
        method: Method::POST,
        ..Req::get(url)
    })
    .await
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for URLs inside query strings.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Bounded load
// ---------------------------------------------------------------------------------------------

/// How a [`BoundedLoad`] runs. Every bound has a default, so no test can make it run away.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Concurrent client loops, each with at most one request outstanding.
    pub clients: usize,
    /// Requests per client, at most.
    pub max_requests: usize,
    /// How long the load runs, at most.
    pub max_time: Duration,
    /// Pause after each request: leaves CPU to the server and to the other tests.
    pub pause: Duration,
    /// Upper bound for one request; a slower one counts as failed.
    pub request_timeout: Duration,
}

impl Default for LoadPlan {
    fn default() -> Self {
        LoadPlan {
            clients: 4,
            max_requests: 1000,
            max_time: Duration::from_secs(30),
            pause: Duration::from_millis(2),
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// One request of a [`BoundedLoad`].
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Which client loop sent it.
    pub client: usize,
    /// When it was sent and when its answer (or error) came.
    pub sent: Instant,
    pub done: Instant,
    /// `Err` describes a failure: a connection error, a timeout, a wrong status or body.
    pub result: Result<(), String>,
}

/// Client loops GETting one URL, each request on a new connection with `connection: close`:
/// a request can then only fail if the connection it was on broke (unlike a keep-alive client,
/// which may find its idle connection closed). Bounded in requests and in time.
#[derive(Debug)]
pub struct BoundedLoad {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<std::sync::atomic::AtomicUsize>,
    failed: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
}

impl BoundedLoad {
    /// Starts `plan.clients` loops GETting `url`; a `200` whose body is `expected` is a success.
    pub fn start(url: &str, expected: &str, plan: &LoadPlan) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + plan.max_time;
        let tasks = (0..plan.clients)
            .map(|client| {
                let (url, expected, plan) = (url.to_owned(), expected.to_owned(), plan.clone());
                let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    while outcomes.len() < plan.max_requests
                        && !stop.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                    {
                        let sent = Instant::now();
                        let req = Req {
                            headers: &[("connection", "close")],
                            ..Req::get(&url)
                        };
                        let result = match tokio::time::timeout(plan.request_timeout, try_send(req))
                            .await
                        {
                            Err(_) => Err(format!("no response within {:?}", plan.request_timeout)),
                            Ok(Err(err)) => Err(err),
                            Ok(Ok(reply)) if reply.status == 200 && reply.body == expected => {
                                Ok(())
                            }
                            Ok(Ok(reply)) => Err(format!("{} {:?}", reply.status, reply.text())),
                        };
                        let counter = if result.is_ok() { &ok } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                        outcomes.push(Outcome {
                            client,
                            sent,
                            done: Instant::now(),
                            result,
                        });
                        tokio::time::sleep(plan.pause).await;
                    }
                    outcomes
                })
            })
            .collect();
        BoundedLoad {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Failed requests so far.
    pub fn failed(&self) -> usize {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until at least `count` requests have succeeded in all; `false` after `timeout` or
    /// once every client loop has reached its bounds.
    pub async fn wait_ok(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ok() >= count {
                return true;
            }
            if Instant::now() >= deadline || self.tasks.iter().all(|task| task.is_finished()) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients (each finishes its current request) and returns every outcome,
    /// ordered by when it completed.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut outcomes = Vec::new();
        for task in self.tasks {
            outcomes.extend(task.await.expect("load task"));
        }
        outcomes.sort_by_key(|outcome| outcome.done);
        LoadReport { outcomes }
    }
}

/// What the clients of a [`BoundedLoad`] saw.
#[derive(Debug)]
pub struct LoadReport {
    /// Every request, ordered by when it completed.
    pub outcomes: Vec<Outcome>,
}

impl LoadReport {
    /// Successful requests.
    pub fn ok(&self) -> usize {
        self.outcomes.iter().filter(|o| o.result.is_ok()).count()
    }

    /// The failed requests.
    pub fn failures(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.result.is_err()).collect()
    }

    /// Failed requests that completed in `from..to`.
    pub fn failed_between(&self, from: Instant, to: Instant) -> usize {
        self.failures()
            .iter()
            .filter(|o| from <= o.done && o.done < to)
            .count()
    }

    /// Successful requests sent at or after `at`.
    pub fn ok_sent_after(&self, at: Instant) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.result.is_ok() && o.sent >= at)
            .count()
    }

    /// A line for failure messages: the counts and the first few failures, timed from `origin`.
    pub fn summary(&self, origin: Instant) -> String {
        let failures = self.failures();
        let mut text = format!(
            "{} requests: {} ok, {} failed",
            self.outcomes.len(),
            self.ok(),
            failures.len()
        );
        for failure in failures.iter().take(10) {
            text.push_str(&format!(
                "\n  client {} at {:.3}s..{:.3}s: {}",
                failure.client,
                failure.sent.saturating_duration_since(origin).as_secs_f64(),
                failure.done.saturating_duration_since(origin).as_secs_f64(),
                failure.result.as_ref().err().map_or("", String::as_str)
            ));
        }
        text
    }
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// The value of `field` (`VmRSS`, `VmHWM`) in `/proc/<pid>/status`, in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("read /proc/{pid}/status: {err}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
}

/// Asserts `elapsed` is within `range` (seconds), naming `what`.
pub fn assert_about(what: &str, elapsed: Duration, range: std::ops::RangeInclusive<f64>) {
    let secs = elapsed.as_secs_f64();
    assert!(
        range.contains(&secs),
        "{what} after {secs:.2} s, expected {:.1} to {:.1} s",
        range.start(),
        range.end()
    );
}

// ---------------------------------------------------------------------------------------------
// The apps directory
// ---------------------------------------------------------------------------------------------

/// How a test puts a new file at a path in the apps directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replace {
    /// Write a temporary file with a non-`.so` name next to it, then rename it over the target
    /// (atomic: the way deploy tools do it).
    Rename,
    /// `cp new.so apps/app.so`: truncate the loaded file and write the new bytes into it.
    InPlace,
}

/// Puts the contents of `from` at `apps_dir/file_name`.
pub fn replace(apps_dir: &Path, file_name: &str, from: &Path, how: Replace) {
    let target = apps_dir.join(file_name);
    match how {
        Replace::Rename => {
            let temp = apps_dir.join(format!(".{file_name}.tmp"));
            std::fs::copy(from, &temp).unwrap_or_else(|err| {
                panic!("copy {} to {}: {err}", from.display(), temp.display())
            });
            std::fs::rename(&temp, &target).unwrap_or_else(|err| {
                panic!("rename {} to {}: {err}", temp.display(), target.display())
            });
        }
        Replace::InPlace => {
            std::fs::copy(from, &target).unwrap_or_else(|err| {
                panic!("copy {} over {}: {err}", from.display(), target.display())
            });
        }
    }
}

/// Writes `contents` to `apps_dir/file_name` through a temporary name and a rename.
pub fn replace_with_bytes(apps_dir: &Path, file_name: &str, contents: &[u8]) {
    let temp = apps_dir.join(format!(".{file_name}.tmp"));
    std::fs::write(&temp, contents).expect("write the temporary file");
    std::fs::rename(&temp, apps_dir.join(file_name)).expect("rename over the target");
}

/// The file name the `swap` app is served from in the reload and admin tests.
pub const SWAP_SO: &str = "swap.so";

/// Both builds of the `swap` app, copied once out of the target directory (so that a rebuild
/// during the test cannot change them).
#[derive(Debug)]
pub struct Builds {
    pub a: PathBuf,
    pub b: PathBuf,
    _dir: tempfile::TempDir,
}

impl Builds {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("berth-swap-builds-")
            .tempdir()
            .expect("tempdir");
        let a = dir.path().join("swap-a.so");
        let b = dir.path().join("swap-b.so");
        std::fs::copy(cdylib("fixture_swap_a"), &a).expect("copy swap-a");
        std::fs::copy(cdylib("fixture_swap_b"), &b).expect("copy swap-b");
        Builds { a, b, _dir: dir }
    }
}

// ---------------------------------------------------------------------------------------------
// The admin listener's `/apps` document
// ---------------------------------------------------------------------------------------------

/// `GET /apps` on the admin listener, as JSON.
pub async fn admin_apps(berth: &Berth) -> Value {
    let reply = get(&berth.admin_url("/apps")).await;
    assert_eq!(reply.status, 200, "admin GET /apps: {}", reply.text());
    reply.json()
}

/// The entry for `name` in the `apps` array of an admin `/apps` document.
pub fn app_entry<'a>(apps: &'a Value, name: &str) -> Option<&'a Value> {
    apps["apps"]
        .as_array()
        .unwrap_or_else(|| panic!("admin /apps has no `apps` array: {apps}"))
        .iter()
        .find(|app| app["name"] == name)
}

/// Polls the admin `/apps` document until `check` accepts it; panics with the last document
/// and `what` after `timeout`.
pub async fn wait_for_apps(
    berth: &Berth,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    wait_for_admin(berth, "/apps", what, timeout, check).await
}

/// Polls the admin JSON document at `path` until `check` accepts it; panics with the last
/// document, `what` and the log after `timeout`.
pub async fn wait_for_admin(
    berth: &Berth,
    path: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let reply = get(&berth.admin_url(path)).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.text());
        let document = reply.json();
        if check(&document) {
            return document;
        }
        assert!(
            started.elapsed() < timeout,
            "admin {path} did not show {what} within {timeout:?}; last document:\n{document:#}\n\
             stderr:\n{}",
            berth.stderr()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[test]
fn strip_ansi_removes_csi_sequences() {
    assert_eq!(
        strip_ansi("\u{1b}[2m2025\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listening"),
        "2025  INFO listening"
    );
    assert_eq!(strip_ansi("plain"), "plain");
}

#[test]
fn berth_vars_are_every_name_with_the_prefix() {
    let env = [
        ("PATH", "/usr/bin"),
        ("BERTH_LISTEN", "0.0.0.0:80"),
        ("BERTH_ACCESS_LOG", "1"),
        ("BERTH_SOMETHING_NEW", "x"),
        ("BERTHA", "not the prefix"),
        ("berth_listen", "another name on Linux"),
        ("MY_BERTH_LISTEN", "not a prefix"),
    ]
    .map(|(key, value)| (OsString::from(key), OsString::from(value)));
    assert_eq!(
        berth_vars(env),
        ["BERTH_LISTEN", "BERTH_ACCESS_LOG", "BERTH_SOMETHING_NEW"]
    );
}

#[test]
fn encode_escapes_url_syntax() {
    assert_eq!(
        encode("http://127.0.0.1:80/slow?ms=5&x=1"),
        "http%3A%2F%2F127.0.0.1%3A80%2Fslow%3Fms%3D5%26x%3D1"
    );
}
