#!/usr/bin/env python3
"""Runs the Autobahn test-suite cases against a WebSocket echo server with `kosoku`, and judges
the report against tests/clients/autobahn-allow.txt.

    autobahn.py ws://127.0.0.1:PORT/ws-echo --outdir DIR [--allow FILE] [-p N] [-x CASE]...

kosoku (PyPI, a runner of Autobahn's own case files) plays Autobahn's `fuzzingclient`: one
connection per case, each case checking the server's echo, framing, UTF-8 handling, pings and
closing handshake. The compression cases (12.*, 13.*) are left out, as Berth does not offer
permessage-deflate. kosoku writes Autobahn's report (index.json, one JSON and HTML file per case)
to DIR; this script then reads index.json:

* A case passes when its behaviour is OK, NON-STRICT or INFORMATIONAL and its closing behaviour
  is OK or INFORMATIONAL: these are Autobahn's own passing verdicts (NON-STRICT is conformant
  but diverges from a SHOULD; INFORMATIONAL cases test what the RFC leaves open). They are
  listed in the summary, by verdict.
* Any other case (FAILED, UNIMPLEMENTED, ERROR, or a closing verdict of FAILED, FAILED BY CLIENT,
  WRONG CODE, UNCLEAN) fails the run unless the allow-list names it with a reason.
* Fewer cases than expected (kosoku could not connect, say) fails too.

Exits 0 when every case passes or is allowed, 1 otherwise; each failed case is printed with its
verdicts, the close code the server sent, and Autobahn's explanation. Allow-list entries that
match no failing case are printed as stale (not an error, so a fix elsewhere does not break CI).
"""

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PASS_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASS_CLOSE = {"OK", "INFORMATIONAL"}
# Compression: Berth offers no permessage-deflate, so 12.* and 13.* cannot apply.
EXCLUDED = ["12.*", "13.*"]
# Autobahn has 517 cases; 301 remain without 12.* and 13.*.
MIN_CASES = 290


def case_key(case_id):
    return tuple(int(part) for part in case_id.split("."))


def read_allow(path):
    """`(glob, reason)` for each line `CASE-OR-GLOB  reason...`; `#` starts a comment."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        if len(parts) < 2:
            sys.exit(f"{path}:{number}: an allowed case needs a reason: {line!r}")
        entries.append((parts[0], parts[1].strip()))
    return entries


def detail(outdir, entry):
    try:
        return json.loads((outdir / entry["reportfile"]).read_text())
    except (OSError, ValueError, KeyError):
        return {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the echo server, ws://HOST:PORT/PATH")
    parser.add_argument("--outdir", type=Path, required=True, help="where kosoku writes its report")
    parser.add_argument("--allow", type=Path, default=HERE / "autobahn-allow.txt")
    parser.add_argument("-p", "--parallelism", type=int, default=2)
    parser.add_argument("-i", "--include", action="append", default=[],
                        help="run only these cases (ids or globs), for trying one out")
    parser.add_argument("-x", "--exclude", action="append", default=[],
                        help="cases left out besides 12.* and 13.*")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()

    allow = read_allow(args.allow)
    kosoku = Path(sys.executable).parent / "kosoku"
    cmd = [str(kosoku), "--outdir", str(args.outdir), "--parallelism", str(args.parallelism)]
    for case in args.include:
        cmd += ["--include", case]
    for case in EXCLUDED + args.exclude:
        cmd += ["--exclude", case]
    cmd.append(args.url)
    print(f"autobahn: {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout
        print(out or "", flush=True)
        sys.exit(f"autobahn: FAIL: kosoku did not finish within {args.timeout:.0f} s")
    elapsed = time.monotonic() - started
    # kosoku's own output: a line per failed case, and where the report went.
    print(proc.stdout.rstrip(), flush=True)
    print(f"autobahn: kosoku exited {proc.returncode} after {elapsed:.1f} s", flush=True)

    try:
        index = json.loads((args.outdir / "index.json").read_text())
    except (OSError, ValueError) as err:
        sys.exit(f"autobahn: FAIL: no report from kosoku ({err})")
    if len(index) != 1:
        sys.exit(f"autobahn: FAIL: expected one agent in index.json, found {list(index)}")
    agent, cases = next(iter(index.items()))
    minimum = 1 if args.include or args.exclude else MIN_CASES
    if len(cases) < minimum:
        sys.exit(f"autobahn: FAIL: only {len(cases)} cases ran (expected at least {minimum})")

    verdicts = {}
    failed, allowed = [], []
    used = set()
    for case_id in sorted(cases, key=case_key):
        entry = cases[case_id]
        behavior, close = entry.get("behavior"), entry.get("behaviorClose")
        if behavior in PASS_BEHAVIOR and close in PASS_CLOSE:
            label = behavior if behavior != "OK" else close
            verdicts.setdefault(label, []).append(case_id)
            continue
        reason = next((r for glob, r in allow if fnmatch.fnmatchcase(case_id, glob)), None)
        if reason is not None:
            used.update(glob for glob, _ in allow if fnmatch.fnmatchcase(case_id, glob))
            allowed.append((case_id, entry, reason))
        else:
            failed.append((case_id, entry))

    slowest = sorted(cases.items(), key=lambda item: -item[1].get("duration", 0))[:5]
    print(f"autobahn: agent {agent!r}, {len(cases)} cases (12.* and 13.* excluded), "
          f"{elapsed:.1f} s; slowest: "
          + ", ".join(f"{cid} {entry.get('duration', 0)} ms" for cid, entry in slowest))
    for label in ("NON-STRICT", "INFORMATIONAL"):
        if verdicts.get(label):
            print(f"autobahn: {label} (passing per Autobahn): {' '.join(verdicts[label])}")
    for case_id, entry, reason in allowed:
        print(f"autobahn: allowed {case_id} ({entry.get('behavior')}/{entry.get('behaviorClose')},"
              f" close code {entry.get('remoteCloseCode')}): {reason}")
    for glob, reason in allow:
        if glob not in used:
            print(f"autobahn: note: allow-list entry {glob} matches no failing case: "
                  f"remove it ({reason})")
    for case_id, entry in failed:
        info = detail(args.outdir, entry)
        print(f"autobahn: FAILED {case_id}: behavior {entry.get('behavior')}, closing "
              f"{entry.get('behaviorClose')}, server's close code {entry.get('remoteCloseCode')}\n"
              f"    case: {info.get('description', '?')}\n"
              f"    expected: {info.get('expectation', '?')}\n"
              f"    result: {info.get('result', '?')} / {info.get('resultClose', '?')}\n"
              f"    report: {args.outdir / entry.get('reportfile', '?').replace('.json', '.html')}")
    ok = len(verdicts.get("OK", []))
    print(f"autobahn: {ok} OK, {len(verdicts.get('NON-STRICT', []))} NON-STRICT, "
          f"{len(verdicts.get('INFORMATIONAL', []))} INFORMATIONAL, {len(allowed)} allowed, "
          f"{len(failed)} failed", flush=True)
    if failed:
        print(f"autobahn: FAIL: {len(failed)} case(s) failed and are not in {args.allow.name}: "
              + " ".join(case_id for case_id, _ in failed), flush=True)
        return 1
    if proc.returncode != 0 and not allowed:
        print(f"autobahn: FAIL: kosoku exited {proc.returncode} though every case passed",
              flush=True)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
