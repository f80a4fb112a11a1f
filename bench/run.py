#!/usr/bin/env python3
"""Berth's benchmark suite: Berth against a native hyper server and the Python servers it
replaces, side by side in one run on this machine.

    python3 bench/run.py [--smoke] [--runs 3] [--out BENCHMARKS.md]

It installs what it uses (wrk, h2load and nginx from Debian's packages, when missing; uvicorn and
aiohttp into a throwaway virtualenv), builds Berth, the sample apps and the native baselines in
release mode, starts every server itself on 127.0.0.1, and measures:

* boundary: the criterion micro-benchmark `server/benches/boundary.rs` (one request through the
  C ABI vs. the same handler called directly), pinned like the servers.
* hello: Berth + `hello` (also with `--access-log`, to show the log's cost) vs. native-hello,
  native-abi (native-hello's server calling the `hello` plugin through the ABI: the boundary's
  own cost), uvicorn and aiohttp; wrk (HTTP/1.1 keep-alive) at 1, 64 and 256 connections, and
  h2load (HTTP/2, Berth and the native servers only).
* fetch: Berth + `fetch` vs. native-fetch, uvicorn and aiohttp, each fetching a small file from
  nginx per request.
* fan-out: `fanout --n 10000` (10,000 connections, one request each, sent at once) against
  Berth + `gather?sleep_ms=1000` and native-sleep: successes, wall time, p99, peak RSS.

Each server runs pinned to CPU 0 (`taskset -c 0`); the load generator and nginx run pinned to
CPU 1. Within a run, every case is measured on all servers back to back (each server started,
warmed up and measured alone, then stopped; the order alternates between runs), so that each
ratio compares figures taken seconds apart. Every figure is the median of `--runs` runs, and each ratio is the median
of the per-run ratios to the native baseline. The report goes to BENCHMARKS.md, the chart to
bench/results.svg.

`--smoke` runs every scenario once for about 2 s (fan-out with 200 requests, the boundary
benchmark with criterion's `--quick`), writes its report and chart to a temporary directory (or
to `--out` and the `.svg` beside it), and exits non-zero if any server fails to answer or any
scenario sees an error or produces no figure; a missed target does not change the exit status.
CI runs it so that the suite cannot rot.

Only the standard library is used here. Linux only (taskset, /proc).
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
SERVER_CPU = "0"
LOAD_CPU = "1"
TICKS = os.sysconf("SC_CLK_TCK")
# The upstream's small file; the fetch endpoints answer with its first 20 bytes.
SMALL_FILE = (b"Berth benchmark upstream: a small static file served by nginx. " * 2)[:128]
HELLO = b"Hello, world!\n"
# A measurement during which other processes used more than this share of the server's CPU is
# flagged in the report.
INTERFERENCE_FLAG = 10.0
# A load generator using this much of its CPU may be what limits the figure, not the server.
LOAD_BOUND = 95.0
# The criterion micro-benchmark of one request through the C ABI (server/benches/boundary.rs;
# it loads target/release/libhello.so), the last line it prints, and issue 5's target for it.
BOUNDARY_BENCH = ["cargo", "bench", "-p", "berth-server", "--bench", "boundary"]
BOUNDARY_LINE = re.compile(
    r"boundary cost per request: direct (-?[\d.]+) ns, through the ABI (-?[\d.]+) ns, "
    r"difference (-?[\d.]+) ns"
)
BOUNDARY_TARGET_NS = 1000.0
# Issue 5's hello target: Berth's requests/s against native's, in the same run.
HELLO_TARGET_X = 0.95

SERVERS = {
    # key: (label, colour in the chart)
    "berth": ("Berth + app", "#2b6cb0"),
    "berth-logged": ("Berth + app, --access-log", "#90cdf4"),
    "native": ("native hyper", "#4a5568"),
    "native-abi": ("native hyper + app via the ABI", "#a0aec0"),
    "uvicorn": ("uvicorn (uvloop, httptools)", "#d69e2e"),
    "aiohttp": ("aiohttp (uvloop)", "#38a169"),
}


class SuiteError(Exception):
    """A server that would not start or answer, a tool that would not install: the suite stops."""


# --------------------------------------------------------------------------------------------
# Small helpers: commands, /proc, ports, HTTP checks


class Recorder:
    """Runs commands and remembers each distinct one (with the temp dir written as $TMP)."""

    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.commands = {}

    def note(self, cmd):
        line = shlex.join(str(part) for part in cmd).replace(self.tmp, "$TMP")
        line = line.replace(str(ROOT) + "/", "")
        self.commands.setdefault(line, None)

    def run(self, cmd, timeout, check=True, quiet=False, cwd=None):
        self.note(cmd)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        proc = subprocess.run(
            [str(part) for part in cmd],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            timeout=timeout,
        )
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if check and proc.returncode != 0:
            raise SuiteError(
                f"`{shlex.join(map(str, cmd))}` exited with {proc.returncode}:\n"
                f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        if not quiet and proc.returncode != 0:
            log(f"  (exit {proc.returncode}) {proc.stderr.strip()[-300:]}")
        return proc, {"wall": wall, "cpu_pct": 100.0 * cpu / wall if wall > 0 else 0.0}


def log(message):
    print(message, flush=True)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_ticks(pid):
    """User + system CPU ticks of a whole process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def core_ticks():
    """(busy, total) ticks per CPU, from /proc/stat."""
    cores = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *values = line.split()
                values = [int(v) for v in values[:8]]
                idle = values[3] + values[4]
                cores[name[3:]] = (sum(values) - idle, sum(values))
    return cores


def machine_busy(seconds):
    """CPU cores' worth of work done by anything on the machine over `seconds`."""
    first = core_ticks()
    time.sleep(seconds)
    second = core_ticks()
    busy = sum(second[c][0] - first[c][0] for c in second)
    return busy / TICKS / seconds


def vm_status(pid, key):
    """A kB figure from /proc/<pid>/status (VmHWM, VmRSS), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url, timeout=5.0):
    try:
        with OPENER.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------------------------
# Installing and building


def ensure_tools(rec):
    """wrk, h2load, nginx and taskset from Debian's packages, unless already there."""
    wanted = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx-light", "taskset": "util-linux"}
    missing = [pkg for tool, pkg in wanted.items() if not find_tool(tool)]
    if not missing:
        log("tools: wrk, h2load, nginx, taskset already installed")
        return
    apt_install(rec, missing)
    still = [tool for tool in wanted if not find_tool(tool)]
    if still:
        raise SuiteError(f"still missing after apt-get: {', '.join(still)}")


def apt_install(rec, packages):
    """Debian packages, through sudo unless root; the package lists are fetched first, as a fresh
    container has none."""
    if shutil.which("apt-get") is None:
        raise SuiteError(f"missing {', '.join(packages)} and no apt-get to install them")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log(f"installing {' '.join(packages)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (sudo + ["apt-get", "update", "-qq"], sudo + ["apt-get", "install", "-y", "-qq", *packages]):
        rec.note(cmd)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise SuiteError(f"`{shlex.join(cmd)}` failed:\n{proc.stdout[-3000:]}")


def find_tool(name):
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None
    )


def make_venv(rec, tmp):
    """A throwaway virtualenv with the pinned peers (bench/peers/requirements.txt)."""
    venv = tmp / "venv"
    cmd = [sys.executable, "-m", "venv", str(venv)]
    rec.note(cmd)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 and shutil.which("apt-get"):
        # Debian's python3 keeps venv (ensurepip) in a separate package.
        apt_install(rec, ["python3-venv"])
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SuiteError(f"cannot create a virtualenv:\n{proc.stdout[-2000:]}")
    python = venv / "bin" / "python"
    pip = [
        str(python),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "-r",
        str(PEERS / "requirements.txt"),
    ]
    rec.note(pip)
    proc = subprocess.run(pip, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SuiteError(f"pip install failed:\n{proc.stdout[-3000:]}")
    return python


def build(rec):
    """Release builds of what the servers run, and of the boundary benchmark (compiled here, on
    every CPU, so that its pinned run measures and does not compile)."""
    commands = (
        ["cargo", "build", "--release", "-p", "berth-server", "-p", "hello", "-p", "fetch"]
        + ["-p", "gather", "-p", "berth-bench"],
        [*BOUNDARY_BENCH, "--no-run"],
    )
    for cmd in commands:
        rec.note(cmd)
        log("building: " + shlex.join(cmd))
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise SuiteError(f"`{shlex.join(cmd)}` failed:\n{proc.stdout[-4000:]}")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "release"


# --------------------------------------------------------------------------------------------
# Servers


class Server:
    """One server process, pinned to one CPU, with its output in a log file."""

    def __init__(self, key, argv, port, check_path, expect, cwd, env=None, name=None, cpu=SERVER_CPU):
        self.key = key
        self.cpu = cpu
        self.name = name or key
        self.argv = [str(a) for a in argv]
        self.port = port
        self.check_path = check_path
        self.expect = expect
        self.cwd = cwd
        self.env = env
        self.proc = None
        self.log_path = None

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, rec, tmp):
        cmd = ["taskset", "-c", self.cpu, *self.argv]
        rec.note(cmd)
        self.log_path = tmp / f"{self.name}.log"
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 30
        problem = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SuiteError(f"{self.name} exited with {self.proc.returncode} at start:\n{self.tail()}")
            try:
                status, body = http_get(self.url(self.check_path), timeout=5)
                if status == 200 and self.expect(body):
                    return self
                problem = f"status {status}, body {body[:200]!r}"
            except (OSError, urllib.error.URLError) as err:
                problem = str(err)
            time.sleep(0.1)
        self.stop()
        raise SuiteError(f"{self.name} did not answer {self.check_path} correctly: {problem}\n{self.tail()}")

    def tail(self, lines=15):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        # With --access-log Berth logs every request: a long run's log is large and of no further use.
        if self.log_path is not None and exc[0] is None:
            self.log_path.unlink(missing_ok=True)


def start_nginx(rec, tmp, port):
    """nginx serving SMALL_FILE on 127.0.0.1:port, pinned to the load CPU."""
    nginx = find_tool("nginx")
    base = tmp / "nginx"
    (base / "html").mkdir(parents=True)
    (base / "html" / "small.txt").write_bytes(SMALL_FILE)
    # Workers run as nobody when started as root: they must be able to reach the file.
    for path in (tmp, base, base / "html"):
        path.chmod(0o755)
    (base / "html" / "small.txt").chmod(0o644)
    configure = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    # Temporary files under our directory, for each module this nginx was built with.
    temp_paths = "".join(
        f"    {kind}_temp_path {base}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        if f"--http-{kind.replace('_', '-')}-temp-path" in configure
    )
    conf = base / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
daemon off;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
{temp_paths}    server {{
        listen 127.0.0.1:{port} backlog=8192;
        root {base}/html;
    }}
}}
""")
    # nginx is the load side's: pinned with the load generator, not with the server under test.
    server = Server(
        "nginx",
        [nginx, "-e", base / "error.log", "-p", base, "-c", conf],
        port,
        "/small.txt",
        lambda body: body == SMALL_FILE,
        cwd=base,
        cpu=LOAD_CPU,
    )
    return server.start(rec, tmp)


# --------------------------------------------------------------------------------------------
# Load generators


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_ms(text):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def run_wrk(rec, url, conns, duration):
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", url]
    proc, usage = rec.run(cmd, timeout=duration + 60)
    out = proc.stdout
    result = {"load_cpu": usage["cpu_pct"]}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    result["rps"] = float(rps.group(1)) if rps else 0.0
    result["requests"] = int(total.group(1)) if total else 0
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        match = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        result[key] = wrk_ms(match.group(1)) if match else None
    errors = []
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if socket_errors and any(int(n) for n in socket_errors.groups()):
        errors.append(socket_errors.group(0))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors.append(non2xx.group(0))
    if result["requests"] == 0 or result["p99_ms"] is None:
        errors.append("wrk completed no request: " + (out + proc.stderr)[-300:])
    result["errors"] = errors
    return result


def run_h2load(rec, url, conns, streams, duration, tmp):
    log_file = tmp / "h2load.log"
    cmd = [
        "taskset",
        "-c",
        LOAD_CPU,
        "h2load",
        "-t1",
        f"-c{conns}",
        f"-m{streams}",
        f"-D{duration}",
        "--warm-up-time=1",
        f"--log-file={log_file}",
        url,
    ]
    proc, usage = rec.run(cmd, timeout=duration + 60, check=False)
    out = proc.stdout
    result = {"load_cpu": usage["cpu_pct"], "errors": []}
    rps = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    counts = re.search(
        r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    status = re.search(r"status codes: (\d+) 2xx", out)
    result["rps"] = float(rps.group(1)) if rps else 0.0
    result["requests"] = int(counts.group(3)) if counts else 0
    if proc.returncode != 0 or not counts:
        result["errors"].append(f"h2load exited with {proc.returncode}: {(out + proc.stderr)[-300:]}")
    elif any(int(n) for n in counts.groups()[3:]):
        result["errors"].append(counts.group(0))
    elif status and int(status.group(1)) != int(counts.group(3)):
        result["errors"].append("non-2xx answers: " + status.group(0))
    if "Application protocol: h2c" not in out:
        result["errors"].append("h2load did not speak h2c")
    latencies = []
    try:
        with open(log_file) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    latencies.append(int(parts[2]) / 1000.0)
    except OSError:
        pass
    log_file.unlink(missing_ok=True)
    latencies.sort()
    result["p50_ms"] = percentile(latencies, 50)
    result["p99_ms"] = percentile(latencies, 99)
    if not latencies:
        result["errors"].append("h2load logged no request")
    return result


def percentile(sorted_values, p):
    """Nearest-rank percentile, as the fanout client computes it."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def run_fanout(rec, binary, url, n):
    cmd = ["taskset", "-c", LOAD_CPU, binary, "--url", url, "--n", str(n), "--timeout", "30"]
    proc, usage = rec.run(cmd, timeout=90, check=False, quiet=True)
    try:
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {
            "errors": [f"fanout printed no report (exit {proc.returncode}): {proc.stderr[-300:]}"],
            "load_cpu": usage["cpu_pct"],
        }
    result = {
        "ok": report["ok"],
        "n": report["n"],
        "wall_s": report["wall_s"],
        "connect_s": report["connect_s"],
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
        "rps": report["ok"] / report["wall_s"] if report["wall_s"] else 0.0,
        "load_cpu": usage["cpu_pct"],
        "errors": [],
    }
    if report["failed"]:
        result["errors"].append(f"{report['failed']} of {n} failed, first: {report['first_error']}")
    return result


# --------------------------------------------------------------------------------------------
# The suite


class Suite:
    def __init__(self, args):
        self.smoke = args.smoke
        self.runs = 1 if args.smoke else args.runs
        self.duration = args.duration or (2 if args.smoke else 10)
        self.warmup = 1 if args.smoke else 2
        self.fanout_n = args.fanout_n or (200 if args.smoke else 10_000)
        self.conns = [1, 64, 256]
        self.h2 = (16, 16)  # connections, streams per connection
        self.fetch_conns = 64
        self.tmp = Path(tempfile.mkdtemp(prefix="berth-bench-"))
        self.rec = Recorder(self.tmp)
        self.results = []  # one dict per measurement
        # The boundary benchmark: its pinned command, one dict of ns figures per run that printed
        # its summary line, and what went wrong in the others.
        self.boundary_cmd = ["taskset", "-c", SERVER_CPU, *BOUNDARY_BENCH]
        if self.smoke:
            self.boundary_cmd += ["--", "--quick"]
        self.boundary_runs = []
        self.boundary_errors = []
        self.quiet_wait_budget = 0 if args.smoke else 180.0
        self.quiet_waited = 0.0
        self.retries = 0
        self.retry_budget = 0 if args.smoke else 15
        self.started = time.monotonic()

    # ---- setup

    def prepare(self):
        if platform.system() != "Linux":
            raise SuiteError("the suite needs Linux (taskset, /proc)")
        if (os.cpu_count() or 1) < 2:
            log("warning: one CPU: the server and the load generator share it")
        ensure_tools(self.rec)
        self.release = build(self.rec)
        log("virtualenv: installing bench/peers/requirements.txt")
        self.python = make_venv(self.rec, self.tmp)
        apps = self.tmp / "apps"
        apps.mkdir()
        for app in ("hello", "fetch", "gather"):
            shutil.copy(self.release / f"lib{app}.so", apps / f"{app}.so")
        self.apps = apps
        self.ports = {
            key: free_port()
            for key in (
                "berth",
                "berth-logged",
                "native-hello",
                "native-abi",
                "native-fetch",
                "native-sleep",
                "uvicorn",
                "aiohttp",
                "nginx",
            )
        }
        self.nginx = start_nginx(self.rec, self.tmp, self.ports["nginx"])
        self.upstream = f"http://127.0.0.1:{self.ports['nginx']}/small.txt"
        log(f"upstream: nginx on {self.upstream}")

    def server_env(self):
        """This environment without the variables that would change Berth's settings or its log."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_") and k != "RUST_LOG"}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def berth(self, key, check_path, expect, *flags):
        argv = [
            self.release / "berth",
            "--apps-dir",
            "apps",
            "--listen",
            f"127.0.0.1:{self.ports[key]}",
            "--admin-listen",
            "off",
            "--allow-outbound",
            "http://127.0.0.1:*",
            *flags,
        ]
        return Server(
            key, argv, self.ports[key], check_path, expect, cwd=self.tmp, env=self.server_env()
        )

    def peers(self, check_path, expect):
        uvicorn = Server(
            "uvicorn",
            [
                self.python,
                "-m",
                "uvicorn",
                "uvicorn_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                self.ports["uvicorn"],
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            self.ports["uvicorn"],
            check_path,
            expect,
            cwd=PEERS,
            env=self.server_env(),
        )
        aiohttp = Server(
            "aiohttp",
            [self.python, PEERS / "aiohttp_app.py", "--port", self.ports["aiohttp"]],
            self.ports["aiohttp"],
            check_path,
            expect,
            cwd=PEERS,
            env=self.server_env(),
        )
        return [uvicorn, aiohttp]

    def hello_servers(self):
        hello = lambda body: body == HELLO  # noqa: E731
        return [
            self.berth("berth", "/hello", hello),
            self.berth("berth-logged", "/hello", hello, "--access-log"),
            Server(
                "native",
                [self.release / "native-hello", "--listen", f"127.0.0.1:{self.ports['native-hello']}"],
                self.ports["native-hello"],
                "/hello",
                hello,
                cwd=self.tmp,
                env=self.server_env(),
            ),
            Server(
                "native-abi",
                [
                    self.release / "native-abi",
                    "--listen",
                    f"127.0.0.1:{self.ports['native-abi']}",
                    "--app",
                    self.release / "libhello.so",
                ],
                self.ports["native-abi"],
                "/hello",
                hello,
                cwd=self.tmp,
                env=self.server_env(),
            ),
            *self.peers("/hello", hello),
        ]

    def fetch_servers(self):
        query = "/fetch?url=" + urllib.parse.quote(self.upstream, safe="")
        head = lambda body: body == SMALL_FILE[:20]  # noqa: E731
        return [
            self.berth("berth", query, head),
            Server(
                "native",
                [self.release / "native-fetch", "--listen", f"127.0.0.1:{self.ports['native-fetch']}"],
                self.ports["native-fetch"],
                query,
                head,
                cwd=self.tmp,
                env=self.server_env(),
            ),
            *self.peers(query, head),
        ]

    def fanout_servers(self):
        sleeps = lambda body: len(body) > 0  # noqa: E731
        return [
            self.berth("berth", "/gather?sleep_ms=0", sleeps, "--max-connections", "20000"),
            Server(
                "native",
                [self.release / "native-sleep", "--listen", f"127.0.0.1:{self.ports['native-sleep']}"],
                self.ports["native-sleep"],
                "/sleep",
                sleeps,
                cwd=self.tmp,
                env=self.server_env(),
            ),
        ]

    # ---- measuring

    def wait_for_quiet(self):
        """Waits (within a budget) for other work on the machine to stop before a measurement."""
        if self.quiet_wait_budget <= 0:
            return
        waited = 0.0
        while self.quiet_waited < self.quiet_wait_budget:
            busy = machine_busy(0.5)
            if busy < 0.15:
                break
            if waited == 0:
                log(f"  machine busy ({busy:.2f} cores used by others): waiting for it to quiet down")
            time.sleep(2)
            waited += 2.5
            self.quiet_waited += 2.5

    def measure(self, server, fn, retry=True):
        """Runs `fn`, recording the server's CPU use and other processes' use of its CPU. Outside
        smoke mode, a measurement during which other processes took more than
        INTERFERENCE_FLAG% of the server's CPU is taken again (twice at most)."""
        for attempt in range(3 if retry and not self.smoke else 1):
            self.wait_for_quiet()
            pid = server.proc.pid
            ticks0, cores0, t0 = proc_ticks(pid), core_ticks(), time.monotonic()
            result = fn()
            ticks1, cores1, t1 = proc_ticks(pid), core_ticks(), time.monotonic()
            wall = t1 - t0
            server_cpu = 100.0 * (ticks1 - ticks0) / TICKS / wall
            core_busy = 100.0 * (cores1[SERVER_CPU][0] - cores0[SERVER_CPU][0]) / TICKS / wall
            result["server_cpu"] = server_cpu
            if result.get("rps") and "wall_s" not in result:
                # Server CPU time per request: steadier than requests/s when the machine is shared.
                result["cpu_us"] = server_cpu / 100.0 / result["rps"] * 1e6
            result["interference"] = max(0.0, core_busy - server_cpu)
            result["attempts"] = attempt + 1
            if not server.alive():
                result.setdefault("errors", []).append(f"{server.name} died:\n{server.tail()}")
                break
            if result["interference"] <= INTERFERENCE_FLAG or not self.retry_noisy():
                break
            log(f"  other processes took {result['interference']:.0f}% of CPU {SERVER_CPU}: measuring again")
        return result

    def retry_noisy(self):
        """Whether the retry budget allows measuring a noisy run again."""
        self.retries += 1
        return self.retries <= self.retry_budget

    def record(self, run, scenario, case, server, result):
        if not result.get("rps") and not result.get("errors"):
            result["errors"] = ["no requests/s figure"]
        entry = {"run": run, "scenario": scenario, "case": case, "server": server.key, **result}
        self.results.append(entry)
        rps = result.get("rps")
        p99 = result.get("p99_ms")
        line = f"  {scenario:7} {case:26} {server.key:12} "
        line += f"{rps:>10.0f} req/s" if rps is not None else " " * 16
        line += f"  p99 {p99:8.2f} ms" if p99 is not None else ""
        line += f"  cpu {result.get('server_cpu', 0):5.1f}%"
        if result.get("peak_rss_mib") is not None and "ok" in result:
            line += f"  ok {result['ok']}/{result['n']} wall {result['wall_s']:.2f}s rss {result['peak_rss_mib']:.0f} MiB"
        if result.get("errors"):
            line += "  ERRORS: " + "; ".join(result["errors"])[:400]
        log(line)

    def boundary(self):
        """The criterion boundary benchmark, `runs` times, pinned to the servers' CPU."""
        for run in range(1, self.runs + 1):
            self.wait_for_quiet()
            try:
                proc, _ = self.rec.run(self.boundary_cmd, timeout=900, check=False, quiet=True, cwd=ROOT)
            except subprocess.TimeoutExpired:
                self.boundary_errors.append(f"run {run}: no result after 900 s")
                log(f"  boundary: ERROR: {self.boundary_errors[-1]}")
                continue
            found = BOUNDARY_LINE.findall(proc.stdout)
            if proc.returncode != 0 or not found:
                what = f"exited with {proc.returncode}" if proc.returncode else "printed no summary line"
                tail = " / ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
                self.boundary_errors.append(f"run {run}: `cargo bench` {what}: {tail[-400:]}")
                log(f"  boundary: ERROR: {self.boundary_errors[-1]}")
                continue
            direct, abi, difference = (float(x) for x in found[-1])
            self.boundary_runs.append({"run": run, "direct_ns": direct, "abi_ns": abi, "diff_ns": difference})
            log(
                f"  boundary run {run}: direct {direct:.1f} ns, through the ABI {abi:.1f} ns, "
                f"difference {difference:.1f} ns"
            )

    def warm(self, server, url):
        self.rec.run(
            ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c64", f"-d{self.warmup}s", url],
            timeout=self.warmup + 60,
            check=False,
            quiet=True,
        )

    def pairs(self, servers, run):
        """The order to measure a case's servers in: back to back, so that a server and the
        native baseline it is compared with are measured seconds apart, not minutes (these
        machines are shared, and their speed drifts from one minute to the next). It alternates
        between runs so that neither side always goes first."""
        return servers if run % 2 else list(reversed(servers))

    def alone(self, server, url, fn):
        """Starts `server` for one measurement, warms it up and measures `fn` with nothing else
        serving. With a scenario's servers kept alive together between measurements (idle, or
        stopped with SIGSTOP), Berth's p99 at one connection was 5-10 ms in two runs against
        0.1-0.2 ms with each server alone; two Berth processes started by hand did not show it
        again, so the cause is open, and each server runs alone."""
        with server.start(self.rec, self.tmp):
            self.warm(server, url)
            return self.measure(server, fn)

    def hello(self, run):
        servers = self.pairs(self.hello_servers(), run)
        for conns in self.conns:
            for server in servers:
                url = server.url("/hello")
                result = self.alone(server, url, lambda: run_wrk(self.rec, url, conns, self.duration))
                self.record(run, "hello", f"HTTP/1.1, {conns} conn{'s' * (conns > 1)}", server, result)
        conns, streams = self.h2
        for server in servers:
            if server.key in ("berth", "berth-logged", "native", "native-abi"):
                url = server.url("/hello")
                result = self.alone(
                    server, url, lambda: run_h2load(self.rec, url, conns, streams, self.duration, self.tmp)
                )
                self.record(run, "hello", f"HTTP/2, {conns} conns × {streams} streams", server, result)

    def fetch(self, run):
        for server in self.pairs(self.fetch_servers(), run):
            url = server.url(server.check_path)
            result = self.alone(server, url, lambda: run_wrk(self.rec, url, self.fetch_conns, self.duration))
            self.record(run, "fetch", f"HTTP/1.1, {self.fetch_conns} conns", server, result)

    def fanout(self, run):
        for server in self.fanout_servers():
            # A fresh process for every run: its VmHWM is this run's peak.
            with server.start(self.rec, self.tmp):
                path = "/gather?sleep_ms=1000" if server.key == "berth" else "/sleep"
                idle_rss = vm_status(server.proc.pid, "VmRSS")
                result = self.measure(
                    server,
                    lambda: run_fanout(self.rec, self.release / "fanout", server.url(path), self.fanout_n),
                    # Again on the same process would blur its peak RSS.
                    retry=False,
                )
                if server.alive():
                    result["peak_rss_mib"] = vm_status(server.proc.pid, "VmHWM")
                    result["idle_rss_mib"] = idle_rss
                self.record(run, "fan-out", f"{self.fanout_n:,} at once, 1 s each", server, result)

    def run(self):
        self.prepare()
        log(f"boundary: {shlex.join(self.boundary_cmd)} ({self.runs} run(s))")
        self.boundary()
        for run in range(1, self.runs + 1):
            log(f"run {run} of {self.runs} ({self.duration} s per measurement)")
            self.hello(run)
            self.fetch(run)
            self.fanout(run)

    def cleanup(self, keep):
        if getattr(self, "nginx", None):
            self.nginx.stop()
        if keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Aggregation, targets, report


def aggregate(results):
    """Per (scenario, case, server): medians over runs, and medians of per-run ratios to native."""
    by_run = {}
    for r in results:
        by_run[(r["scenario"], r["case"], r["server"], r["run"])] = r
    keys = []
    for r in results:
        key = (r["scenario"], r["case"], r["server"])
        if key not in keys:
            keys.append(key)
    rows = {}
    for scenario, case, server in keys:
        runs = [r for r in results if (r["scenario"], r["case"], r["server"]) == (scenario, case, server)]
        row = {"scenario": scenario, "case": case, "server": server, "runs": len(runs)}
        for field in (
            "rps",
            "p50_ms",
            "p99_ms",
            "server_cpu",
            "cpu_us",
            "load_cpu",
            "interference",
            "wall_s",
            "connect_s",
            "peak_rss_mib",
            "idle_rss_mib",
            "ok",
            "n",
        ):
            row[field] = median([r.get(field) for r in runs])
        row["interference_max"] = max((r.get("interference") or 0.0) for r in runs)
        row["errors"] = [e for r in runs for e in r.get("errors", [])]
        for field in ("rps", "p99_ms", "cpu_us", "wall_s", "peak_rss_mib"):
            ratios = []
            for r in runs:
                base = by_run.get((scenario, case, "native", r["run"]))
                if base and base.get(field) and r.get(field) is not None:
                    ratios.append(r[field] / base[field])
            row[f"{field}_x"] = median(ratios)
            row[f"{field}_x_range"] = (min(ratios), max(ratios)) if ratios else None
        # Berth against each peer, and against native hyper calling the app through the ABI, per run.
        for peer in ("uvicorn", "aiohttp", "native-abi"):
            ratios = []
            for r in runs:
                other = by_run.get((scenario, case, peer, r["run"]))
                if other and other.get("rps") and r.get("rps") is not None:
                    ratios.append(r["rps"] / other["rps"])
            row[f"vs_{peer}"] = median(ratios)
        rows[(scenario, case, server)] = row
    return rows


def boundary_median(runs):
    """Medians over the boundary benchmark's runs (the difference's median taken over each run's
    difference), or None without any run."""
    if not runs:
        return None
    figures = {field: median([r[field] for r in runs]) for field in ("direct_ns", "abi_ns", "diff_ns")}
    return {"runs": len(runs), **figures}


def spread(berth, field):
    """`; runs LOW–HIGH`: the lowest and highest of the runs' ratios of `field` to native, or
    nothing for a single run."""
    low_high = berth.get(f"{field}_x_range")
    if not low_high or berth["runs"] < 2:
        return ""
    return f"; runs {low_high[0]:.2f}–{low_high[1]:.2f}"


def throughput(berth):
    """A requests/s ratio as the targets table gives it: the median, the runs' spread, and the CPU
    per request ratio, which swings less from run to run than requests/s on these machines."""
    text = f"{berth['rps_x']:.2f}×"
    runs = spread(berth, "rps")
    if runs:
        text += f" ({runs.removeprefix('; ')})"
    if berth.get("cpu_us_x") is not None:
        text += f"; CPU per request {berth['cpu_us_x']:.2f}×"
    return text


def targets(rows, fanout_n, boundary, boundary_errors):
    """The issue's targets, each with what was measured and whether it is met (None: not measured)."""
    checks = []

    def row(scenario, case, server):
        return rows.get((scenario, case, server))

    cases = []
    for key in rows:
        if key[0] == "hello" and key[1] not in cases:
            cases.append(key[1])
    for case in cases:
        berth = row("hello", case, "berth")
        if not berth:
            continue
        if berth["rps_x"] is not None:
            checks.append(
                (
                    f"hello {case}: Berth ≥ {HELLO_TARGET_X}× native requests/s",
                    throughput(berth),
                    berth["rps_x"] >= HELLO_TARGET_X,
                )
            )
        if berth["p99_ms_x"] is not None:
            checks.append(
                (
                    f"hello {case}: Berth p99 ≤ 1.1× native p99",
                    f"{berth['p99_ms_x']:.2f}× ({berth['p99_ms']:.2f} ms{spread(berth, 'p99_ms')})",
                    berth["p99_ms_x"] <= 1.1,
                )
            )
        if berth["vs_uvicorn"] is not None:
            checks.append(
                (
                    f"hello {case}: Berth ≥ 3× uvicorn requests/s",
                    f"{berth['vs_uvicorn']:.1f}×",
                    berth["vs_uvicorn"] >= 3,
                )
            )
    for key in rows:
        if key[0] == "fetch" and key[2] == "berth":
            berth = rows[key]
            if berth["rps_x"] is not None:
                checks.append(
                    (
                        f"fetch {key[1]}: Berth ≥ 0.9× native requests/s",
                        throughput(berth),
                        berth["rps_x"] >= 0.9,
                    )
                )
            if berth["vs_aiohttp"] is not None:
                checks.append(
                    (
                        f"fetch {key[1]}: Berth ≥ 3× aiohttp requests/s",
                        f"{berth['vs_aiohttp']:.1f}×",
                        berth["vs_aiohttp"] >= 3,
                    )
                )
    for key in rows:
        if key[0] == "fan-out" and key[2] == "berth":
            berth = rows[key]
            ok = berth["ok"]
            checks.append(
                (
                    f"fan-out: {fanout_n:,}/{fanout_n:,} succeed (every run)",
                    f"{int(ok) if ok is not None else 0:,} (median)",
                    not berth["errors"] and ok == fanout_n,
                )
            )
            if berth["wall_s_x"] is not None:
                checks.append(
                    (
                        "fan-out: wall ≤ 1.1× native",
                        f"{berth['wall_s_x']:.2f}× ({berth['wall_s']:.2f} s)",
                        berth["wall_s_x"] <= 1.1,
                    )
                )
            if berth["peak_rss_mib_x"] is not None:
                checks.append(
                    (
                        "fan-out: peak RSS ≤ native",
                        f"{berth['peak_rss_mib_x']:.2f}× " f"({berth['peak_rss_mib']:.0f} MiB)",
                        berth["peak_rss_mib_x"] <= 1.0,
                    )
                )
                checks.append(
                    (
                        "fan-out (stretch): peak RSS ≤ 0.5× native",
                        f"{berth['peak_rss_mib_x']:.2f}×",
                        berth["peak_rss_mib_x"] <= 0.5,
                    )
                )
    name = "boundary cost ≤ 1 µs per request over a direct call"
    if boundary is None:
        checks.append((name, "not measured: " + "; ".join(boundary_errors), None))
    else:
        failed = f"; {len(boundary_errors)} run(s) failed" if boundary_errors else ""
        checks.append(
            (
                name,
                f"{boundary['diff_ns']:.0f} ns (median of {boundary['runs']}{failed})",
                boundary["diff_ns"] <= BOUNDARY_TARGET_NS,
            )
        )
    return checks


def fmt(value, spec, none="–"):
    return none if value is None else format(value, spec)


def machine_facts():
    def read(path):
        try:
            return Path(path).read_text().strip()
        except OSError:
            return "?"

    cpu = "?"
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    os_name = "?"
    for line in read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip('"')
    mem = "?"
    for line in read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"

    def version(cmd, pattern=r".+"):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        except OSError:
            return "?"
        match = re.search(pattern, proc.stdout + proc.stderr)
        return match.group(0).strip() if match else "?"

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "CPUs (nproc)": str(os.cpu_count()),
        "CPU model": cpu,
        "kernel": platform.release(),
        "OS": os_name,
        "memory": mem,
        "net.core.somaxconn": read("/proc/sys/net/core/somaxconn"),
        "open files (soft/hard)": f"{soft}/{hard}",
        "rustc": version(["rustc", "-V"]),
        "wrk": version(["wrk", "-v"], r"wrk [^\n]*?(?= Copyright|\n|$)"),
        "h2load": version(["h2load", "--version"]),
        "nginx": version([find_tool("nginx") or "nginx", "-v"], r"nginx/[\d.]+"),
    }


SCENARIO_TITLES = {
    "hello": "hello: `Hello, world!` per request",
    "fetch": "fetch: the first 20 bytes of a small file from nginx, per request",
    "fan-out": "fan-out: requests that each wait 1 s, all sent at once",
}


def write_report(suite, rows, checks, out, svg_path, total_s):
    lines = []
    add = lines.append
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        or "?"
    )
    dirty = subprocess.run(
        # The chart this run writes is not a change to what was measured.
        ["git", "status", "--porcelain", "--", "server", "app-api", "sample-apps", "bench", ":!bench/results.svg"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    mode = "smoke run" if suite.smoke else "full run"
    add("# Benchmarks")
    add("")
    add(
        f"Generated by `python3 bench/run.py{' --smoke' if suite.smoke else ''}` (`make bench`) on {now}, "
        f"commit `{commit}`{' with local changes' if dirty else ''}; {mode}: {suite.runs} run(s), "
        f"{suite.duration} s per measurement, {total_s / 60:.1f} min in all. Regenerate with `make bench`."
    )
    add("")
    add(f"![requests/s and p99 per scenario and server]({os.path.relpath(svg_path, out.parent)})")
    add("")
    add(
        "Every figure is the **median of the runs**; each `× native` is the median, over the runs, of the "
        "ratio to the native hyper baseline measured **in the same run**. Within a run each case is "
        "measured on every server back to back, seconds apart (each server started, warmed up and "
        "measured alone, then stopped; the order alternates between runs). "
        "Servers run pinned to CPU 0 "
        "(`taskset -c 0`), so tokio starts one worker thread in Berth and in the native baselines, and "
        "the Python servers run one process each; wrk, h2load, the fan-out client and the nginx upstream "
        "run pinned to CPU 1 (`taskset -c 1`). *server CPU* is the server's own CPU time over the "
        "measurement (100% = one core, from `/proc/<pid>/stat`); *load CPU* is the load generator's."
    )
    add("")
    boundary = boundary_median(suite.boundary_runs)
    headlines = summary(rows, boundary)
    if headlines:
        add("## Headlines")
        add("")
        for line in headlines:
            add(f"* {line}")
        add("")
    add("## Targets (issue 5)")
    add("")
    add("| target | measured | met |")
    add("| --- | --- | --- |")
    for name, measured, met in checks:
        verdict = "–" if met is None else "yes" if met else "**no**"
        add(f"| {name} | {measured.replace('|', '/')[:400]} | {verdict} |")
    add("")
    native_1 = rows.get(("hello", "HTTP/1.1, 1 conn", "native"))
    if native_1 and native_1["vs_uvicorn"] is not None:
        add(
            f"At 1 connection wrk waits for each answer before sending the next request, so the figure is "
            f"bound by round-trip latency more than by the server: native hyper itself does "
            f"{native_1['vs_uvicorn']:.1f}× uvicorn's requests/s there in this run, and Berth's ≥ 3× "
            "uvicorn is out of reach at 1 connection by construction (the check stays, for every case)."
        )
        add("")
    flagged = [r for r in suite.results if (r.get("interference") or 0) > INTERFERENCE_FLAG]
    if flagged:
        add(
            f"**Noise:** in {len(flagged)} of {len(suite.results)} measurements, other processes used more "
            f"than {INTERFERENCE_FLAG:.0f}% of the server's CPU (marked † below, with the worst share); "
            "their figures are less trustworthy."
        )
        add("")
    for scenario in ("hello", "fetch", "fan-out"):
        scenario_rows = [r for r in rows.values() if r["scenario"] == scenario]
        if not scenario_rows:
            continue
        add(f"## {SCENARIO_TITLES[scenario]}")
        add("")
        if scenario == "fan-out":
            add(
                "| case | server | ok | wall s | × native | connect s | p50 ms | p99 ms | peak RSS MiB | "
                "× native | KiB per request | server CPU |"
            )
            add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for r in scenario_rows:
                per_request = None
                if r["peak_rss_mib"] is not None and r["idle_rss_mib"] is not None and r["n"]:
                    per_request = (r["peak_rss_mib"] - r["idle_rss_mib"]) * 1024 / r["n"]
                add(
                    f"| {r['case']} | {SERVERS[r['server']][0]} | {fmt(r['ok'], ',.0f')}/{fmt(r['n'], ',.0f')} | "
                    f"{fmt(r['wall_s'], '.2f')} | {fmt(r['wall_s_x'], '.2f')} | {fmt(r['connect_s'], '.2f')} | "
                    f"{fmt(r['p50_ms'], '.0f')} | {fmt(r['p99_ms'], '.0f')} | {fmt(r['peak_rss_mib'], '.1f')} | "
                    f"{fmt(r['peak_rss_mib_x'], '.2f')} | {fmt(per_request, '.1f')} | "
                    f"{fmt(r['server_cpu'], '.0f')}%{noise_mark(r)} |"
                )
            add("")
            add(
                "*wall* runs from the first connect to the last answer; *connect* is the time until all "
                "connections were open, after which every request was sent at the same instant; the "
                "latencies run from that instant to each complete answer. *KiB per request* is "
                "(peak RSS − idle RSS) / requests. Berth runs `gather?sleep_ms=1000` (a host timer, no "
                "upstream) with `--max-connections 20000`; the baseline is `native-sleep` "
                "(`tokio::time::sleep(1 s)`)."
            )
        else:
            add(
                "| case | server | requests/s | × native | p50 ms | p99 ms | p99 × native | server CPU | "
                "CPU µs per request | × native | load CPU |"
            )
            add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for r in scenario_rows:
                add(
                    f"| {r['case']} | {SERVERS[r['server']][0]} | {fmt(r['rps'], ',.0f')} | "
                    f"{fmt(r['rps_x'], '.2f')} | {fmt(r['p50_ms'], '.3f')} | {fmt(r['p99_ms'], '.3f')} | "
                    f"{fmt(r['p99_ms_x'], '.2f')} | {fmt(r['server_cpu'], '.0f')}%{noise_mark(r)} | "
                    f"{fmt(r['cpu_us'], '.1f')} | {fmt(r['cpu_us_x'], '.2f')} | {fmt(r['load_cpu'], '.0f')}%"
                    f"{' ‡' if (r['load_cpu'] or 0) >= LOAD_BOUND else ''} |"
                )
            if any((r["load_cpu"] or 0) >= LOAD_BOUND for r in scenario_rows):
                add("")
                add(
                    f"‡ the load generator used ≥ {LOAD_BOUND:.0f}% of its core: that server may do more than "
                    "shown, so ratios against it flatter the others; *CPU µs per request* still compares."
                )
        errors = [f"{r['server']} {r['case']}: {e}" for r in scenario_rows for e in r["errors"]]
        if errors:
            add("")
            add("Errors:")
            add("")
            for e in errors:
                add(f"* {e.splitlines()[0][:300]}")
        add("")
    boundary_section(suite, boundary, add)
    add("## What runs")
    add("")
    add(
        "* **Berth + app**: `target/release/berth` with the `hello`, `fetch` and `gather` sample apps "
        "in its apps directory, default settings except `--admin-listen off`, `--allow-outbound "
        "'http://127.0.0.1:*'` and, for fan-out, `--max-connections 20000`; its access log is off, "
        "as by default. *Berth + app, --access-log* is the same with `--access-log`: one `info` "
        "event per request (target `berth::access`), written to a file, to show what the log costs."
    )
    add(
        "* **native hyper**: `bench/native` (`berth-bench`): the same handler compiled into a hyper "
        "server: hyper-util's auto builder (HTTP/1.1 and h2c on one port, the usual way to serve "
        "both), tokio's multi-thread runtime with default settings, `TCP_NODELAY`, a `socket2` "
        "listener with a backlog of 8192. Berth itself picks the protocol by ALPN or by peeking at "
        "the h2c preface instead of the auto builder's 24-byte read, after which hyper grows its read "
        "buffer from 8 to 16 KiB on every connection; that is most of the fan-out memory difference. "
        "`native-fetch` decodes `?url=` from the query and fetches it with hyper-util's pooled legacy "
        "client, as the `fetch` app and Berth's host do."
    )
    add(
        "* **native hyper + app via the ABI** (`native-abi`, hello only): native-hello's server, "
        "answering each request by calling the `hello` app's cdylib through Berth's boundary code "
        "(`berth_server::embed`: the request lent across the C ABI, the app's future polled, its "
        "answer and body taken back) and nothing else of Berth (no router, timeouts, drain or hot "
        "reload). Native against it is what the plugin boundary costs; it against Berth, what the "
        "rest of the server costs."
    )
    add(
        "* **uvicorn**: a bare ASGI app (no framework) with `--loop uvloop --http httptools "
        "--no-access-log`; **aiohttp**: an `aiohttp.web` app on uvloop with the access log off. Both "
        "fetch through one pooled `aiohttp.ClientSession` and run as one process "
        "(`bench/peers/`, versions pinned in `bench/peers/requirements.txt`)."
    )
    add(
        f"* **upstream**: nginx (one worker, access log off, keep-alive) serving a {len(SMALL_FILE)}-byte file."
    )
    add("")
    add("## Machine")
    add("")
    add("| | |")
    add("| --- | --- |")
    for key, value in machine_facts().items():
        add(f"| {key} | {value} |")
    add("")
    add("## Commands")
    add("")
    add(
        "Every distinct command the suite ran, in order (`$TMP` is its temporary directory with the "
        "apps, the virtualenv and nginx's files; the ports were picked free at start):"
    )
    add("")
    add("```sh")
    for command in suite.rec.commands:
        add(command)
    add("```")
    add("")
    add("<details><summary>Every measurement</summary>")
    add("")
    add(
        "| run | scenario | case | server | requests/s | p50 ms | p99 ms | server CPU | other load on CPU 0 | errors |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in suite.results:
        add(
            f"| {r['run']} | {r['scenario']} | {r['case']} | {r['server']} | {fmt(r.get('rps'), ',.0f')} | "
            f"{fmt(r.get('p50_ms'), '.3f')} | {fmt(r.get('p99_ms'), '.3f')} | {fmt(r.get('server_cpu'), '.0f')}% | "
            f"{fmt(r.get('interference'), '.0f')}% | {len(r.get('errors', []))} |"
        )
    add("")
    add("</details>")
    add("")
    out.write_text("\n".join(lines))


def boundary_section(suite, boundary, add):
    """The boundary benchmark's figures: each run's, their medians, and how they were taken."""
    add("## boundary: one request through the C ABI vs. the same handler called directly")
    add("")
    if suite.boundary_runs:
        add("| run | direct ns | through the ABI ns | difference ns |")
        add("| --- | --- | --- | --- |")
        for r in suite.boundary_runs:
            add(f"| {r['run']} | {r['direct_ns']:.1f} | {r['abi_ns']:.1f} | {r['diff_ns']:.1f} |")
        if len(suite.boundary_runs) > 1:
            add(
                f"| median | {boundary['direct_ns']:.1f} | {boundary['abi_ns']:.1f} | "
                f"**{boundary['diff_ns']:.1f}** |"
            )
        add("")
    else:
        add("**No figure:** the benchmark printed no result (errors below).")
        add("")
    quick = " With `--quick` (smoke mode) criterion samples only briefly: rougher figures." * suite.smoke
    add(
        "`server/benches/boundary.rs` (criterion): *through the ABI* is the `hello` app's release "
        "cdylib loaded by the host's loader and called through the C ABI, its response taken back and "
        "its body drained; *direct* is the same handler compiled into the benchmark, taken apart the "
        "same way; one request per iteration on a current-thread tokio runtime. Each figure is "
        "criterion's time per iteration, from the summary line the benchmark prints last; the median "
        "difference is taken over each run's difference. It runs before the servers start, pinned "
        f"to CPU 0 (`taskset -c 0`) like them; the bench binary was built beforehand.{quick} Command:"
    )
    add("")
    add("```sh")
    add(shlex.join(suite.boundary_cmd))
    add("```")
    add("")
    if suite.boundary_errors:
        add("Errors:")
        add("")
        for e in suite.boundary_errors:
            add(f"* {e[:400]}")
        add("")


def summary(rows, boundary):
    """A few sentences computed from the medians: Berth against native, its log, the peers, the
    boundary."""
    lines = []

    def get(scenario, case_start, server):
        return next(
            (
                r
                for k, r in rows.items()
                if k[0] == scenario and k[1].startswith(case_start) and k[2] == server
            ),
            None,
        )

    for case in ("HTTP/1.1, 64 conns", "HTTP/2"):
        berth, logged = get("hello", case, "berth"), get("hello", case, "berth-logged")
        native = get("hello", case, "native")
        if berth and berth["rps_x"] is not None:
            line = (
                f"hello, {berth['case']}: Berth does {berth['rps_x']:.2f}× native's requests/s "
                f"({berth['rps']:,.0f} vs. {native['rps']:,.0f}) and spends "
                f"{fmt(berth['cpu_us_x'], '.2f')}× its CPU per request"
            )
            if logged and logged["rps_x"] is not None:
                line += (
                    f"; with `--access-log`, {logged['rps_x']:.2f}× and {fmt(logged['cpu_us_x'], '.2f')}×"
                )
            lines.append(line + ".")
            crossing = get("hello", case, "native-abi")
            if crossing and crossing["rps_x"] is not None and berth["vs_native-abi"] is not None:
                lines.append(
                    f"hello, {berth['case']}, the plugin boundary alone: native hyper calling the same "
                    f"app through the ABI (`native-abi`) does {crossing['rps_x']:.2f}× native's "
                    f"requests/s at {fmt(crossing['cpu_us_x'], '.2f')}× its CPU per request; Berth, "
                    f"with its router, timeouts, drain and hot reload on top, does "
                    f"{berth['vs_native-abi']:.2f}× `native-abi`'s."
                )
            if native["cpu_us"] and boundary:
                allowance = native["cpu_us"] * (1 / HELLO_TARGET_X - 1) * 1000
                lines.append(
                    f"hello, {berth['case']}, the budget: native spends {native['cpu_us']:.1f} µs of CPU "
                    f"per request, so ≥ {HELLO_TARGET_X}× its requests/s leaves {allowance:.0f} ns per request for "
                    f"everything Berth adds; one trip through the boundary costs "
                    f"{boundary['diff_ns']:.0f} ns in the boundary benchmark below (hot caches)."
                )
    berth = get("hello", "HTTP/1.1, 64", "berth")
    if berth and berth["vs_uvicorn"] is not None and berth["vs_aiohttp"] is not None:
        lines.append(
            f"hello, HTTP/1.1, 64 conns: Berth does {berth['vs_uvicorn']:.1f}× uvicorn's requests/s and "
            f"{berth['vs_aiohttp']:.1f}× aiohttp's."
        )
    fetch = get("fetch", "HTTP/1.1", "berth")
    if fetch and fetch["rps_x"] is not None:
        lines.append(
            f"fetch: Berth does {fetch['rps_x']:.2f}× native's requests/s at "
            f"{fmt(fetch['cpu_us_x'], '.2f')}× its CPU per request ({fmt(fetch['cpu_us'], '.1f')} µs), "
            f"and {fmt(fetch['vs_uvicorn'], '.1f')}× uvicorn's, {fmt(fetch['vs_aiohttp'], '.1f')}× aiohttp's."
        )
    fan = get("fan-out", "", "berth")
    if fan and fan["wall_s_x"] is not None:
        lines.append(
            f"fan-out: {fmt(fan['ok'], ',.0f')}/{fmt(fan['n'], ',.0f')} answered in {fan['wall_s']:.2f} s "
            f"({fan['wall_s_x']:.2f}× native's wall time), at {fmt(fan['peak_rss_mib'], '.0f')} MiB peak RSS "
            f"({fmt(fan['peak_rss_mib_x'], '.2f')}× native's)."
        )
    if boundary:
        lines.append(
            f"boundary: a request through the C ABI takes {boundary['diff_ns']:.0f} ns more than the "
            f"same handler called directly ({boundary['abi_ns']:.0f} vs. {boundary['direct_ns']:.0f} ns)."
        )
    return lines


def noise_mark(row):
    if row["interference_max"] > INTERFERENCE_FLAG:
        return f" †{row['interference_max']:.0f}%"
    return ""


# --------------------------------------------------------------------------------------------
# The chart: small multiples, one row per case, requests/s on the left and p99 on the right.


def write_svg(rows, path, title):
    cases = []
    for r in rows.values():
        if (r["scenario"], r["case"]) not in cases:
            cases.append((r["scenario"], r["case"]))
    bar_h, gap, label_w, panel_w, head = 16, 4, 190, 330, 34
    width = label_w + 2 * panel_w + 60
    blocks = []
    y = 50
    for scenario, case in cases:
        servers = [r for r in rows.values() if (r["scenario"], r["case"]) == (scenario, case)]
        block_h = head + len(servers) * (bar_h + gap) + 14
        blocks.append((scenario, case, servers, y))
        y += block_h
    height = y + 10
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
        f'<text x="{label_w}" y="42" fill="#444">requests/s (longer is better)</text>',
        f'<text x="{label_w + panel_w + 30}" y="42" fill="#444">p99 latency, ms (shorter is better)</text>',
    ]
    for scenario, case, servers, top in blocks:
        svg.append(
            f'<text x="10" y="{top + 18}" font-weight="bold">{escape(scenario)}: {escape(case)}</text>'
        )
        svg.append(f'<line x1="10" x2="{width - 10}" y1="{top + 4}" y2="{top + 4}" stroke="#ddd"/>')
        for column, field, spec in ((0, "rps", ",.0f"), (1, "p99_ms", ",.2f")):
            x0 = label_w + column * (panel_w + 30)
            peak = max((r[field] or 0) for r in servers) or 1
            for i, r in enumerate(servers):
                label, colour = SERVERS[r["server"]]
                by = top + head + i * (bar_h + gap) - 8
                if column == 0:
                    svg.append(
                        f'<text x="{label_w - 6}" y="{by + bar_h - 4}" text-anchor="end">{escape(label)}</text>'
                    )
                value = r[field]
                if value is None:
                    continue
                w = max(1.0, (panel_w - 70) * value / peak)
                svg.append(f'<rect x="{x0}" y="{by}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
                ratio = r["rps_x" if field == "rps" else "p99_ms_x"]
                note = f" ({ratio:.2f}×)" if ratio is not None and r["server"] != "native" else ""
                svg.append(
                    f'<text x="{x0 + w + 4:.1f}" y="{by + bar_h - 4}">{format(value, spec)}{note}</text>'
                )
    svg.append("</svg>")
    path.write_text("\n".join(svg) + "\n")


def escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="~2 s per scenario, 1 run, fan-out of 200, boundary bench with --quick; report and chart "
        "to a temp dir (or --out); non-zero exit on any error or missing figure, not on a missed target",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of (default 3)")
    parser.add_argument(
        "--out",
        type=Path,
        help="the report (default BENCHMARKS.md at the repository root); with --smoke, the chart goes "
        "beside it (same name, .svg) instead of to bench/results.svg",
    )
    parser.add_argument("--duration", type=int, help="seconds per measurement (default 10; smoke 2)")
    parser.add_argument("--fanout-n", type=int, help="fan-out requests (default 10000; smoke 200)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, venv)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    suite = Suite(args)
    if args.smoke:
        out = args.out or suite.tmp.parent / f"{suite.tmp.name}-BENCHMARKS.md"
        svg = out.with_suffix(".svg")
    else:
        out = (args.out or ROOT / "BENCHMARKS.md").resolve()
        svg = BENCH / "results.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    code = 0
    try:
        suite.run()
    except SuiteError as err:
        log(f"error: {err}")
        code = 1
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    finally:
        suite.cleanup(args.keep)
    if code:
        return code
    total = time.monotonic() - suite.started
    rows = aggregate(suite.results)
    checks = targets(rows, suite.fanout_n, boundary_median(suite.boundary_runs), suite.boundary_errors)
    title = (
        f"Berth benchmarks ({'smoke, ' if args.smoke else ''}median of {suite.runs} run(s), server on 1 core)"
    )
    write_svg(rows, svg, title)
    write_report(suite, rows, checks, out, svg, total)
    errors = [r for r in suite.results if r.get("errors")]
    log("")
    for name, measured, met in checks:
        log(f"{'n/a   ' if met is None else 'met   ' if met else 'MISSED'}  {name}: {measured}")
    log(f"report: {out}\nchart:  {svg}\ntime:   {total:.0f} s")
    # Targets are for the report; the exit status says whether every scenario produced figures.
    if errors or suite.boundary_errors:
        log(
            f"error: {len(errors)} measurement(s) and {len(suite.boundary_errors)} boundary run(s) "
            "saw errors (see the report)"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
