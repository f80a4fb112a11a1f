#!/usr/bin/env python3
"""Makes the virtualenv the conformance and browser tests run their clients in.

    python3 tests/clients/setup.py [--venv DIR] [--check]

* The virtualenv (default `target/test-clients-venv`) gets the pinned packages of
  tests/clients/requirements.txt (`websockets`, `kosoku`, `playwright`) from PyPI. It is made
  again when requirements.txt or the base Python changes; otherwise this does nothing.
* Playwright drives Debian's `/usr/bin/chromium` (`apt-get install chromium`); no browser is
  downloaded (`playwright install` is never run).

tests/integration/conformance.rs runs this on first use, and `.ci/run` before `make test`.
`--check` only reports whether the virtualenv is up to date (exit 0) or not (exit 1).
Prints the virtualenv's Python on its last line. Only the standard library is used here.
"""

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
REQUIREMENTS = HERE / "requirements.txt"
CHROMIUM = Path("/usr/bin/chromium")
STATE = "berth-test-clients.json"


def log(message):
    print(f"tests/clients/setup.py: {message}", file=sys.stderr, flush=True)


def source():
    """What the virtualenv is made from: the pinned requirements and this Python."""
    return {
        "requirements_sha256": hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest(),
        "base_python": f"{os.path.realpath(sys.executable)} {sys.version.split()[0]}",
    }


def up_to_date(venv):
    try:
        state = json.loads((venv / STATE).read_text())
    except (OSError, ValueError):
        return False
    return state == source() and os.access(venv / "bin" / "python", os.X_OK)


def run(cmd, what, hint):
    log(" ".join(str(part) for part in cmd))
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"tests/clients/setup.py: {what} failed ({proc.returncode}); {hint}\n"
                         f"{proc.stdout[-4000:]}")


def make(venv):
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "venv", str(venv)], "python3 -m venv",
        "on Debian: apt-get install python3-venv")
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-r", str(REQUIREMENTS)], "pip install -r tests/clients/requirements.txt",
        "it needs PyPI")
    (venv / STATE).write_text(json.dumps(source(), indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=ROOT / "target" / "test-clients-venv")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    venv = args.venv.resolve()
    if args.check:
        return 0 if up_to_date(venv) else 1
    # Several test processes may ask at once: one makes it, the others wait and find it made.
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if up_to_date(venv):
            log(f"{venv} is up to date")
        else:
            log(f"installing {REQUIREMENTS.relative_to(ROOT)} into {venv}")
            make(venv)
    if not CHROMIUM.exists():
        log(f"warning: no {CHROMIUM}; the browser tests need it: apt-get install chromium")
    print(venv / "bin" / "python")
    return 0


if __name__ == "__main__":
    sys.exit(main())
