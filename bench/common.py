"""What the benchmark suite's steps share: paths, the CPUs they pin to, the settings of the
measured environment that the report quotes, and a few small helpers.

    bench/setup.py   installs the tools and the Python peers' virtualenv
    bench/run.py     builds, measures, and writes a results file (JSON)
    bench/report.py  turns a results file into BENCHMARKS.md and the chart, and checks the targets

Only the standard library is used here.
"""

import hashlib
import json
import os
import shutil
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
# The results file of a full run, which the report reads by default.
RESULTS = BENCH / "results.json"
# The shape of the results file run.py writes and report.py reads: bumped when it changes.
RESULTS_FORMAT = 1
# What setup.py provisions outside the package manager: the peers' virtualenv and a note of how it
# was made (setup.json), under the git-ignored target directory.
ENV_DIR = ROOT / "target" / "bench-env"
VENV = ENV_DIR / "venv"
SETUP_STATE = ENV_DIR / "setup.json"
# What bench/run.py --cases accepts, in the order the suite measures it.
CASES = (
    "boundary",
    "hello:1",
    "hello:64",
    "hello:256",
    "hello:h2",
    "fetch",
    "db",
    "redis",
    "fan-out",
    "ws-echo",
    "ws-broadcast",
    "workers-hello",
    "worker-respawn",
)
# The worker-process cases (issue 18): a full run's results from before them lack these.
WORKER_CASES = ("workers-hello", "worker-respawn")
# The load tools, nginx, PostgreSQL and Redis, each with the Debian package it comes from.
# PostgreSQL's initdb and pg_ctl are not on PATH on Debian: find_tool looks in its bin directory.
TOOLS = {
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "nginx": "nginx-light",
    "taskset": "util-linux",
    "runuser": "util-linux",
    "initdb": "postgresql",
    "pg_ctl": "postgresql",
    "psql": "postgresql-client",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
}

SERVER_CPU = "0"
LOAD_CPU = "1"
# The upstream's small file; the fetch endpoints answer with its first 20 bytes.
SMALL_FILE = (b"Berth benchmark upstream: a small static file served by nginx. " * 2)[:128]
# A measurement during which other processes used more than this share of the server's CPU is
# measured again (run.py) and flagged in the report.
INTERFERENCE_FLAG = 10.0


class SuiteError(Exception):
    """A server that would not start or answer, a tool that would not install: the suite stops."""


def log(message):
    print(message, flush=True)


def find_tool(name):
    """`name` on PATH, in /usr/sbin or /sbin, or in PostgreSQL's bin directory; None if nowhere."""
    places = [f"/usr/sbin/{name}", f"/sbin/{name}"]
    if postgres_bin():
        places.append(str(postgres_bin() / name))
    return shutil.which(name) or next((p for p in places if os.access(p, os.X_OK)), None)


def postgres_bin():
    """Where Debian's PostgreSQL keeps its programs (/usr/lib/postgresql/<version>/bin), the
    newest version when there are several; None when it is not installed."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if p.parent.parent.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name), default=None)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def venv_source():
    """What the peers' virtualenv is made from: the pinned requirements and this Python."""
    requirements = (PEERS / "requirements.txt").read_bytes()
    return {
        "requirements_sha256": hashlib.sha256(requirements).hexdigest(),
        "base_python": f"{sys.executable} {sys.version.split()[0]}",
    }


def setup_state():
    """What bench/setup.py recorded (the virtualenv's `python` and the `commands` that made it),
    if that virtualenv is there and made from today's requirements and Python; otherwise None."""
    try:
        state = json.loads(SETUP_STATE.read_text())
    except (OSError, ValueError):
        return None
    if all(state.get(key) == value for key, value in venv_source().items()) and os.access(
        state.get("python", ""), os.X_OK
    ):
        return state
    return None
