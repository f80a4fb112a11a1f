#!/usr/bin/env python3
"""Provisions what the benchmark suite (bench/run.py) measures with; `make bench` and CI run it
first.

    python3 bench/setup.py

* wrk, h2load, nginx, taskset and runuser, PostgreSQL (initdb, pg_ctl, psql) and Redis
  (redis-server, redis-cli) from Debian's packages (apt-get, through sudo unless root), for the
  ones missing (run.py starts its own PostgreSQL and Redis in its temporary directory; it does
  not use the cluster or service the packages may set up);
* uvicorn, aiohttp and websockets (uvicorn's WebSocket protocol), pinned in
  bench/peers/requirements.txt, in a virtualenv at
  target/bench-env/venv, made again when requirements.txt or the Python changes.

It writes target/bench-env/setup.json: the virtualenv's Python, what it was made from, and the
commands that made it, which the report lists with the rest. Running it again when everything is
in place does nothing. Only the standard library is used here.
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys

from common import (
    ENV_DIR,
    PEERS,
    ROOT,
    SETUP_STATE,
    TOOLS,
    VENV,
    SuiteError,
    find_tool,
    log,
    setup_state,
    venv_source,
)


def note(commands, cmd):
    """A command as the report lists it: relative to the repository."""
    line = shlex.join(str(part) for part in cmd).replace(str(ROOT) + "/", "")
    if line not in commands:
        commands.append(line)


def ensure_tools(commands):
    """The tools in TOOLS from Debian's packages, unless already there."""
    missing = list(dict.fromkeys(pkg for tool, pkg in TOOLS.items() if not find_tool(tool)))
    if not missing:
        log(f"tools: {', '.join(TOOLS)} already installed")
        return
    apt_install(commands, missing)
    still = [tool for tool in TOOLS if not find_tool(tool)]
    if still:
        raise SuiteError(f"still missing after apt-get: {', '.join(still)}")


def apt_install(commands, packages):
    """Debian packages, through sudo unless root; the package lists are fetched first, as a fresh
    container has none."""
    if shutil.which("apt-get") is None:
        raise SuiteError(f"missing {', '.join(packages)} and no apt-get to install them")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    log(f"installing {' '.join(packages)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (sudo + ["apt-get", "update", "-qq"], sudo + ["apt-get", "install", "-y", "-qq", *packages]):
        note(commands, cmd)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            raise SuiteError(f"`{shlex.join(cmd)}` failed:\n{proc.stdout[-3000:]}")


def make_venv(commands):
    """A fresh virtualenv with the pinned peers (bench/peers/requirements.txt)."""
    shutil.rmtree(VENV, ignore_errors=True)
    ENV_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "venv", str(VENV)]
    note(commands, cmd)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0 and shutil.which("apt-get"):
        # Debian's python3 keeps venv (ensurepip) in a separate package.
        apt_install(commands, ["python3-venv"])
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SuiteError(f"cannot create a virtualenv:\n{proc.stdout[-2000:]}")
    python = VENV / "bin" / "python"
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
    note(commands, pip)
    proc = subprocess.run(pip, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise SuiteError(f"pip install failed:\n{proc.stdout[-3000:]}")
    return python


def main():
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    commands = []
    try:
        ensure_tools(commands)
        state = setup_state()
        if state:
            log(f"virtualenv: {VENV.relative_to(ROOT)} is up to date")
            # The commands that made it stay on record, after any apt-get this time.
            made = state.get("commands", [])
            commands = made + [c for c in commands if c not in made]
        else:
            log(f"virtualenv: installing bench/peers/requirements.txt into {VENV.relative_to(ROOT)}")
            state = {"python": str(make_venv(commands)), **venv_source()}
        state["commands"] = commands
        SETUP_STATE.write_text(json.dumps(state, indent=2) + "\n")
    except SuiteError as err:
        log(f"error: {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
