#!/usr/bin/env python3
"""Berth's benchmark suite, the measuring step: Berth against a native hyper server and the
Python servers it replaces, side by side in one run on this machine.

    python3 bench/setup.py                  # first: the load tools, PostgreSQL, Redis, the peers
    python3 bench/run.py [--smoke] [--runs 3] [--cases LIST] [--baseline REV] [--results FILE]
                         [--respawn-rounds N]
    python3 bench/report.py [FILE]          # then: BENCHMARKS.md and the chart from FILE

`make bench` runs the three steps. This one builds Berth, the sample apps and the native
baselines in release mode, starts every server itself on 127.0.0.1, measures, and writes every
figure to a results file (JSON; `--results`, by default bench/results.json for a full run and a
new file in the temporary directory's parent, /tmp, for a smoke run or one with `--cases` or
`--baseline`, so that those never replace the published results). It needs what bench/setup.py
provisions and says so when that is missing. The cases (`--cases`, all by default):

* boundary: the criterion micro-benchmark `server/benches/boundary.rs` (one request through the
  C ABI vs. the same handler called directly), pinned like the servers.
* hello: Berth + `hello` (also with `--access-log`, to show the log's cost) vs. native-hello,
  native-abi (native-hello's server calling the `hello` plugin through the ABI: the boundary's
  own cost), uvicorn and aiohttp; wrk (HTTP/1.1 keep-alive) at 1, 64 and 256 connections
  (`hello:1`, `hello:64`, `hello:256`), and h2load (HTTP/2, Berth and the native servers only;
  `hello:h2`).
* fetch: Berth + `fetch` vs. native-fetch, uvicorn and aiohttp, each fetching a small file from
  nginx per request.
* db: Berth + `todo` (`GET /todo/items/{id}`: one row by primary key through the app's pool, a
  cached prepared statement) vs. native-db (the same query with tokio-postgres behind
  deadpool-postgres), both with 16 connections, against a PostgreSQL the suite starts.
* redis: Berth + `counter` (`GET /counter/{key}`: Redis `GET` on one multiplexed connection) vs.
  native-redis (redis-rs's `MultiplexedConnection`), against a Redis the suite starts.
* fan-out: `fanout --n 10000` (10,000 connections, one request each, sent at once) against
  Berth + `gather?sleep_ms=1000` and native-sleep: successes, wall time, p99, peak RSS.
* ws-echo: Berth + `ws-echo` (a WebSocket at `/ws-echo`) vs. native-ws-echo (hyper +
  tokio-tungstenite) and uvicorn with the `websockets` library (bench/peers/uvicorn_ws.py):
  `wsload echo`, 64 sockets each sending a 64-byte text message and awaiting its echo in a loop;
  messages/s, p50 and p99 of the round trips.
* ws-broadcast: Berth + `chat` vs. native-ws-chat: `wsload broadcast` opens `--ws-sockets` idle
  sockets on `/chat/ws` (10,000 by default), the server's RSS is read before and with them open,
  then one message is published with `POST /chat/publish` (or, when the server answers that with
  an error, as a text message on one more socket): p50, p99 and max of the time until each socket
  has it, and RSS per idle socket, (RSS with the sockets − RSS before) / sockets, on a fresh
  server process every run. Berth runs with `--max-connections 20000` and no other setting (no
  WebSocket idle timeout, the default).
* workers-hello: worker processes against one process, both on the same two cores (CPUs 0 and
  1): `berth --workers 2` (a supervisor and two single-threaded workers serving one shared
  listener; one runtime thread per worker is the default) against `berth --threads 2` (one
  process, two runtime threads), both serving the hello case's apps directory; wrk as in the hello
  case (HTTP/1.1 keep-alive, one thread, the same duration) at 64 and 256 connections, pinned to
  CPU 1 (CPU 2 on a machine with three or more: on two CPUs it shares a core with the server,
  alike for both modes). Paired like every other case: in each run both are measured back to back
  in alternating order; the ratio is workers over one process in the same run. The server's CPU
  is that of the supervisor and its workers together, and how the requests split between the
  workers is read from the supervisor's `GET /workers` before and after.
* worker-respawn: how long a worker's death costs. `berth --workers 2` with `hello` and the
  `faults` test fixture (tests/fixtures/faults: `/faults/pid` answers the serving process's pid),
  on CPUs 0 and 1. Each round notes the workers' pids from `GET /workers` on the admin listener,
  kills one worker with SIGKILL, and times from the kill until (a) `/workers` lists that slot with
  a new pid in state `ready` (polled every 5 ms) and (b) `/faults/pid`, asked on a fresh
  connection every 5 ms, answers with a pid that was not there before (the kernel picks the
  worker that accepts, so this includes the wait until the new one wins an accept); the poller
  runs pinned to the load CPU, and each round is bounded (10 s, 2,000 requests). The
  supervisor's own figure (`worker N (pid P) is ready after Xs`, from its spawn of the new worker)
  is taken from its log. A fresh server every two rounds, one death per slot: the supervisor
  replaces a slot's first deaths at once and backs off from the third within a minute (its
  crash-loop protection), which is not what is measured here. `--respawn-rounds` rounds per run
  (10 by default, 4 in smoke mode); a request that fails or a round without both figures is an
  error.

The WebSocket baselines read each socket through a buffer of `WS_READ_BUFFER` bytes (an
environment variable passed on to them; 4096 when unset), allocated whole for every socket: set it
to Berth's own figure so that both sides match (the results file and the report give it). The
load client's sockets use the same.

Each server runs pinned to CPU 0 (`taskset -c 0`); the load generator, nginx, PostgreSQL and Redis
run pinned to CPU 1 (the worker cases' servers get CPUs 0 and 1, as said above). Within a run, every case is measured on all servers back to back (each server
started, warmed up and measured alone, then stopped; the order alternates between runs), so that
each ratio compares figures taken seconds apart. The report gives every figure as the median of
`--runs` runs, and each ratio as the median of the per-run ratios to the native baseline.

`--cases LIST` measures only the listed cases, comma-separated: `boundary`, `hello` (all four hello
cases) or `hello:1`, `hello:64`, `hello:256`, `hello:h2`, `fetch`, `db`, `redis`, `fan-out`,
`ws-echo`, `ws-broadcast`, `workers-hello`, `worker-respawn`. Each case still runs on all of its servers. `--cases hello:64,hello:h2` is the pair issue 15 asks about.

`--baseline REV` also measures Berth as it was at git revision REV. It checks REV out into a
temporary `git worktree`, builds `berth` and the sample apps the chosen cases load there in
release mode into target/bench-baseline (a target directory of its own, seeded with a copy of
this tree's release build the first time and kept between runs, so that only Berth's own crates
and any dependency that differs get compiled), and removes the worktree. That build runs as one
more server, `berth@<short hash>`, with its own build of the apps (the ABI may differ between
revisions), next to `berth` in every hello (not the `--access-log` variant), fetch, db, redis,
fan-out, ws-echo and ws-broadcast case: started and measured alone, back to back with the others, in the same
alternating order, every run (not in workers-hello and worker-respawn: a revision from before
worker processes has no `--workers`). (A revision without the `todo` and `counter` apps cannot be built
for db and redis, nor one without `ws-echo` and `chat` for the WebSocket cases: leave those
cases out.) The report gives its ratio to native like every
server's, and its ratio to the current Berth (the median and spread of the per-run ratios). A
paired before/after of hello at 64 connections and over HTTP/2 against `main`:

    python3 bench/setup.py
    python3 bench/run.py --cases hello:64,hello:h2 --baseline main --results /tmp/pair.json
    python3 bench/report.py /tmp/pair.json          # writes /tmp/pair.md and /tmp/pair.svg

PostgreSQL and Redis are the suite's own (db and redis only): `initdb` into the temporary directory
and `pg_ctl start` on a free port (127.0.0.1, trust authentication for the user `berth`, fsync off;
as the `postgres` user through `runuser` when run as root, since PostgreSQL refuses to run as
root), and `redis-server` on a free port with nothing saved to disk. Both are seeded once (500 rows
in `todo_items`, one counter), only read while measuring, and stopped at the end. wrk asks every
server for the same row (`/todo/items/42`) and the same key (`/counter/hits`): the row and key stay
in the servers' caches, so the figures are of the servers and clients, not of disk.

`--smoke` runs every case once for about 2 s (fan-out with 200 requests, ws-broadcast with 200
sockets, worker-respawn with 4 rounds, the boundary benchmark with criterion's `--quick`) and exits with 1 if any server fails to answer or any case sees an
error or produces no figure (the results are still written); a missed target does not change the
exit status. CI runs it so that the suite cannot rot.

Exit status: 0 with every figure; 1 when some measurement saw an error (the results file is
written, with the errors); 2 when the suite stopped (a build, a server that never answered, a
missing tool: no results file is written).

Only the standard library is used here. Linux only (taskset, /proc).
"""

import argparse
import base64
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from common import (
    CASES,
    INTERFERENCE_FLAG,
    LOAD_CPU,
    PEERS,
    RESULTS,
    RESULTS_FORMAT,
    ROOT,
    SERVER_CPU,
    SMALL_FILE,
    TOOLS,
    SuiteError,
    find_tool,
    free_port,
    log,
    setup_state,
)

TICKS = os.sysconf("SC_CLK_TCK")
# Worker processes in both cases, the CPUs their server runs on (both modes of workers-hello
# alike), and where their load generator or poller runs: a core of its own when there is a third.
WORKERS = 2
WORKERS_CPUS = "0,1"
WORKERS_LOAD_CPU = "2" if (os.cpu_count() or 1) >= 3 else LOAD_CPU
# workers-hello: wrk's connections (the hello case's; at 1 connection only one worker can serve).
WORKERS_CONNS = (64, 256)
# worker-respawn: the poll interval, the bounds of one round (seconds, and requests and /workers
# polls together), the pause between rounds, the apps directory (hello and faults), and the case.
RESPAWN_POLL_S = 0.005
RESPAWN_TIMEOUT_S = 10.0
RESPAWN_MAX_POLLS = 2000
RESPAWN_PAUSE_S = 0.5
RESPAWN_APPS = "apps-worker-respawn"
RESPAWN_CASE = f"SIGKILL, {WORKERS} workers"
HELLO = b"Hello, world!\n"
# The criterion micro-benchmark of one request through the C ABI (server/benches/boundary.rs;
# it loads target/release/libhello.so) and the last line it prints.
BOUNDARY_BENCH = ["cargo", "bench", "-p", "berth-server", "--bench", "boundary"]
BOUNDARY_LINE = re.compile(
    r"boundary cost per request: direct (-?[\d.]+) ns, through the ABI (-?[\d.]+) ns, "
    r"difference (-?[\d.]+) ns"
)
# The sample apps each scenario loads (and a baseline builds).
SCENARIO_APPS = {
    "hello": "hello",
    "fetch": "fetch",
    "db": "todo",
    "redis": "counter",
    "fan-out": "gather",
    "ws-echo": "ws-echo",
    "ws-broadcast": "chat",
}
# The scenarios whose app Berth serves alone, from an apps directory of its own (apps-SCENARIO), with
# a config file of its own (berth-SCENARIO.toml) giving it its database: without its settings the app
# would fail to start in every other scenario's Berth.
DATA_SCENARIOS = ("db", "redis")
# The WebSocket scenarios: their app (`ws-echo`, `chat`) alone in an apps directory of its own too,
# so that the other scenarios' Berth serves what it always has.
WS_SCENARIOS = ("ws-echo", "ws-broadcast")
# ws-echo: sockets, each with one message in flight, and the bytes in each (text) message.
WS_ECHO_CONNS = 64
WS_MESSAGE_SIZE = 64
# ws-broadcast: handshakes in flight at most while the client opens its sockets, and the seconds
# each phase (opening, waiting for the message) may take.
WS_CONNECT_CONCURRENCY = 256
WS_BROADCAST_TIMEOUT = 60
# The read buffer of each socket's codec in the native WebSocket baselines (WS_READ_BUFFER in the
# environment, their default otherwise): it is allocated whole for every socket, so it should be
# Berth's figure. The load client's own sockets use the same.
def ws_read_buffer():
    text = os.environ.get("WS_READ_BUFFER", "").strip()
    if not text:
        return 4096
    if not text.isdigit() or int(text) < 1:
        sys.exit(f"error: WS_READ_BUFFER={text!r} is not a number of bytes")
    return int(text)


WS_READ_BUFFER = ws_read_buffer()
# The `todo` app's table (as its `init` creates it), how many rows the suite puts in it, and the row
# every request asks for.
TODO_SCHEMA = """CREATE TABLE IF NOT EXISTS todo_items (
    id BIGSERIAL PRIMARY KEY,
    title TEXT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT false
)"""
TODO_ROWS = 500
TODO_ID = 42
# Connections in each pool, Berth's (the `todo` app's `pool_size`) and native-db's alike.
POOL_SIZE = 16
# The Redis counter every request reads, and its value.
COUNTER_KEY = "hits"
COUNTER_VALUE = 1234


# --------------------------------------------------------------------------------------------
# Small helpers: commands, /proc, ports, HTTP checks


class Recorder:
    """Runs commands and remembers each distinct one (with the temp dir written as $TMP)."""

    def __init__(self, tmp):
        self.tmp = str(tmp)
        self.commands = {}

    def line(self, cmd):
        """`cmd` as the report lists it."""
        line = shlex.join(str(part) for part in cmd).replace(self.tmp, "$TMP")
        return line.replace(str(ROOT) + "/", "")

    def note(self, cmd):
        self.commands.setdefault(self.line(cmd), None)

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


def proc_ticks(pid):
    """User + system CPU ticks of a whole process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def tree_ticks(pid):
    """User + system CPU ticks of a process and its descendants (a supervisor and its workers),
    as they are now: a descendant that has exited no longer counts."""
    children = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        try:
            total += proc_ticks(current)
        except (OSError, IndexError, ValueError):
            continue
        todo.extend(children.get(current, []))
    return total


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


def http_post(url, body, timeout=5.0):
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    try:
        with OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def ws_echo_probe(path):
    """A readiness probe for a WebSocket echo at `path`: a handshake on 127.0.0.1, one masked text
    frame, its echo, and a close. Returns a function of the port giving (ready, problem)."""

    def probe(port):
        payload = b"berth-bench probe"
        mask = os.urandom(4)

        def masked(data):
            return bytes(b ^ mask[i % 4] for i, b in enumerate(data))

        key = base64.b64encode(os.urandom(16)).decode()
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return False, f"closed after {data[:200]!r}"
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0]
            if status.split(b" ")[1:2] != [b"101"]:
                return False, f"handshake answered {status[:100]!r}"
            sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked(payload))
            expected = bytes([0x81, len(payload)]) + payload
            while len(data) < len(expected):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            sock.sendall(bytes([0x88, 0x82]) + mask + masked(b"\x03\xe8"))  # close, 1000
            if data[: len(expected)] != expected:
                return False, f"echo was {data[:60]!r}"
            return True, ""

    return probe


# --------------------------------------------------------------------------------------------
# Building


def cargo_target():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target if target.is_absolute() else ROOT / target


def build(rec, boundary, own_apps):
    """Release builds of what the servers run (with `own_apps`, the db, redis and WebSocket
    scenarios' apps when those are measured, and the `fixture-faults` app for worker-respawn), and
    of the boundary benchmark (compiled here, on every CPU, so that its pinned run measures and
    does not compile)."""
    commands = [
        ["cargo", "build", "--release", "-p", "berth-server", "-p", "hello", "-p", "fetch"]
        + ["-p", "gather", *(arg for app in own_apps for arg in ("-p", app)), "-p", "berth-bench"],
    ]
    if boundary:
        commands.append([*BOUNDARY_BENCH, "--no-run"])
    for cmd in commands:
        cargo(rec, cmd, ROOT)
    return cargo_target() / "release"


def cargo(rec, cmd, cwd):
    rec.note(cmd)
    log("building: " + shlex.join(map(str, cmd)))
    proc = subprocess.run(
        [str(part) for part in cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if proc.returncode != 0:
        raise SuiteError(f"`{shlex.join(map(str, cmd))}` failed:\n{proc.stdout[-4000:]}")


def git(*args):
    proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SuiteError(f"`git {shlex.join(args)}` failed: {proc.stderr.strip()[-1000:]}")
    return proc.stdout.strip()


def build_baseline(rec, rev, tmp, apps):
    """`berth` and `apps` (sample app names) at git revision `rev`, built in release mode in a
    temporary worktree into target/bench-baseline; returns (full hash, short hash, the
    directory holding the binary and the apps' libraries)."""
    try:
        commit = git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except SuiteError:
        raise SuiteError(f"--baseline {rev}: not a commit in this repository") from None
    short = git("rev-parse", "--short", commit)
    src = tmp / "baseline-src"
    target = cargo_target() / "bench-baseline"
    add = ["git", "worktree", "add", "--detach", src, commit]
    rec.note(add)
    log(f"baseline: {rev} is {short}; checking it out into a temporary worktree")
    git(*map(str, add[1:]))
    if not target.exists() and (cargo_target() / "release").is_dir():
        # The first time, this tree's release build seeds it: the dependencies are mostly the same
        # crates at the same versions, and cargo rebuilds whatever differs.
        log(f"baseline: seeding {target} with a copy of {cargo_target() / 'release'}")
        shutil.copytree(cargo_target() / "release", target / "release", symlinks=True)
    try:
        packages = [arg for app in ("berth-server", *apps) for arg in ("-p", app)]
        cmd = ["cargo", "build", "--release", "--manifest-path", src / "Cargo.toml", "--target-dir", target]
        cargo(rec, cmd + packages, src)
    finally:
        remove = ["git", "worktree", "remove", "--force", src]
        rec.note(remove)
        git(*map(str, remove[1:]))
    return commit, short, target / "release"


# --------------------------------------------------------------------------------------------
# Servers


class Server:
    """One server process, pinned to one CPU (`cpu`; the worker cases' to two, "0,1"), with its
    output in a log file. It is ready once `check_path` answers 200 with a body `expect` accepts
    or, with `probe` (a function of the port returning (ready, problem)), once the probe says so.
    `load_cpu` is where its load generator runs, `admin_port` its admin listener's port (None:
    off), and `workers` its worker processes (0: it serves in one process; else its CPU is
    that of the process and its descendants)."""

    def __init__(
        self, key, argv, port, check_path, expect, cwd, env=None, name=None, cpu=SERVER_CPU, probe=None
    ):
        self.key = key
        self.probe = probe
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
        self.load_cpu = LOAD_CPU
        self.admin_port = None
        self.workers = 0
        self.command = None

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self, rec, tmp):
        cmd = ["taskset", "-c", self.cpu, *self.argv]
        rec.note(cmd)
        self.command = rec.line(cmd)
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
                if self.probe:
                    ready, problem = self.probe(self.port)
                    if ready:
                        return self
                else:
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


class Postgres:
    """A PostgreSQL cluster of the suite's own, pinned to the load CPU: `initdb` into the temporary
    directory, `pg_ctl start` on `port` (127.0.0.1 only, trust authentication for USER, fsync off).
    PostgreSQL refuses to run as root: then its programs run as the `postgres` user the Debian
    package creates (`runuser`), in a directory handed to that user."""

    USER = "berth"

    def __init__(self, rec, tmp, port):
        self.rec = rec
        self.port = port
        self.base = tmp / "postgres"
        self.data = self.base / "data"
        self.as_user = [find_tool("runuser"), "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.running = False

    def url(self):
        return f"postgres://{self.USER}@127.0.0.1:{self.port}/postgres"

    def start(self):
        self.base.mkdir()
        if self.as_user:
            # The temporary directory is mkdtemp's 0700: the postgres user must get through it.
            self.base.parent.chmod(0o755)
            shutil.chown(self.base, user="postgres")
        initdb = [find_tool("initdb"), "--no-sync", "--auth=trust", "--encoding=UTF8", "--locale=C"]
        self.rec.run([*self.as_user, *initdb, "--username", self.USER, "--pgdata", self.data], timeout=120)
        options = (
            f"-c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.base} -c fsync=off"
        )
        # taskset's CPU set passes through runuser and pg_ctl to the server and its backends.
        start = [find_tool("pg_ctl"), "start", "--wait", "--options", options]
        start += ["--log", self.base / "server.log", "--pgdata", self.data]
        self.rec.run(["taskset", "-c", LOAD_CPU, *self.as_user, *start], timeout=120)
        self.running = True
        return self

    def psql(self, sql):
        """Runs `sql` with psql; its unaligned output."""
        cmd = [find_tool("psql"), "--no-psqlrc", "--quiet", "--tuples-only", "--no-align"]
        cmd += ["--set=ON_ERROR_STOP=1", "--host", "127.0.0.1", "--port", self.port]
        cmd += ["--username", self.USER, "--dbname", "postgres"]
        proc, _ = self.rec.run([*cmd, "--command", sql], timeout=60)
        return proc.stdout.strip()

    def stop(self):
        if self.running:
            self.running = False
            stop = [find_tool("pg_ctl"), "stop", "--mode=fast", "--wait", "--pgdata", self.data]
            self.rec.run([*self.as_user, *stop], timeout=60, check=False, quiet=True)


class Redis:
    """A Redis server of the suite's own on `port`, pinned to the load CPU, saving nothing."""

    def __init__(self, rec, tmp, port):
        self.rec = rec
        self.port = port
        self.base = tmp / "redis"
        self.proc = None

    def url(self):
        return f"redis://127.0.0.1:{self.port}/"

    def start(self):
        self.base.mkdir()
        server = [find_tool("redis-server"), "--port", self.port, "--bind", "127.0.0.1"]
        cmd = ["taskset", "-c", LOAD_CPU, *server, "--save", "", "--appendonly", "no", "--dir", self.base]
        self.rec.note(cmd)
        with open(self.base / "redis.log", "wb") as out:
            self.proc = subprocess.Popen(
                [str(part) for part in cmd], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_text = (self.base / "redis.log").read_text(errors="replace")[-1000:]
                raise SuiteError(f"redis-server exited with {self.proc.returncode} at start:\n{log_text}")
            ping = subprocess.run(
                [find_tool("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port), "ping"],
                capture_output=True,
                text=True,
            )
            if ping.stdout.strip() == "PONG":
                return self
            time.sleep(0.1)
        self.stop()
        raise SuiteError(f"redis-server did not answer PING on 127.0.0.1:{self.port} within 30 s")

    def cli(self, *args):
        """Runs one command with redis-cli; its output."""
        cmd = [find_tool("redis-cli"), "-h", "127.0.0.1", "-p", self.port, *args]
        proc, _ = self.rec.run(cmd, timeout=60)
        return proc.stdout.strip()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def expect_json(expected):
    """A check that a body is `expected` as JSON."""

    def check(body):
        try:
            return json.loads(body) == expected
        except ValueError:
            return False

    return check


# --------------------------------------------------------------------------------------------
# Load generators


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_ms(text):
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(match.group(1)) * UNITS_MS[match.group(2)]


def wrk_cmd(url, conns, duration, cpu=LOAD_CPU):
    return ["taskset", "-c", cpu, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency", url]


def run_wrk(rec, url, conns, duration, cpu=LOAD_CPU):
    cmd = wrk_cmd(url, conns, duration, cpu)
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


def wsload_report(stdout):
    """The last JSON line wsload printed, or None."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_ws_echo(rec, binary, url, conns, duration):
    """wsload echo: `conns` sockets, each sending a message and awaiting its echo for `duration`
    seconds. `rps` is round trips (messages echoed) per second, the latencies those of each trip."""
    cmd = ["taskset", "-c", LOAD_CPU, binary, "echo", "--url", url, "--connections", conns]
    cmd += ["--duration", duration, "--size", WS_MESSAGE_SIZE, "--timeout", 10, "--read-buffer", WS_READ_BUFFER]
    proc, usage = rec.run(cmd, timeout=duration + 60, check=False, quiet=True)
    report = wsload_report(proc.stdout)
    if report is None:
        return {
            "errors": [f"wsload printed no report (exit {proc.returncode}): {proc.stderr[-300:]}"],
            "load_cpu": usage["cpu_pct"],
        }
    result = {
        "rps": report["msgs_per_s"],
        "requests": report["messages"],
        "p50_ms": report["p50_ms"],
        "p99_ms": report["p99_ms"],
        "max_ms": report["max_ms"],
        "n": report["connections"],
        "connected": report["connected"],
        "load_cpu": usage["cpu_pct"],
        "errors": [],
    }
    if report["failed"]:
        result["errors"].append(f"{report['failed']} socket(s) failed, first: {report['first_error']}")
    if not report["messages"]:
        result["errors"].append("no message echoed")
    return result


def run_ws_broadcast(rec, binary, url, publish_url, sockets, settle, tmp, on_idle):
    """wsload broadcast: `sockets` idle sockets on `url`, then one message published (a POST to
    `publish_url`, or with None, a text message on one more socket), timed to each socket. Once
    the sockets are open and settled, `on_idle()` runs (it reads the server's memory) and its dict
    joins the result."""
    cmd = ["taskset", "-c", LOAD_CPU, binary, "broadcast", "--url", url, "--sockets", sockets]
    cmd += ["--concurrency", WS_CONNECT_CONCURRENCY, "--timeout", WS_BROADCAST_TIMEOUT, "--settle", settle]
    cmd += ["--size", WS_MESSAGE_SIZE, "--read-buffer", WS_READ_BUFFER, "--wait-stdin"]
    if publish_url:
        cmd += ["--publish-url", publish_url]
    rec.note(cmd)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    stderr_path = tmp / "wsload.stderr"
    result = {"errors": []}
    report = None
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [str(part) for part in cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        # wsload bounds each of its phases; this bounds wsload.
        killer = threading.Timer(3 * WS_BROADCAST_TIMEOUT + settle + 30, proc.kill)
        killer.start()
        try:
            for line in proc.stdout:
                line = line.strip()
                try:
                    event = json.loads(line) if line.startswith("{") else None
                except json.JSONDecodeError:
                    event = None
                if event and event.get("event") == "idle":
                    result.update(on_idle())
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                elif event:
                    report = event
            proc.wait()
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["load_cpu"] = 100.0 * cpu / wall if wall > 0 else 0.0
    if report is None:
        tail = stderr_path.read_text(errors="replace")[-300:]
        result["errors"].append(f"wsload printed no report (exit {proc.returncode}): {tail}")
        return result
    result.update(
        {
            "n": report["sockets"],
            "connected": report["connected"],
            "received": report["received"],
            "connect_s": report["connect_s"],
            "p50_ms": report["p50_ms"],
            "p99_ms": report["p99_ms"],
            "max_ms": report["max_ms"],
            "publish": report["publish"],
        }
    )
    if report["failed"] or report["received"] < report["sockets"]:
        result["errors"].append(
            f"{report['received']} of {report['sockets']} sockets got the message "
            f"({report['connected']} connected); first error: {report['first_error']}"
        )
    return result


# --------------------------------------------------------------------------------------------
# The suite


class Suite:
    def __init__(self, args):
        self.argv = sys.argv[1:]
        self.smoke = args.smoke
        self.cases = args.cases
        self.baseline_rev = args.baseline
        self.baseline = None  # {"rev", "commit", "short", "key"} once built
        self.runs = 1 if args.smoke else args.runs
        self.duration = args.duration or (2 if args.smoke else 10)
        self.warmup = 1 if args.smoke else 2
        self.fanout_n = args.fanout_n or (200 if args.smoke else 10_000)
        self.ws_sockets = args.ws_sockets or (200 if args.smoke else 10_000)
        self.respawn_rounds = args.respawn_rounds or (4 if args.smoke else 10)
        # Seconds the broadcast's sockets sit idle, once open, before the server's memory is read.
        self.ws_settle = 1 if args.smoke else 3
        self.conns = [c for c in (1, 64, 256) if f"hello:{c}" in self.cases]
        self.h2 = (16, 16)  # connections, streams per connection
        self.fetch_conns = 64
        self.data_conns = 64  # db and redis
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
        self.started_at = datetime.datetime.now(datetime.timezone.utc)
        self.nginx = None
        self.postgres = None
        self.redis = None

    def measures(self, scenario):
        """Whether any of `scenario`'s cases was chosen."""
        return any(case.split(":")[0] == scenario for case in self.cases)

    # ---- setup

    def prepare(self):
        if platform.system() != "Linux":
            raise SuiteError("the suite needs Linux (taskset, /proc)")
        if (os.cpu_count() or 1) < 2:
            log("warning: one CPU: the server and the load generator share it")
        missing = [tool for tool in TOOLS if not find_tool(tool)]
        state = setup_state()
        if missing or not state:
            what = ", ".join(missing) if missing else "the peers' virtualenv is missing or out of date"
            raise SuiteError(f"{what}: run `python3 bench/setup.py` first")
        # The commands that provisioned this machine lead the report's list.
        for line in state["commands"]:
            self.rec.commands.setdefault(line, None)
        self.python = state["python"]
        self.commit, self.dirty = git_state()
        own_apps = [
            SCENARIO_APPS[scenario] for scenario in (*DATA_SCENARIOS, *WS_SCENARIOS) if self.measures(scenario)
        ]
        respawn = self.measures("worker-respawn")
        faults = ["fixture-faults"] if respawn else []
        self.release = build(self.rec, "boundary" in self.cases, own_apps + faults)
        self.install_apps(self.release, False, ["hello", "fetch", "gather", *own_apps])
        if respawn:
            # worker-respawn's apps: hello, and the faults fixture (mounted at /faults).
            directory = self.tmp / RESPAWN_APPS
            directory.mkdir()
            shutil.copy(self.release / "libhello.so", directory / "hello.so")
            shutil.copy(self.release / "libfixture_faults.so", directory / "faults.so")
        keys = [
            "berth",
            "berth-logged",
            "native-hello",
            "native-abi",
            "native-fetch",
            "native-sleep",
            "native-db",
            "native-redis",
            "native-ws-echo",
            "native-ws-chat",
            "berth-workers",
            "berth-workers-admin",
            "berth-threads",
            "berth-threads-admin",
            "uvicorn",
            "uvicorn-ws",
            "aiohttp",
            "nginx",
            "postgres",
            "redis",
        ]
        if self.baseline_rev:
            # Only the apps the chosen cases load: an older revision may lack the others.
            wanted = [app for scenario, app in SCENARIO_APPS.items() if self.measures(scenario)]
            commit, short, release = build_baseline(self.rec, self.baseline_rev, self.tmp, wanted)
            self.baseline = {"rev": self.baseline_rev, "commit": commit, "short": short, "key": f"berth@{short}"}
            # Its own apps, built at the same revision: the ABI may differ between revisions.
            self.baseline_release = release
            self.install_apps(release, True, wanted)
            keys.append(self.baseline["key"])
        self.ports = {key: free_port() for key in keys}
        if self.measures("fetch"):
            self.nginx = start_nginx(self.rec, self.tmp, self.ports["nginx"])
            self.upstream = f"http://127.0.0.1:{self.ports['nginx']}/small.txt"
            log(f"upstream: nginx on {self.upstream}")
        if self.measures("db"):
            self.postgres = Postgres(self.rec, self.tmp, self.ports["postgres"]).start()
            self.postgres.psql(TODO_SCHEMA)
            self.postgres.psql(
                "INSERT INTO todo_items (title, done) SELECT 'item ' || i, i % 3 = 0 "
                f"FROM generate_series(1, {TODO_ROWS}) AS i; ANALYZE todo_items"
            )
            rows = self.postgres.psql("SELECT count(*) FROM todo_items")
            log(f"database: PostgreSQL on {self.postgres.url()}, {rows} rows in todo_items")
            self.write_config("db", "todo", [f'"postgres://127.0.0.1:{self.ports["postgres"]}"'], {
                "database_url": self.postgres.url(),
                "pool_size": POOL_SIZE,
            })
        if self.measures("redis"):
            self.redis = Redis(self.rec, self.tmp, self.ports["redis"]).start()
            self.redis.cli("SET", f"counter:{COUNTER_KEY}", COUNTER_VALUE)
            value = self.redis.cli("GET", f"counter:{COUNTER_KEY}")
            log(f"cache: Redis on {self.redis.url()}, counter:{COUNTER_KEY} = {value}")
            self.write_config("redis", "counter", [f'"redis://127.0.0.1:{self.ports["redis"]}"'], {
                "redis_url": self.redis.url(),
            })

    def app_dir(self, baseline, scenario=None):
        """The apps directory (relative to the temporary directory, the servers' working
        directory) that this tree's Berth, or the baseline's, serves in `scenario`: `apps` (or
        `baseline-apps`) for hello, fetch and fan-out, `apps-SCENARIO` for a data or WebSocket
        scenario's app."""
        name = "baseline-apps" if baseline else "apps"
        return f"{name}-{scenario}" if scenario in (*DATA_SCENARIOS, *WS_SCENARIOS) else name

    def install_apps(self, release, baseline, apps):
        """Copies each of `apps` from `release` into the apps directory of the scenario that loads it."""
        for scenario, app in SCENARIO_APPS.items():
            if app in apps:
                directory = self.tmp / self.app_dir(baseline, scenario)
                directory.mkdir(exist_ok=True)
                # Cargo names a library after its crate: `ws-echo` builds libws_echo.so.
                shutil.copy(release / f"lib{app.replace('-', '_')}.so", directory / f"{app}.so")

    def write_config(self, scenario, app, hosts, settings):
        """berth-SCENARIO.toml: `app`'s outbound allowlist (its database) and its settings."""
        lines = [f"[apps.{app}]", f"allowed_outbound_hosts = [{', '.join(hosts)}]", f"[apps.{app}.settings]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        (self.tmp / f"berth-{scenario}.toml").write_text("\n".join(lines) + "\n")

    def server_env(self):
        """This environment without the variables that would change Berth's settings or its log."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_") and k != "RUST_LOG"}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def berth(
        self, key, check_path, expect, *flags, scenario=None, probe=None, apps=None, admin=False, cpu=SERVER_CPU
    ):
        """Berth with the apps of this tree, or, under the baseline's key, the baseline's build
        with its own apps; for a data scenario, with that scenario's app alone and its config file.
        `apps` names another apps directory; with `admin`, its admin listener is on, on the port
        of `<key>-admin`."""
        baseline = bool(self.baseline) and key == self.baseline["key"]
        if scenario in DATA_SCENARIOS:
            flags = ("--config", f"berth-{scenario}.toml", *flags)
        admin_port = self.ports[f"{key}-admin"] if admin else None
        argv = [
            (self.baseline_release if baseline else self.release) / "berth",
            "--apps-dir",
            apps or self.app_dir(baseline, scenario),
            "--listen",
            f"127.0.0.1:{self.ports[key]}",
            "--admin-listen",
            f"127.0.0.1:{admin_port}" if admin else "off",
            "--allow-outbound",
            "http://127.0.0.1:*",
            *flags,
        ]
        env = self.server_env()
        server = Server(key, argv, self.ports[key], check_path, expect, cwd=self.tmp, env=env, probe=probe, cpu=cpu)
        server.admin_port = admin_port
        return server

    def berths(self, check_path, expect, *flags, scenario=None, probe=None):
        """Berth, and next to it the baseline's Berth with the same settings when there is one."""
        servers = [self.berth("berth", check_path, expect, *flags, scenario=scenario, probe=probe)]
        if self.baseline:
            key = self.baseline["key"]
            servers.append(self.berth(key, check_path, expect, *flags, scenario=scenario, probe=probe))
        return servers

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
            *self.berths("/hello", hello),
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
            *self.berths(query, head),
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

    def db_servers(self):
        path = f"/todo/items/{TODO_ID}"
        row = expect_json({"id": TODO_ID, "title": f"item {TODO_ID}", "done": TODO_ID % 3 == 0})
        port = self.ports["native-db"]
        native = [self.release / "native-db", "--listen", f"127.0.0.1:{port}"]
        native += ["--database-url", self.postgres.url(), "--pool-size", POOL_SIZE]
        return [
            *self.berths(path, row, scenario="db"),
            Server("native", native, port, path, row, cwd=self.tmp, env=self.server_env()),
        ]

    def redis_servers(self):
        path = f"/counter/{COUNTER_KEY}"
        counter = expect_json({"key": COUNTER_KEY, "value": COUNTER_VALUE})
        port = self.ports["native-redis"]
        native = [self.release / "native-redis", "--listen", f"127.0.0.1:{port}"]
        native += ["--redis-url", self.redis.url()]
        return [
            *self.berths(path, counter, scenario="redis"),
            Server("native", native, port, path, counter, cwd=self.tmp, env=self.server_env()),
        ]

    def fanout_servers(self):
        sleeps = lambda body: len(body) > 0  # noqa: E731
        return [
            *self.berths("/gather?sleep_ms=0", sleeps, "--max-connections", "20000"),
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

    def ws_echo_servers(self):
        probe = ws_echo_probe("/ws-echo")
        port, uvicorn_port = self.ports["native-ws-echo"], self.ports["uvicorn-ws"]
        uvicorn = [self.python, "-m", "uvicorn", "uvicorn_ws:app", "--host", "127.0.0.1", "--port", uvicorn_port]
        uvicorn += ["--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio"]
        uvicorn += ["--no-access-log", "--log-level", "warning"]
        return [
            *self.berths("/ws-echo", None, scenario="ws-echo", probe=probe),
            Server(
                "native",
                [self.release / "native-ws-echo", "--listen", f"127.0.0.1:{port}"],
                port,
                "/ws-echo",
                None,
                cwd=self.tmp,
                env=self.server_env(),
                name="native-ws-echo",
                probe=probe,
            ),
            Server(
                "uvicorn",
                uvicorn,
                uvicorn_port,
                "/ws-echo",
                None,
                cwd=PEERS,
                env=self.server_env(),
                name="uvicorn-ws",
                probe=probe,
            ),
        ]

    def ws_broadcast_servers(self):
        page = lambda body: len(body) > 0  # noqa: E731
        port = self.ports["native-ws-chat"]
        return [
            *self.berths("/chat/", page, "--max-connections", "20000", scenario="ws-broadcast"),
            Server(
                "native",
                [self.release / "native-ws-chat", "--listen", f"127.0.0.1:{port}"],
                port,
                "/chat/",
                page,
                cwd=self.tmp,
                env=self.server_env(),
                name="native-ws-chat",
            ),
        ]

    def workers_hello_servers(self):
        """workers-hello: `--workers 2` (one runtime thread per worker, the default) and one process
        with `--threads 2`, pinned to the same CPUs, each with its admin listener on (the
        supervisor's /workers counts each worker's requests)."""
        hello = lambda body: body == HELLO  # noqa: E731
        workers = self.berth(
            "berth-workers", "/hello", hello, "--workers", WORKERS, admin=True, cpu=WORKERS_CPUS
        )
        workers.workers = WORKERS
        single = self.berth(
            "berth-threads", "/hello", hello, "--threads", WORKERS, admin=True, cpu=WORKERS_CPUS
        )
        for server in (workers, single):
            server.load_cpu = WORKERS_LOAD_CPU
        return [workers, single]

    def respawn_server(self):
        """worker-respawn: `--workers 2` serving hello and the faults fixture."""
        pid = lambda body: body.strip().isdigit()  # noqa: E731
        server = self.berth(
            "berth-workers", "/faults/pid", pid, "--workers", WORKERS, apps=RESPAWN_APPS, admin=True,
            cpu=WORKERS_CPUS,
        )
        server.workers = WORKERS
        server.load_cpu = WORKERS_LOAD_CPU
        return server

    # ---- worker processes: the supervisor's admin API

    def worker_list(self, server, timeout=2.0):
        """The supervisor's `GET /workers`: one dict per worker (slot, pid, state, requests...)."""
        status, body = http_get(f"http://127.0.0.1:{server.admin_port}/workers", timeout=timeout)
        if status != 200:
            raise ValueError(f"GET /workers answered {status}: {body[:200]!r}")
        return json.loads(body)["workers"]

    def workers_ready(self, server, timeout=30.0):
        """Waits (at most `timeout` seconds) until each slot has one worker and all are ready;
        returns them. A SuiteError otherwise, as for a server that never answers."""
        deadline = time.monotonic() + timeout
        problem = "no answer"
        while time.monotonic() < deadline:
            if not server.alive():
                raise SuiteError(f"{server.name} exited with {server.proc.returncode}:\n{server.tail()}")
            try:
                workers = self.worker_list(server)
                slots = sorted(w["slot"] for w in workers)
                if slots == list(range(server.workers)) and all(w["state"] == "ready" for w in workers):
                    return workers
                problem = ", ".join(f"slot {w['slot']} pid {w['pid']} {w['state']}" for w in workers)
            except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as err:
                problem = str(err)
            time.sleep(0.05)
        raise SuiteError(
            f"{server.name}: its {server.workers} workers were not all ready within {timeout:.0f} s "
            f"({problem})\n{server.tail()}"
        )

    def worker_requests(self, server):
        """{slot: (pid, requests begun)} from /workers."""
        return {w["slot"]: (w["pid"], w["requests"]) for w in self.worker_list(server)}

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
        INTERFERENCE_FLAG% of the server's CPU is taken again (twice at most). In every mode, a
        measurement whose load tool saw errors while the server stayed up is taken once more:
        the errors of the first attempt are logged and kept in the result (`retried_errors`),
        and only errors that come back count as the measurement's.

        A server with worker processes counts with its workers: its CPU is the supervisor's and
        theirs, and the other processes' share is taken over all of its CPUs, less the load
        generator's own CPU when that runs on one of them (wrk on CPU 1 of a two-CPU machine)."""
        errors_before = None
        cores = server.cpu.split(",")
        ticks = tree_ticks if server.workers else proc_ticks
        for attempt in range(4 if retry else 1):
            self.wait_for_quiet()
            pid = server.proc.pid
            ticks0, cores0, t0 = ticks(pid), core_ticks(), time.monotonic()
            result = fn()
            ticks1, cores1, t1 = ticks(pid), core_ticks(), time.monotonic()
            wall = t1 - t0
            server_cpu = 100.0 * (ticks1 - ticks0) / TICKS / wall
            core_busy = sum(100.0 * (cores1[c][0] - cores0[c][0]) / TICKS / wall for c in cores)
            shared_load = (result.get("load_cpu") or 0.0) if server.load_cpu in cores else 0.0
            result["server_cpu"] = server_cpu
            if result.get("rps") and "wall_s" not in result:
                # Server CPU time per request: steadier than requests/s when the machine is shared.
                result["cpu_us"] = server_cpu / 100.0 / result["rps"] * 1e6
            result["interference"] = max(0.0, core_busy - server_cpu - shared_load)
            # The load side's whole core: wrk, and nginx, PostgreSQL or Redis when the case uses one.
            load = server.load_cpu
            result["load_core"] = 100.0 * (cores1[load][0] - cores0[load][0]) / TICKS / wall
            result["attempts"] = attempt + 1
            if not server.alive():
                result.setdefault("errors", []).append(f"{server.name} died:\n{server.tail()}")
                break
            if errors_before is not None:
                result["retried_errors"] = errors_before
            if result.get("errors") and errors_before is None and retry:
                errors_before = result["errors"]
                log(f"  {server.name} saw errors ({'; '.join(errors_before)[:200]}): measuring once more")
                continue
            noisy = result["interference"] > INTERFERENCE_FLAG
            if self.smoke or attempt >= 2 or not noisy or not self.retry_noisy():
                break
            log(f"  other processes took {result['interference']:.0f}% of CPU {server.cpu}: measuring again")
        return result

    def retry_noisy(self):
        """Whether the retry budget allows measuring a noisy run again."""
        self.retries += 1
        return self.retries <= self.retry_budget

    def record(self, run, scenario, case, server, result):
        # A broadcast's figure is its delivery time, a respawn's the time until the new worker
        # served; every other case's, its rate.
        figure, missing = {
            "ws-broadcast": ("p99_ms", "no delivery time"),
            "worker-respawn": ("serve_ms", "no time until the new worker served"),
        }.get(scenario, ("rps", "no requests/s figure"))
        if not result.get(figure) and not result.get("errors"):
            result["errors"] = [missing]
        entry = {"run": run, "scenario": scenario, "case": case, "server": server.key, **result}
        self.results.append(entry)
        rps = result.get("rps")
        p99 = result.get("p99_ms")
        unit = "msg/s" if scenario == "ws-echo" else "req/s"
        line = f"  {scenario:7} {case:26} {server.key:12} "
        line += f"{rps:>10.0f} {unit}" if rps is not None else " " * 16
        line += f"  p99 {p99:8.2f} ms" if p99 is not None else ""
        if "server_cpu" in result:
            line += f"  cpu {result['server_cpu']:5.1f}%"
        if result.get("peak_rss_mib") is not None and "ok" in result:
            line += f"  ok {result['ok']}/{result['n']} wall {result['wall_s']:.2f}s rss {result['peak_rss_mib']:.0f} MiB"
        if "received" in result:
            line += f"  got {result['received']}/{result['n']} p50 {result['p50_ms']:.1f} ms"
        if result.get("kib_per_socket") is not None:
            line += f"  {result['kib_per_socket']:.1f} KiB/socket"
        if result.get("worker_requests"):
            line += f"  split {'/'.join(str(n) for n in result['worker_requests'])}"
        if scenario == "worker-respawn":
            line += f"  round {result.get('round')}, slot {result.get('slot')}: ready {fmt_ms(result.get('ready_ms'))}"
            line += f", serving {fmt_ms(result.get('serve_ms'))} (supervisor: {fmt_ms(result.get('start_ms'))})"
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
            ["taskset", "-c", server.load_cpu, "wrk", "-t1", "-c64", f"-d{self.warmup}s", url],
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
        if "hello:h2" not in self.cases:
            return
        conns, streams = self.h2
        for server in servers:
            if is_berth(server.key) or server.key in ("berth-logged", "native", "native-abi"):
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

    def data(self, run, scenario):
        """db or redis: each server at `data_conns` connections, every request for the same row or key."""
        servers = self.db_servers() if scenario == "db" else self.redis_servers()
        for server in self.pairs(servers, run):
            url = server.url(server.check_path)
            result = self.alone(server, url, lambda: run_wrk(self.rec, url, self.data_conns, self.duration))
            self.record(run, scenario, f"HTTP/1.1, {self.data_conns} conns", server, result)

    def fanout(self, run):
        for server in self.fanout_servers():
            # A fresh process for every run: its VmHWM is this run's peak.
            with server.start(self.rec, self.tmp):
                path = "/gather?sleep_ms=1000" if is_berth(server.key) else "/sleep"
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

    def ws_echo(self, run):
        """Each server alone: warmed up with the same echo load, then measured."""
        binary = self.release / "wsload"
        for server in self.pairs(self.ws_echo_servers(), run):
            url = f"ws://127.0.0.1:{server.port}/ws-echo"
            with server.start(self.rec, self.tmp):
                run_ws_echo(self.rec, binary, url, WS_ECHO_CONNS, self.warmup)
                result = self.measure(
                    server, lambda: run_ws_echo(self.rec, binary, url, WS_ECHO_CONNS, self.duration)
                )
            self.record(run, "ws-echo", f"{WS_ECHO_CONNS} sockets, {WS_MESSAGE_SIZE} B text", server, result)

    def ws_broadcast(self, run):
        """Each server fresh (its memory is measured): `ws_sockets` idle sockets, its RSS before
        and with them open, then one message published to all of them."""
        binary = self.release / "wsload"
        for server in self.pairs(self.ws_broadcast_servers(), run):
            with server.start(self.rec, self.tmp):
                publish_url = server.url("/chat/publish")
                status, body = http_post(publish_url, b"berth-bench: publish check")
                if not 200 <= status < 300:
                    # Without the endpoint, a text message on a socket publishes (the chat interface).
                    log(f"  {server.name}: POST /chat/publish answered {status}: publishing on a socket")
                    publish_url = None
                rss_before = vm_status(server.proc.pid, "VmRSS")
                sockets = self.ws_sockets

                def idle(server=server, rss_before=rss_before):
                    rss = vm_status(server.proc.pid, "VmRSS")
                    return {
                        "rss_before_mib": rss_before,
                        "rss_idle_mib": rss,
                        "kib_per_socket": (rss - rss_before) * 1024 / sockets,
                    }

                url = f"ws://127.0.0.1:{server.port}/chat/ws"
                result = self.measure(
                    server,
                    lambda: run_ws_broadcast(
                        self.rec, binary, url, publish_url, sockets, self.ws_settle, self.tmp, idle
                    ),
                    # Again on the same process would blur its memory figures.
                    retry=False,
                )
            self.record(run, "ws-broadcast", f"{sockets:,} idle sockets, 1 message", server, result)

    def workers_hello(self, run):
        """Both modes alone, back to back, in the order alternating between runs, as in hello."""
        servers = self.pairs(self.workers_hello_servers(), run)
        for conns in WORKERS_CONNS:
            for server in servers:
                url = server.url("/hello")
                with server.start(self.rec, self.tmp):
                    if server.workers:
                        self.workers_ready(server)
                    self.warm(server, url)
                    result = self.measure(server, lambda: self.wrk_on_workers(server, url, conns))
                result["server_cmd"] = server.command
                result["load_cmd"] = self.rec.line(wrk_cmd(url, conns, self.duration, server.load_cpu))
                self.record(run, "workers-hello", f"HTTP/1.1, {conns} conns, CPUs {WORKERS_CPUS}", server, result)

    def wrk_on_workers(self, server, url, conns):
        """wrk, and with workers, each one's requests over the measurement (`worker_requests`, by
        slot) from /workers before and after; a worker replaced meanwhile is an error."""
        before = after = None
        problem = ""
        try:
            before = self.worker_requests(server) if server.workers else None
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as err:
            problem = f"GET /workers before: {err}"
        result = run_wrk(self.rec, url, conns, self.duration, cpu=server.load_cpu)
        if not server.workers:
            return result
        try:
            after = self.worker_requests(server)
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as err:
            problem = problem or f"GET /workers after: {err}"
        if before and after and [pid for pid, _ in before.values()] == [pid for pid, _ in after.values()]:
            counts = [after[slot][1] - before[slot][1] for slot in sorted(after)]
            result["worker_requests"] = counts
            result["busiest_share"] = max(counts) / sum(counts) if sum(counts) > 0 else None
        else:
            result["errors"].append(
                problem or f"the workers changed during the measurement: {before} before, {after} after"
            )
        return result

    def worker_respawn(self, run):
        """`respawn_rounds` rounds, a fresh server every WORKERS rounds: each of its slots loses its
        worker once, so that no round meets the supervisor's crash-loop backoff."""
        done = 0
        died = False
        while done < self.respawn_rounds and not died:
            server = self.respawn_server()
            with server.start(self.rec, self.tmp):
                self.workers_ready(server)
                for slot in range(WORKERS):
                    if done >= self.respawn_rounds:
                        break
                    done += 1
                    if slot:
                        time.sleep(RESPAWN_PAUSE_S)
                    self.wait_for_quiet()
                    try:
                        workers = self.workers_ready(server, timeout=RESPAWN_TIMEOUT_S)
                    except SuiteError as err:
                        # The last round's replacement never got ready: that round has the error.
                        result = {"slot": slot, "errors": [f"not every worker ready: {err}"]}
                    else:
                        result = self.respawn_round(server, slot, workers)
                    result["round"] = done
                    result["server_cmd"] = server.command
                    self.record(run, "worker-respawn", RESPAWN_CASE, server, result)
                    # The supervisor itself died: that round says so, and no other is measured.
                    died = not server.alive()
                    if result["errors"]:
                        break  # a fresh server for the next round

    def respawn_round(self, server, slot, workers):
        """Kills `slot`'s worker with SIGKILL; times (a) until /workers lists that slot with a new
        pid in state ready and (b) until /faults/pid, asked on a fresh connection each time, answers
        with a pid that was not there before. Polled every RESPAWN_POLL_S from the load CPU; bounded
        by RESPAWN_TIMEOUT_S and RESPAWN_MAX_POLLS. Then the supervisor's own spawn-to-ready time
        from its log."""
        victim = next(w for w in workers if w["slot"] == slot)
        known = {w["pid"] for w in workers}
        result = {"slot": slot, "old_pid": victim["pid"], "errors": []}
        ready_s = serve_s = new_pid = served_pid = None
        polls = requests = 0
        failed_polls, failed_requests = [], []
        pid_url = server.url("/faults/pid")
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(server.load_cpu)})
        try:
            killed = time.monotonic()
            os.kill(victim["pid"], signal.SIGKILL)
            deadline = killed + RESPAWN_TIMEOUT_S
            while (ready_s is None or serve_s is None) and time.monotonic() < deadline:
                if polls + requests >= RESPAWN_MAX_POLLS:
                    break
                if ready_s is None:
                    polls += 1
                    try:
                        for w in self.worker_list(server, timeout=1.0):
                            if w["slot"] == slot and w["pid"] not in known and w["state"] == "ready":
                                ready_s, new_pid = time.monotonic() - killed, w["pid"]
                    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as err:
                        failed_polls.append(f"{type(err).__name__}: {err}")
                if serve_s is None:
                    requests += 1
                    try:
                        status, body = http_get(pid_url, timeout=1.0)
                        if status != 200:
                            failed_requests.append(f"status {status}: {body[:100]!r}")
                        elif int(body) not in known:
                            serve_s, served_pid = time.monotonic() - killed, int(body)
                    except (OSError, http.client.HTTPException, ValueError) as err:
                        failed_requests.append(f"{type(err).__name__}: {err}")
                if ready_s is None or serve_s is None:
                    time.sleep(RESPAWN_POLL_S)
            elapsed = time.monotonic() - killed
        finally:
            os.sched_setaffinity(0, affinity)
        result.update(
            {
                "new_pid": new_pid,
                "served_pid": served_pid,
                "ready_ms": ready_s * 1000 if ready_s is not None else None,
                "serve_ms": serve_s * 1000 if serve_s is not None else None,
                "admin_polls": polls,
                "requests": requests,
                "failed_requests": len(failed_requests),
            }
        )
        errors = result["errors"]
        if ready_s is None:
            errors.append(
                f"/workers showed no new ready worker in slot {slot} within {elapsed:.1f} s ({polls} polls)"
            )
        if serve_s is None:
            errors.append(
                f"no answer from a new worker within {elapsed:.1f} s ({requests} requests to /faults/pid)"
            )
        if new_pid is not None and served_pid is not None and new_pid != served_pid:
            errors.append(f"/faults/pid was answered by pid {served_pid}, /workers lists pid {new_pid}")
        if failed_requests:
            errors.append(
                f"{len(failed_requests)} of {requests} requests to /faults/pid failed; first: {failed_requests[0]}"
            )
        if failed_polls:
            errors.append(f"{len(failed_polls)} of {polls} polls of /workers failed; first: {failed_polls[0]}")
        if not server.alive():
            errors.append(f"{server.name} died:\n{server.tail()}")
        if new_pid is not None:
            # The supervisor logs the line as it marks the worker ready: give the log a moment.
            line = re.compile(rf"worker {slot} \(pid {new_pid}\) is ready after ([\d.]+)s")
            deadline = time.monotonic() + 1.0
            while True:
                match = line.search(server.log_path.read_text(errors="replace"))
                if match or time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            result["start_ms"] = float(match.group(1)) * 1000 if match else None
        return result

    def run(self):
        self.prepare()
        if "boundary" in self.cases:
            log(f"boundary: {shlex.join(self.boundary_cmd)} ({self.runs} run(s))")
            self.boundary()
        for run in range(1, self.runs + 1):
            log(f"run {run} of {self.runs} ({self.duration} s per measurement)")
            if self.measures("hello"):
                self.hello(run)
            if self.measures("fetch"):
                self.fetch(run)
            for scenario in DATA_SCENARIOS:
                if self.measures(scenario):
                    self.data(run, scenario)
            if self.measures("fan-out"):
                self.fanout(run)
            if self.measures("ws-echo"):
                self.ws_echo(run)
            if self.measures("ws-broadcast"):
                self.ws_broadcast(run)
            if self.measures("workers-hello"):
                self.workers_hello(run)
            if self.measures("worker-respawn"):
                self.worker_respawn(run)

    def document(self):
        """Everything the report needs, as the results file holds it."""
        return {
            "format": RESULTS_FORMAT,
            "argv": self.argv,
            "smoke": self.smoke,
            "runs": self.runs,
            "duration_s": self.duration,
            "fanout_n": self.fanout_n,
            "ws_sockets": self.ws_sockets,
            "ws_read_buffer": WS_READ_BUFFER,
            "workers": {
                "workers": WORKERS,
                "cpus": WORKERS_CPUS,
                "load_cpu": WORKERS_LOAD_CPU,
                "conns": list(WORKERS_CONNS),
                "respawn_rounds": self.respawn_rounds,
                "respawn_poll_ms": RESPAWN_POLL_S * 1000,
                "respawn_timeout_s": RESPAWN_TIMEOUT_S,
                "respawn_max_polls": RESPAWN_MAX_POLLS,
                "respawn_pause_s": RESPAWN_PAUSE_S,
            },
            "cases": [case for case in CASES if case in self.cases],
            "started": self.started_at.isoformat(timespec="seconds"),
            "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "total_s": time.monotonic() - self.started,
            "commit": self.commit,
            "dirty": self.dirty,
            "baseline": self.baseline,
            "machine": machine_facts(),
            "commands": list(self.rec.commands),
            "boundary_cmd": self.boundary_cmd,
            "boundary_runs": self.boundary_runs,
            "boundary_errors": self.boundary_errors,
            "measurements": self.results,
        }

    def cleanup(self, keep):
        for service in (self.nginx, self.postgres, self.redis):
            if service:
                service.stop()
        if keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)



def fmt_ms(value):
    return "–" if value is None else f"{value:.1f} ms"


def is_berth(key):
    """Berth as built from this tree, or the --baseline revision's."""
    return key == "berth" or key.startswith("berth@")


def git_state():
    """This tree's commit, and whether what the suite measures has local changes."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        # The chart and results file a run writes are not changes to what was measured.
        ["git", "status", "--porcelain", "--", "server", "app-api", "sample-apps", "bench"]
        + [":!bench/results.svg", ":!bench/results.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return commit or "?", bool(dirty)


def machine_facts():
    """The machine and the tools' versions, as the report lists them."""

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
        "PostgreSQL": version([find_tool("pg_ctl") or "pg_ctl", "--version"], r"[\d.]+"),
        "Redis": version([find_tool("redis-server") or "redis-server", "--version"], r"(?<=v=)[\d.]+"),
    }


# --------------------------------------------------------------------------------------------


def parse_cases(text):
    """`--cases`: a comma-separated list of CASES, `hello` standing for all four hello cases."""
    chosen = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        expanded = [case for case in CASES if case == item or case.startswith(item + ":")]
        if not expanded:
            raise argparse.ArgumentTypeError(
                f"unknown case {item!r}; choose from hello, {', '.join(CASES)}"
            )
        chosen.update(expanded)
    if not chosen:
        raise argparse.ArgumentTypeError("no case chosen")
    return chosen


def write_results(document, path):
    """The results file, replaced whole: a reader never sees half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="~2 s per case, 1 run, fan-out of 200, 200 ws-broadcast sockets, 4 worker-respawn rounds, "
        "boundary bench with --quick; "
        "results to a temp "
        "dir (or --results); exit 1 on any error or missing figure, not on a missed target",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs to take the median of (default 3)")
    parser.add_argument(
        "--cases",
        type=parse_cases,
        default=set(CASES),
        metavar="LIST",
        help="comma-separated: boundary, hello (or hello:1, hello:64, hello:256, hello:h2), fetch, db, "
        "redis, fan-out, ws-echo, ws-broadcast, workers-hello, worker-respawn (default: all); each case "
        "runs on all of its servers",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also build Berth at git revision REV (temporary worktree, release, target/bench-baseline) "
        "and measure it as server berth@REV next to Berth in each case but boundary, workers-hello and "
        "worker-respawn",
    )
    parser.add_argument(
        "--results",
        type=Path,
        help="the results file (default bench/results.json for a full run; for --smoke, --cases or "
        "--baseline, one beside the temp dir)",
    )
    parser.add_argument("--duration", type=int, help="seconds per measurement (default 10; smoke 2)")
    parser.add_argument("--fanout-n", type=int, help="fan-out requests (default 10000; smoke 200)")
    parser.add_argument(
        "--ws-sockets", type=int, help="ws-broadcast idle sockets (default 10000; smoke 200)"
    )
    parser.add_argument(
        "--respawn-rounds", type=int, help="worker-respawn rounds per run (default 10; smoke 4)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (apps, logs)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.respawn_rounds is not None and args.respawn_rounds < 1:
        parser.error("--respawn-rounds must be at least 1")

    suite = Suite(args)
    if args.results:
        results = args.results.resolve()
    elif args.smoke or args.cases != set(CASES) or args.baseline:
        # Not the published kind of run: bench/results.json stays as it is.
        results = suite.tmp.parent / f"{suite.tmp.name}-results.json"
    else:
        results = RESULTS
    code = 0
    try:
        suite.run()
    except SuiteError as err:
        log(f"error: {err}")
        code = 2
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    finally:
        suite.cleanup(args.keep)
    if code:
        return code
    write_results(suite.document(), results)
    errors = [r for r in suite.results if r.get("errors")]
    log("")
    log(f"results: {results}\ntime:    {time.monotonic() - suite.started:.0f} s")
    shown = results.relative_to(Path.cwd()) if results.is_relative_to(Path.cwd()) else results
    log(f"report:  python3 bench/report.py {shlex.quote(str(shown))}")
    # Targets are for the report; the exit status says whether every case produced figures.
    if errors or suite.boundary_errors:
        log(
            f"error: {len(errors)} measurement(s) and {len(suite.boundary_errors)} boundary run(s) "
            "saw errors (see the results or the report)"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
