#!/usr/bin/env python3
"""Berth's benchmark suite, the report step: turns a results file written by bench/run.py into
BENCHMARKS.md and the SVG chart, and checks the targets of issues 5, 16, 17 and 18 (worker
processes). It measures nothing, so it can be run again on any results file, an old one included.

    python3 bench/report.py [RESULTS] [--out REPORT] [--svg CHART]

RESULTS defaults to bench/results.json. The report of a full run (every case, no `--smoke`, no
`--baseline`) goes to BENCHMARKS.md and its chart to bench/results.svg; any other run's report
goes beside its results file (same name, `.md` and `.svg`), so that a smoke or a partial run never
replaces the published figures. `--out` and `--svg` choose other places (the chart then goes
beside `--out` unless that is BENCHMARKS.md).

Every figure is the median of the runs; each `× native` is the median, over the runs, of the
ratio to the native baseline measured in the same run (in workers-hello, `× one process`: to
`berth --threads 2`, the same way); worker-respawn's times are the medians over every round. A
`--baseline` run's results also give the baseline Berth's ratio to the current Berth, the same
way, in a section of their own.

It prints each target as met, MISSED or n/a (not measured); the exit status is 0 once the report
is written, whether or not the targets are met or the run saw errors (bench/run.py's own exit
status says that). Only the standard library is used here.
"""

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

from common import (
    BENCH,
    CASES,
    INTERFERENCE_FLAG,
    RESULTS,
    RESULTS_FORMAT,
    ROOT,
    SMALL_FILE,
    WORKER_CASES,
    log,
)

# A full run's results from before the worker cases list the others only.
CASES_BEFORE_WORKERS = tuple(case for case in CASES if case not in WORKER_CASES)

# A load generator using this much of its CPU, or its core this busy (with nginx, PostgreSQL or Redis
# beside it), may be what limits the figure, not the server.
LOAD_BOUND = 95.0
# Issue 5's target for the boundary benchmark's difference per request.
BOUNDARY_TARGET_NS = 1000.0
# Issue 5's hello target: Berth's requests/s against native's, in the same run.
HELLO_TARGET_X = 0.95
# Issue 16's target for the db and redis scenarios (and issue 5's for fetch): the same ratio.
DATA_TARGET_X = 0.9
# Issue 17's targets. ws-echo: Berth's messages/s against native's (and its p99 at most
# P99_TARGET_X native's, the bound the hello cases use); ws-broadcast: Berth's delivery times (p50,
# p99) and memory per idle socket at most WS_BROADCAST_TARGET_X native's. Both echo and hello ask
# for ≥ PEER_TARGET_X the Python peer's rate.
WS_ECHO_TARGET_X = 0.9
WS_BROADCAST_TARGET_X = 1.1
P99_TARGET_X = 1.1
PEER_TARGET_X = 3
# Worker processes: `--workers 2` against one process with `--threads 2` on the same two cores,
# and issue 18's bound on the time from a worker's death until its replacement serves.
WORKERS_TARGET_X = 0.9
RESPAWN_TARGET_MS = 2000.0
# What a scenario's ratios are to: the native baseline, except in workers-hello.
REFERENCE = {"workers-hello": "berth-threads"}

SERVERS = {
    # key: (label, colour in the chart)
    "berth": ("Berth + app", "#2b6cb0"),
    "berth-logged": ("Berth + app, --access-log", "#90cdf4"),
    "native": ("native hyper", "#4a5568"),
    "native-abi": ("native hyper + app via the ABI", "#a0aec0"),
    "uvicorn": ("uvicorn (uvloop, httptools)", "#d69e2e"),
    "aiohttp": ("aiohttp (uvloop)", "#38a169"),
    "berth-workers": ("Berth --workers 2", "#2c7a7b"),
    "berth-threads": ("Berth --threads 2 (1 process)", "#81e6d9"),
}
# The --baseline revision's Berth, `berth@<short hash>`.
BASELINE_COLOUR = "#805ad5"

SCENARIO_TITLES = {
    "hello": "hello: `Hello, world!` per request",
    "fetch": "fetch: the first 20 bytes of a small file from nginx, per request",
    "db": "db: one PostgreSQL row by primary key, as JSON, per request",
    "redis": "redis: one Redis `GET`, as JSON, per request",
    "fan-out": "fan-out: requests that each wait 1 s, all sent at once",
    "ws-echo": "ws-echo: WebSocket round trips (send a message, await its echo) per second",
    "ws-broadcast": "ws-broadcast: one message published to many idle WebSockets",
    "workers-hello": "workers-hello: `hello` on two cores, `--workers 2` against one process with `--threads 2`",
    "worker-respawn": "worker-respawn: from a worker's death (SIGKILL) to its replacement serving",
}


def is_baseline(key):
    return key.startswith("berth@")


def label(key):
    if is_baseline(key):
        return f"Berth at {key.removeprefix('berth@')} + app"
    return SERVERS[key][0]


def colour(key):
    return BASELINE_COLOUR if is_baseline(key) else SERVERS[key][1]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------------------------
# Aggregation, targets, report


def aggregate(results):
    """Per (scenario, case, server): medians over runs, and medians of per-run ratios to native
    (to the scenario's REFERENCE server where it has one; and, for a --baseline Berth, to the
    current Berth). worker-respawn has one entry per round: its medians are over the rounds."""
    by_run = {}
    for r in results:
        by_run[(r["scenario"], r["case"], r["server"], r["run"])] = r

    def ratios(runs, scenario, case, other, field):
        """Each run's `field` over `other`'s in the same run and case."""
        found = []
        for r in runs:
            base = by_run.get((scenario, case, other, r["run"]))
            if base and base.get(field) and r.get(field) is not None:
                found.append(r[field] / base[field])
        return found

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
            "load_core",
            "interference",
            "wall_s",
            "connect_s",
            "peak_rss_mib",
            "idle_rss_mib",
            "ok",
            "n",
            "max_ms",
            "connected",
            "received",
            "rss_before_mib",
            "rss_idle_mib",
            "kib_per_socket",
            "busiest_share",
            "ready_ms",
            "serve_ms",
            "start_ms",
        ):
            row[field] = median([r.get(field) for r in runs])
        for field in ("ready_ms", "serve_ms", "start_ms"):
            values = [r[field] for r in runs if r.get(field) is not None]
            row[f"{field}_range"] = (min(values), max(values)) if values else None
        row["interference_max"] = max((r.get("interference") or 0.0) for r in runs)
        row["errors"] = [e for r in runs for e in r.get("errors", [])]
        reference = REFERENCE.get(scenario, "native")
        for field in ("rps", "p50_ms", "p99_ms", "cpu_us", "wall_s", "peak_rss_mib", "kib_per_socket"):
            to_native = ratios(runs, scenario, case, reference, field)
            row[f"{field}_x"] = median(to_native)
            row[f"{field}_x_range"] = (min(to_native), max(to_native)) if to_native else None
            if is_baseline(server):
                to_berth = ratios(runs, scenario, case, "berth", field)
                row[f"{field}_xb"] = median(to_berth)
                row[f"{field}_xb_range"] = (min(to_berth), max(to_berth)) if to_berth else None
        # Berth against each peer, and against native hyper calling the app through the ABI, per run.
        for peer in ("uvicorn", "aiohttp", "native-abi"):
            row[f"vs_{peer}"] = median(ratios(runs, scenario, case, peer, "rps"))
        rows[(scenario, case, server)] = row
    return rows


def boundary_median(runs):
    """Medians over the boundary benchmark's runs (the difference's median taken over each run's
    difference), or None without any run."""
    if not runs:
        return None
    figures = {field: median([r[field] for r in runs]) for field in ("direct_ns", "abi_ns", "diff_ns")}
    return {"runs": len(runs), **figures}


def spread(berth, field, to="x"):
    """`; runs LOW–HIGH`: the lowest and highest of the runs' ratios of `field` to native (or, with
    `to="xb"`, a baseline's to the current Berth), or nothing for a single run."""
    low_high = berth.get(f"{field}_{to}_range")
    if not low_high or berth["runs"] < 2:
        return ""
    return f"; runs {low_high[0]:.2f}–{low_high[1]:.2f}"


def runs_note(row, field, to="x"):
    """` (runs LOW–HIGH)`, or nothing for a single run."""
    runs = spread(row, field, to)
    return f" ({runs.removeprefix('; ')})" if runs else ""


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
                        f"fetch {key[1]}: Berth ≥ {DATA_TARGET_X}× native requests/s",
                        throughput(berth),
                        berth["rps_x"] >= DATA_TARGET_X,
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
        if key[0] in ("db", "redis") and key[2] == "berth" and rows[key]["rps_x"] is not None:
            checks.append(
                (
                    f"{key[0]} {key[1]}: Berth ≥ {DATA_TARGET_X}× native requests/s",
                    throughput(rows[key]),
                    rows[key]["rps_x"] >= DATA_TARGET_X,
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
    for key in rows:
        if key[0] == "ws-echo" and key[2] == "berth":
            berth = rows[key]
            if berth["rps_x"] is not None:
                checks.append(
                    (
                        f"ws-echo {key[1]}: Berth ≥ {WS_ECHO_TARGET_X}× native messages/s",
                        throughput(berth).replace("per request", "per message"),
                        berth["rps_x"] >= WS_ECHO_TARGET_X,
                    )
                )
            if berth["p99_ms_x"] is not None:
                checks.append(
                    (
                        f"ws-echo {key[1]}: Berth p99 ≤ {P99_TARGET_X}× native p99",
                        f"{berth['p99_ms_x']:.2f}× ({berth['p99_ms']:.2f} ms{spread(berth, 'p99_ms')})",
                        berth["p99_ms_x"] <= P99_TARGET_X,
                    )
                )
            if berth["vs_uvicorn"] is not None:
                checks.append(
                    (
                        f"ws-echo {key[1]}: Berth ≥ {PEER_TARGET_X}× uvicorn (websockets) messages/s",
                        f"{berth['vs_uvicorn']:.1f}×",
                        berth["vs_uvicorn"] >= PEER_TARGET_X,
                    )
                )
    for key in rows:
        if key[0] == "ws-broadcast" and key[2] == "berth":
            berth = rows[key]
            n = berth["n"]
            checks.append(
                (
                    f"ws-broadcast {key[1]}: every socket gets the message (every run)",
                    f"{fmt(berth['received'], ',.0f')}/{fmt(n, ',.0f')} (median)",
                    not berth["errors"] and n is not None and berth["received"] == n,
                )
            )
            for field, what, spec in (
                ("p50_ms", "p50 delivery time", ".1f"),
                ("p99_ms", "p99 delivery time", ".1f"),
                ("kib_per_socket", "RSS per idle socket", ".1f"),
            ):
                ratio = berth[f"{field}_x"]
                if ratio is None:
                    continue
                unit = "KiB" if field == "kib_per_socket" else "ms"
                checks.append(
                    (
                        f"ws-broadcast {key[1]}: Berth {what} ≤ {WS_BROADCAST_TARGET_X}× native",
                        f"{ratio:.2f}× ({fmt(berth[field], spec)} {unit}{spread(berth, field)})",
                        ratio <= WS_BROADCAST_TARGET_X,
                    )
                )
    for key in rows:
        if key[0] == "workers-hello" and key[2] == "berth-workers" and rows[key]["rps_x"] is not None:
            checks.append(
                (
                    f"workers-hello {key[1]}: ≥ {WORKERS_TARGET_X}× single-process requests/s",
                    throughput(rows[key]),
                    rows[key]["rps_x"] >= WORKERS_TARGET_X,
                )
            )
    for key in rows:
        if key[0] == "worker-respawn":
            row = rows[key]
            checks.append(
                (
                    f"worker-respawn: replacement serving within {RESPAWN_TARGET_MS / 1000:.0f} s "
                    "(issue 18 asks 2 s)",
                    respawn_measured(row),
                    respawn_met(row),
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


def respawn_measured(row):
    """worker-respawn's figure as the targets table gives it: the slowest round, the median."""
    served = row["serve_ms_range"]
    if served is None:
        return f"no round produced a figure ({row['runs']} round(s); see its section)"
    text = (
        f"{served[1]:.0f} ms in the slowest of {row['runs']} rounds (median {row['serve_ms']:.0f} ms; "
        f"listed ready by /workers after a median {fmt(row['ready_ms'], '.0f')} ms)"
    )
    return text + (f"; {len(row['errors'])} error(s)" if row["errors"] else "")


def respawn_met(row):
    """Every round produced both figures, without an error, and the slowest within the bound."""
    served = row["serve_ms_range"]
    return not row["errors"] and served is not None and served[1] <= RESPAWN_TARGET_MS


def fmt(value, spec, none="–"):
    return none if value is None else format(value, spec)


def write_report(doc, rows, checks, out, svg_path):
    lines = []
    add = lines.append
    finished = datetime.datetime.fromisoformat(doc["finished"]).astimezone(datetime.timezone.utc)
    command = shlex.join(["python3", "bench/run.py", *doc["argv"]])
    if doc["smoke"]:
        mode = "smoke run"
    elif every_case(doc):
        mode = "full run"
    else:
        mode = f"run of {', '.join(doc['cases'])}"
    add("# Benchmarks")
    add("")
    add(
        f"Generated by `{command}`{'' if doc['argv'] else ' (`make bench`)'} on "
        f"{finished.strftime('%Y-%m-%d %H:%M UTC')}, commit `{doc['commit']}`"
        f"{' with local changes' if doc['dirty'] else ''}; {mode}: {doc['runs']} run(s), "
        f"{doc['duration_s']} s per measurement, {doc['total_s'] / 60:.1f} min in all; written from its "
        "results file by `bench/report.py`. "
        + ("Regenerate with `make bench`." if not doc["argv"] else "Regenerate with that command, then the report.")
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
        "the Python servers run one process each; wrk, h2load, the fan-out client, the nginx upstream, "
        "PostgreSQL and Redis run pinned to CPU 1 (`taskset -c 1`)"
        + (
            " (the worker-process cases' servers run on CPUs 0 and 1: see their sections)"
            if any(case in doc["cases"] for case in ("workers-hello", "worker-respawn"))
            else ""
        )
        + ". *server CPU* is the server's own CPU "
        "time over the measurement (100% = one core, from `/proc/<pid>/stat`); *load CPU* is the load "
        "generator's; *load core* is how busy CPU 1 was, all of it (from `/proc/stat`)."
    )
    add("")
    boundary = boundary_median(doc["boundary_runs"])
    headlines = summary(rows, boundary)
    if headlines:
        add("## Headlines")
        add("")
        for line in headlines:
            add(f"* {line}")
        add("")
    workers = any(key[0] in ("workers-hello", "worker-respawn") for key in rows)
    add(f"## Targets (issues 5, 16{', 17 and 18' if workers else ' and 17'})")
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
    if doc["baseline"]:
        baseline_section(doc, rows, add)
    measurements = doc["measurements"]
    flagged = [r for r in measurements if (r.get("interference") or 0) > INTERFERENCE_FLAG]
    # worker-respawn's rounds measure no server CPU, so no other processes' share either.
    timed = [r for r in measurements if r["scenario"] != "worker-respawn"]
    if flagged:
        add(
            f"**Noise:** in {len(flagged)} of {len(timed)} measurements, other processes used more "
            f"than {INTERFERENCE_FLAG:.0f}% of the server's CPU (marked † below, with the worst share); "
            "their figures are less trustworthy."
        )
        add("")
    for scenario in (
        "hello", "fetch", "db", "redis", "fan-out", "ws-echo", "ws-broadcast", "workers-hello", "worker-respawn"
    ):
        scenario_rows = [r for r in rows.values() if r["scenario"] == scenario]
        if not scenario_rows:
            continue
        add(f"## {SCENARIO_TITLES[scenario]}")
        add("")
        if scenario == "workers-hello":
            workers_section(doc, scenario_rows, add)
        elif scenario == "worker-respawn":
            respawn_section(doc, scenario_rows, add)
        elif scenario == "ws-broadcast":
            broadcast_table(doc, scenario_rows, add)
        elif scenario == "fan-out":
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
                    f"| {r['case']} | {label(r['server'])} | {fmt(r['ok'], ',.0f')}/{fmt(r['n'], ',.0f')} | "
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
            unit = "message" if scenario == "ws-echo" else "request"
            add(
                f"| case | server | {unit}s/s | × native | p50 ms | p99 ms | p99 × native | server CPU | "
                f"CPU µs per {unit} | × native | load CPU | load core |"
            )
            add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            for r in scenario_rows:
                add(
                    f"| {r['case']} | {label(r['server'])} | {fmt(r['rps'], ',.0f')} | "
                    f"{fmt(r['rps_x'], '.2f')} | {fmt(r['p50_ms'], '.3f')} | {fmt(r['p99_ms'], '.3f')} | "
                    f"{fmt(r['p99_ms_x'], '.2f')} | {fmt(r['server_cpu'], '.0f')}%{noise_mark(r)} | "
                    f"{fmt(r['cpu_us'], '.1f')} | {fmt(r['cpu_us_x'], '.2f')} | {fmt(r['load_cpu'], '.0f')}% | "
                    f"{fmt(r['load_core'], '.0f')}%{' ‡' if load_bound(r) else ''} |"
                )
            if any(load_bound(r) for r in scenario_rows):
                add("")
                add(
                    f"‡ the load generator used ≥ {LOAD_BOUND:.0f}% of its core, or that core (CPU 1, shared "
                    "with nginx, PostgreSQL or Redis in the cases that use them) was that busy: that server "
                    "may do more than shown, so ratios against it flatter the others; *CPU µs per request* "
                    "still compares."
                )
            if scenario == "ws-echo":
                add("")
                add(
                    "`wsload echo` (the suite's WebSocket client, `bench/native/src/bin/wsload.rs`, on "
                    "tokio-tungstenite): each socket sends a text message, awaits its echo and sends the "
                    "next, for the measurement's duration; *messages/s* is round trips per second over all "
                    "sockets, the latencies are those of each round trip. Berth serves the `ws-echo` app "
                    "at `/ws-echo`; *native hyper* is `native-ws-echo`; *uvicorn* is `bench/peers/"
                    "uvicorn_ws.py` on uvicorn's `websockets-sansio` protocol (the `websockets` library)."
                )
        errors = [f"{r['server']} {r['case']}: {e}" for r in scenario_rows for e in r["errors"]]
        if errors:
            add("")
            add("Errors:")
            add("")
            for e in errors:
                add(f"* {e.splitlines()[0][:300]}")
        add("")
    if "boundary" in doc["cases"]:
        boundary_section(doc, boundary, add)
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
    if doc["baseline"]:
        add(
            f"* **Berth at `{doc['baseline']['short']}` + app** (`{doc['baseline']['key']}`): "
            f"`berth` and the sample apps built in release mode at `{doc['baseline']['commit']}` in a "
            "temporary git worktree, run like *Berth + app* (see its section above)."
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
    if any(case in doc["cases"] for case in ("workers-hello", "worker-respawn")):
        add(
            "* **Berth --workers 2** (workers-hello, worker-respawn): a supervisor that binds the "
            "listener and the admin listener, and two worker processes that each load every app and "
            "serve the shared listener, each on one runtime thread (the default with `--workers`); "
            "**Berth --threads 2** (workers-hello): one process, two runtime threads. Both pinned to "
            "CPUs 0 and 1, with their admin listener on loopback; their CPU counts the supervisor's "
            "and its workers'. worker-respawn serves `hello` and the `faults` test fixture "
            "(tests/fixtures/faults) instead of the hello case's apps."
        )
    if any(case in doc["cases"] for case in ("db", "redis")):
        add(
            "* **db and redis**: *Berth + app* is Berth serving the `todo` (db) or `counter` (redis) app "
            "alone, with a `berth.toml` (`--config`) that allows it its database and gives it its "
            "settings (`database_url` and `pool_size = 16`, or `redis_url`). `native-db` runs the "
            "`todo` app's query (`SELECT id, title, done FROM todo_items WHERE id = $1`, prepared once "
            "per connection) with tokio-postgres behind deadpool-postgres, 16 connections; "
            "`native-redis` runs `GET counter:{key}` on one redis-rs `MultiplexedConnection`. Every "
            "request asks for the same row (`/todo/items/42`) or key (`/counter/hits`). PostgreSQL "
            "(`initdb` and `pg_ctl` into the suite's temporary directory, trust authentication, "
            "`fsync=off`, 500 rows) and Redis (`--save '' --appendonly no`) are the suite's own, "
            "pinned to CPU 1 with wrk: *load core* is how busy that core was."
        )
    add("")
    add("## Machine")
    add("")
    add("| | |")
    add("| --- | --- |")
    for key, value in doc["machine"].items():
        add(f"| {key} | {value} |")
    add("")
    add("## Commands")
    add("")
    add(
        "Every distinct command the suite ran, in order, beginning with those `bench/setup.py` made "
        "the peers' virtualenv with (`$TMP` is the suite's temporary directory with the apps and "
        "the files of nginx, PostgreSQL and Redis; the ports were picked free at start):"
    )
    add("")
    add("```sh")
    for command in doc["commands"]:
        add(command)
    add("```")
    add("")
    add("<details><summary>Every measurement</summary>")
    add("")
    add(
        "| run | scenario | case | server | requests/s | p50 ms | p99 ms | server CPU | other load on CPU 0 | errors |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    # worker-respawn's rounds have their own table in its section.
    for r in (r for r in measurements if r["scenario"] != "worker-respawn"):
        add(
            f"| {r['run']} | {r['scenario']} | {r['case']} | {r['server']} | {fmt(r.get('rps'), ',.0f')} | "
            f"{fmt(r.get('p50_ms'), '.3f')} | {fmt(r.get('p99_ms'), '.3f')} | {fmt(r.get('server_cpu'), '.0f')}% | "
            f"{fmt(r.get('interference'), '.0f')}% | {len(r.get('errors', []))} |"
        )
    add("")
    add("</details>")
    add("")
    out.write_text("\n".join(lines))


def workers_section(doc, scenario_rows, add):
    """workers-hello: both modes' medians, each run's pair, and the commands."""
    add(
        "| case | server | requests/s | × one process | p50 ms | p99 ms | p99 × one process | server CPU | "
        "CPU µs per request | × one process | busier worker's share | load CPU |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in scenario_rows:
        share = f"{r['busiest_share'] * 100:.0f}%" if r["busiest_share"] is not None else "–"
        add(
            f"| {r['case']} | {label(r['server'])} | {fmt(r['rps'], ',.0f')} | {fmt(r['rps_x'], '.2f')}"
            f"{runs_note(r, 'rps') if r['server'] == 'berth-workers' else ''} | {fmt(r['p50_ms'], '.3f')} | "
            f"{fmt(r['p99_ms'], '.3f')} | {fmt(r['p99_ms_x'], '.2f')} | "
            f"{fmt(r['server_cpu'], '.0f')}%{noise_mark(r)} | "
            f"{fmt(r['cpu_us'], '.1f')} | {fmt(r['cpu_us_x'], '.2f')} | {share} | "
            f"{fmt(r['load_cpu'], '.0f')}%{' ‡' if (r['load_cpu'] or 0) >= LOAD_BOUND else ''} |"
        )
    add("")
    settings = doc.get("workers") or {}
    cpus = settings.get("cpus", "0,1")
    load_cpu = settings.get("load_cpu", "1")
    shared = load_cpu in cpus.split(",")
    add(
        f"Both modes serve the hello case's apps directory on CPUs {cpus} (`taskset -c {cpus}`): "
        f"`berth --workers 2` (a supervisor and two workers, one runtime thread each, sharing one "
        f"listener) and `berth --threads 2` (one process, two runtime threads). wrk runs as in the hello "
        f"case (one thread, HTTP/1.1 keep-alive, {doc['duration_s']} s after a warm-up), pinned to CPU "
        f"{load_cpu}"
        + (
            ", one of the server's two: on this machine the load generator takes part of a core from "
            "either mode alike, so the figures are not comparable with the hello section's (server "
            "alone on one core), only with each other"
            if shared
            else ", a core of its own"
        )
        + ". In each run the two are measured back to back, alone, in an order that alternates between "
        "runs; *× one process* is the median over the runs of `--workers 2`'s figure over `--threads 2`'s "
        "in the same run (the runs' lowest and highest in brackets). *server CPU* counts the supervisor "
        "and its workers together. *busier worker's share* is the share of the requests the busier "
        "worker served (from the supervisor's `GET /workers` before and after): the kernel hands each "
        "new connection to whichever worker accepts first, and wrk opens its connections once, so an "
        f"uneven split lasts the whole measurement. † marks a figure during which other processes took "
        f"more than {INTERFERENCE_FLAG:.0f}% of a core on CPUs {cpus}"
        + (" (wrk's own CPU not counted)" if shared else "")
        + f"; ‡, wrk using ≥ {LOAD_BOUND:.0f}% of its CPU (the load generator may have set the pace)."
    )
    add("")
    measurements = [m for m in doc["measurements"] if m["scenario"] == "workers-hello"]
    runs = sorted({m["run"] for m in measurements})
    add("| run | case | measured first | --workers 2 requests/s | --threads 2 requests/s | ratio | "
        "--workers 2 p99 ms | --threads 2 p99 ms | requests per worker |")
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in runs:
        for case in dict.fromkeys(m["case"] for m in measurements if m["run"] == run):
            pair = [m for m in measurements if m["run"] == run and m["case"] == case]
            workers = next((m for m in pair if m["server"] == "berth-workers"), {})
            single = next((m for m in pair if m["server"] == "berth-threads"), {})
            ratio = workers["rps"] / single["rps"] if workers.get("rps") and single.get("rps") else None
            split = " / ".join(f"{n:,}" for n in workers.get("worker_requests") or []) or "–"
            add(
                f"| {run} | {case} | {label(pair[0]['server'])} | {fmt(workers.get('rps'), ',.0f')} | "
                f"{fmt(single.get('rps'), ',.0f')} | {fmt(ratio, '.2f')} | {fmt(workers.get('p99_ms'), '.3f')} | "
                f"{fmt(single.get('p99_ms'), '.3f')} | {split} |"
            )
    add("")
    add("Commands (the ports were picked free at start):")
    add("")
    add("```sh")
    for line in dict.fromkeys(
        line for m in measurements if m["run"] == runs[0] for line in (m.get("server_cmd"), m.get("load_cmd")) if line
    ):
        add(line)
    add("```")


def respawn_section(doc, scenario_rows, add):
    """worker-respawn: medians and spread over every round, each round, the procedure and command."""
    settings = doc.get("workers") or {}
    rounds = [m for m in doc["measurements"] if m["scenario"] == "worker-respawn"]
    add("| time | median ms | fastest ms | slowest ms | rounds with a figure |")
    add("| --- | --- | --- | --- | --- |")
    for r in scenario_rows:
        for field, what in (
            ("ready_ms", "from the SIGKILL until `GET /workers` lists the slot with a new pid, `ready`"),
            (
                "serve_ms",
                "**from the SIGKILL until a request is answered by the new worker** (`/faults/pid`, "
                "fresh connections)",
            ),
        ):
            low_high = r[f"{field}_range"] or (None, None)
            got = sum(1 for m in rounds if m.get(field) is not None)
            add(
                f"| {what} | {fmt(r[field], '.1f')} | {fmt(low_high[0], '.1f')} | {fmt(low_high[1], '.1f')} | "
                f"{got} of {len(rounds)} |"
            )
        low_high = r["start_ms_range"] or (None, None)
        got = sum(1 for m in rounds if m.get("start_ms") is not None)
        add(
            f"| the supervisor's own: from its spawn of the new worker until it is ready (its log line, "
            f"in 10 ms steps) | {fmt(r['start_ms'], '.0f')} | {fmt(low_high[0], '.0f')} | {fmt(low_high[1], '.0f')} | "
            f"{got} of {len(rounds)} |"
        )
    add("")
    if doc["runs"] > 1:
        per_run = []
        for run in sorted({m["run"] for m in rounds}):
            served = [m["serve_ms"] for m in rounds if m["run"] == run and m.get("serve_ms") is not None]
            per_run.append(f"run {run}: {fmt(median(served), '.1f')} ms ({len(served)} rounds)")
        add("Median time until the new worker answered, per run: " + "; ".join(per_run) + ".")
        add("")
    poll = settings.get("respawn_poll_ms", 5)
    add(
        f"`berth --workers 2` with `hello` and the `faults` test fixture, on CPUs {settings.get('cpus', '0,1')}. "
        f"Each round reads the workers' pids from `GET /workers` on the admin listener, sends SIGKILL to "
        f"one worker (slot 0, then slot 1), and from that instant polls, every {poll:g} ms from a thread "
        f"pinned to CPU {settings.get('load_cpu', '1')}: `GET /workers`, until it lists that slot with a pid "
        "it did not list before in state `ready`; and `GET /faults/pid` (the pid of the process that "
        "answers) on a fresh connection each time, until a pid not listed before answers, which must be "
        "the one `/workers` lists. The kernel hands each new connection to whichever worker accepts "
        "first, so the second time includes the wait until the new worker wins an accept from the one "
        "that stayed up. The two are polled independently, and the answer can come a few ms before the "
        "listing: `/workers` shows a worker ready once the supervisor has its message, and the next poll "
        f"sees it. Each round is bounded ({settings.get('respawn_timeout_s', 10):g} s, "
        f"{settings.get('respawn_max_polls', 2000):,} polls and requests); a request that fails, or a "
        "round without both times, is an error. Every two rounds the server is a fresh one, so that each "
        "slot dies once per server process: the supervisor replaces a slot's first deaths at once but "
        "waits before the third within a minute (its crash-loop backoff), which is not what this measures. "
        f"The rounds run {settings.get('respawn_pause_s', 0.5):g} s apart"
        + (", each after the machine has quieted down (as every other measurement)." if not doc["smoke"] else ".")
    )
    add("")
    add("<details><summary>Every round</summary>")
    add("")
    add("| run | round | slot | old pid | new pid | ready ms | answered ms | supervisor ms | /workers polls | "
        "requests | errors |")
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for m in rounds:
        errors = "; ".join(e.splitlines()[0] for e in m.get("errors", []))[:300].replace("|", "/")
        add(
            f"| {m['run']} | {m.get('round', '–')} | {m.get('slot', '–')} | {m.get('old_pid', '–')} | "
            f"{m.get('new_pid') or '–'} | {fmt(m.get('ready_ms'), '.1f')} | {fmt(m.get('serve_ms'), '.1f')} | "
            f"{fmt(m.get('start_ms'), '.0f')} | {m.get('admin_polls', '–')} | {m.get('requests', '–')} | "
            f"{errors or '–'} |"
        )
    add("")
    add("</details>")
    add("")
    add("Command (the ports were picked free at start):")
    add("")
    add("```sh")
    for line in dict.fromkeys(m.get("server_cmd") for m in rounds if m.get("server_cmd")):
        add(line)
    add("```")


def baseline_section(doc, rows, add):
    """The --baseline revision's Berth against the current one, case by case."""
    baseline = doc["baseline"]
    add(f"## Baseline: Berth at `{baseline['short']}` against the current Berth")
    add("")
    add(
        f"`{baseline['key']}` is Berth built at `{baseline['commit']}` (`--baseline {baseline['rev']}`), "
        "release mode, with the sample apps built at that revision in its apps directory and the same "
        "settings as *Berth + app*. It is measured as one more server in every hello, fetch and fan-out "
        "case, next to the current Berth: alone, back to back, in the same alternating order. Each "
        "*× Berth* is the median, over the runs, of its figure over the current Berth's in the same "
        "run (the runs' lowest and highest in brackets): above 1 for requests/s means the baseline "
        "answered more; above 1 for CPU per request, p99 or peak RSS means it spent more."
    )
    add("")
    add(
        "| case | Berth requests/s | baseline requests/s | × Berth | CPU per request × Berth | "
        "p99 × Berth | peak RSS × Berth | baseline × native | Berth × native |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for (scenario, case, server), row in rows.items():
        if server != baseline["key"]:
            continue
        berth = rows.get((scenario, case, "berth")) or {}

        def ratio(field):
            low_high = row.get(f"{field}_xb_range")
            text = fmt(row.get(f"{field}_xb"), ".2f")
            if low_high and row["runs"] > 1:
                text += f" ({low_high[0]:.2f}–{low_high[1]:.2f})"
            return text

        add(
            f"| {scenario}: {case} | {fmt(berth.get('rps'), ',.0f')} | {fmt(row['rps'], ',.0f')} | "
            f"{ratio('rps')} | {ratio('cpu_us')} | {ratio('p99_ms')} | {ratio('peak_rss_mib')} | "
            f"{fmt(row['rps_x'], '.2f')} | {fmt(berth.get('rps_x'), '.2f')} |"
        )
    add("")


def boundary_section(doc, boundary, add):
    """The boundary benchmark's figures: each run's, their medians, and how they were taken."""
    add("## boundary: one request through the C ABI vs. the same handler called directly")
    add("")
    if doc["boundary_runs"]:
        add("| run | direct ns | through the ABI ns | difference ns |")
        add("| --- | --- | --- | --- |")
        for r in doc["boundary_runs"]:
            add(f"| {r['run']} | {r['direct_ns']:.1f} | {r['abi_ns']:.1f} | {r['diff_ns']:.1f} |")
        if len(doc["boundary_runs"]) > 1:
            add(
                f"| median | {boundary['direct_ns']:.1f} | {boundary['abi_ns']:.1f} | "
                f"**{boundary['diff_ns']:.1f}** |"
            )
        add("")
    else:
        add("**No figure:** the benchmark printed no result (errors below).")
        add("")
    quick = " With `--quick` (smoke mode) criterion samples only briefly: rougher figures." * doc["smoke"]
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
    add(shlex.join(doc["boundary_cmd"]))
    add("```")
    add("")
    if doc["boundary_errors"]:
        add("Errors:")
        add("")
        for e in doc["boundary_errors"]:
            add(f"* {e[:400]}")
        add("")


def broadcast_table(doc, scenario_rows, add):
    """ws-broadcast: delivery times and memory per idle socket, each against native."""
    add(
        "| case | server | got | connect s | p50 ms | × native | p99 ms | × native | max ms | "
        "RSS before MiB | RSS with sockets MiB | KiB per socket | × native | server CPU |"
    )
    add("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in scenario_rows:
        add(
            f"| {r['case']} | {label(r['server'])} | {fmt(r['received'], ',.0f')}/{fmt(r['n'], ',.0f')} | "
            f"{fmt(r['connect_s'], '.2f')} | {fmt(r['p50_ms'], '.1f')} | {fmt(r['p50_ms_x'], '.2f')} | "
            f"{fmt(r['p99_ms'], '.1f')} | {fmt(r['p99_ms_x'], '.2f')} | {fmt(r['max_ms'], '.1f')} | "
            f"{fmt(r['rss_before_mib'], '.1f')} | {fmt(r['rss_idle_mib'], '.1f')} | "
            f"{fmt(r['kib_per_socket'], '.1f')} | {fmt(r['kib_per_socket_x'], '.2f')} | "
            f"{fmt(r['server_cpu'], '.0f')}%{noise_mark(r)} |"
        )
    add("")
    add(
        f"`wsload broadcast` opens the sockets on `/chat/ws` ({doc.get('ws_sockets') or '?'} of them, at most "
        "256 handshakes at a time; *connect* is how long that took), lets them sit idle, reads the "
        "server's RSS, then publishes one 64-byte text message with `POST /chat/publish` (or, where "
        "a server lacks that endpoint, as a text message on one more socket) and times its arrival "
        "on every socket, from just before the publish; the client reads all sockets on one core, so "
        "the times include its own pace, alike for both servers. *KiB per socket* is (RSS with the "
        "sockets open − RSS before) / sockets, on a fresh server process each run. Berth serves the "
        "`chat` app alone with `--max-connections 20000`; *native hyper* is `native-ws-chat` (one "
        "`tokio::sync::broadcast` channel, each socket's receiver its bounded queue). Both read each "
        f"socket through a {doc.get('ws_read_buffer', '?')}-byte buffer (native: `WS_READ_BUFFER`)."
    )


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
            for baseline in (r for k, r in rows.items() if k[:2] == ("hello", berth["case"])):
                if is_baseline(baseline["server"]) and baseline["rps_xb"] is not None:
                    lines.append(
                        f"hello, {berth['case']}: Berth at `{baseline['server'].removeprefix('berth@')}` "
                        f"(the baseline) does {baseline['rps_xb']:.2f}× the current Berth's requests/s"
                        f"{runs_note(baseline, 'rps', 'xb')} at {fmt(baseline['cpu_us_xb'], '.2f')}× its CPU "
                        f"per request ({fmt(baseline['rps_x'], '.2f')}× native's requests/s)."
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
    for scenario in ("db", "redis"):
        data = get(scenario, "HTTP/1.1", "berth")
        if data and data["rps_x"] is not None:
            lines.append(
                f"{scenario}: Berth does {data['rps_x']:.2f}× native's requests/s at "
                f"{fmt(data['cpu_us_x'], '.2f')}× its CPU per request ({fmt(data['cpu_us'], '.1f')} µs)"
                + (", with the load core saturated" if load_bound(data) else "")
                + "."
            )
    fan = get("fan-out", "", "berth")
    if fan and fan["wall_s_x"] is not None:
        lines.append(
            f"fan-out: {fmt(fan['ok'], ',.0f')}/{fmt(fan['n'], ',.0f')} answered in {fan['wall_s']:.2f} s "
            f"({fan['wall_s_x']:.2f}× native's wall time), at {fmt(fan['peak_rss_mib'], '.0f')} MiB peak RSS "
            f"({fmt(fan['peak_rss_mib_x'], '.2f')}× native's)."
        )
    echo = get("ws-echo", "", "berth")
    if echo and echo["rps_x"] is not None:
        lines.append(
            f"ws-echo: Berth does {echo['rps_x']:.2f}× native's messages/s at {fmt(echo['cpu_us_x'], '.2f')}× "
            f"its CPU per message, p99 {fmt(echo['p99_ms_x'], '.2f')}× native's, and "
            f"{fmt(echo['vs_uvicorn'], '.1f')}× uvicorn's messages/s."
        )
    broadcast = get("ws-broadcast", "", "berth")
    if broadcast and broadcast["p99_ms_x"] is not None:
        lines.append(
            f"ws-broadcast: {fmt(broadcast['received'], ',.0f')}/{fmt(broadcast['n'], ',.0f')} sockets got the "
            f"message, p50 {fmt(broadcast['p50_ms'], '.1f')} ms ({fmt(broadcast['p50_ms_x'], '.2f')}× native's), "
            f"p99 {fmt(broadcast['p99_ms'], '.1f')} ms ({broadcast['p99_ms_x']:.2f}× native's), at "
            f"{fmt(broadcast['kib_per_socket'], '.1f')} KiB per idle socket "
            f"({fmt(broadcast['kib_per_socket_x'], '.2f')}× native's)."
        )
    for r in (r for k, r in rows.items() if k[0] == "workers-hello" and k[2] == "berth-workers"):
        single = rows.get(("workers-hello", r["case"], "berth-threads"))
        if r["rps_x"] is None or not single:
            continue
        share = r["busiest_share"]
        share = f"; the busier worker served {share * 100:.0f}% of the requests" if share else ""
        lines.append(
            f"workers-hello, {r['case']}: `--workers 2` does {r['rps_x']:.2f}× one process's requests/s "
            f"(`--threads 2`; {r['rps']:,.0f} vs. {single['rps']:,.0f}{spread(r, 'rps')}) "
            f"at {fmt(r['cpu_us_x'], '.2f')}× its CPU per request, p99 {fmt(r['p99_ms'], '.2f')} against "
            f"{fmt(single['p99_ms'], '.2f')} ms{share}."
        )
    respawn = get("worker-respawn", "", "berth-workers")
    if respawn and respawn["serve_ms"] is not None:
        lines.append(
            f"worker-respawn: after a SIGKILL, the replacement worker answered a request a median "
            f"{respawn['serve_ms']:.0f} ms later (slowest {respawn['serve_ms_range'][1]:.0f} ms, "
            f"{respawn['runs']} rounds); `/workers` listed it ready after a median "
            f"{fmt(respawn['ready_ms'], '.0f')} ms."
        )
    if boundary:
        lines.append(
            f"boundary: a request through the C ABI takes {boundary['diff_ns']:.0f} ns more than the "
            f"same handler called directly ({boundary['abi_ns']:.0f} vs. {boundary['direct_ns']:.0f} ns)."
        )
    return lines


def load_bound(row):
    """Whether the load side may have limited a row's figure: wrk, or its whole core."""
    return max(row["load_cpu"] or 0, row.get("load_core") or 0) >= LOAD_BOUND


def noise_mark(row):
    if row["interference_max"] > INTERFERENCE_FLAG:
        return f" †{row['interference_max']:.0f}%"
    return ""


# --------------------------------------------------------------------------------------------
# The chart: small multiples, one row per case, requests/s on the left and p99 on the right.


def write_svg(rows, path, title):
    cases = []
    for r in rows.values():
        # worker-respawn has neither requests/s nor latencies: its section has its times.
        if (r["scenario"], r["case"]) not in cases and r["scenario"] != "worker-respawn":
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
                name, fill = label(r["server"]), colour(r["server"])
                by = top + head + i * (bar_h + gap) - 8
                if column == 0:
                    svg.append(
                        f'<text x="{label_w - 6}" y="{by + bar_h - 4}" text-anchor="end">{escape(name)}</text>'
                    )
                value = r[field]
                if value is None:
                    continue
                w = max(1.0, (panel_w - 70) * value / peak)
                svg.append(f'<rect x="{x0}" y="{by}" width="{w:.1f}" height="{bar_h}" fill="{fill}"/>')
                ratio = r["rps_x" if field == "rps" else "p99_ms_x"]
                reference = REFERENCE.get(scenario, "native")
                note = f" ({ratio:.2f}×)" if ratio is not None and r["server"] != reference else ""
                svg.append(
                    f'<text x="{x0 + w + 4:.1f}" y="{by + bar_h - 4}">{format(value, spec)}{note}</text>'
                )
    svg.append("</svg>")
    path.write_text("\n".join(svg) + "\n")


def escape(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------------------------


def default_paths(doc, results):
    """Where a results file's report and chart go unless --out and --svg say otherwise: the
    published BENCHMARKS.md and bench/results.svg for a full run, beside the results file for any
    other."""
    if published(doc):
        return ROOT / "BENCHMARKS.md", BENCH / "results.svg"
    return results.with_suffix(".md"), results.with_suffix(".svg")


def every_case(doc):
    """Whether a run measured every case: today's, or every one there was before the worker cases."""
    return doc["cases"] in (list(CASES), list(CASES_BEFORE_WORKERS))


def published(doc):
    """Whether the results are a full run's, the kind BENCHMARKS.md publishes."""
    return not doc["smoke"] and every_case(doc) and not doc["baseline"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results",
        nargs="?",
        type=Path,
        default=RESULTS,
        help="a results file written by bench/run.py (default bench/results.json)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="the report (default BENCHMARKS.md for a full run, else beside the results file)",
    )
    parser.add_argument(
        "--svg",
        type=Path,
        help="the chart (default bench/results.svg beside BENCHMARKS.md, else beside the report)",
    )
    args = parser.parse_args()
    try:
        doc = json.loads(args.results.read_text())
    except (OSError, ValueError) as err:
        log(f"error: cannot read {args.results}: {err}")
        return 2
    if doc.get("format") != RESULTS_FORMAT:
        log(f"error: {args.results} is not a results file of format {RESULTS_FORMAT}")
        return 2
    results = args.results.resolve()
    out, svg = default_paths(doc, results)
    if args.out:
        out = args.out.resolve()
        svg = BENCH / "results.svg" if out == ROOT / "BENCHMARKS.md" else out.with_suffix(".svg")
    if args.svg:
        svg = args.svg.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    svg.parent.mkdir(parents=True, exist_ok=True)

    rows = aggregate(doc["measurements"])
    checks = targets(rows, doc["fanout_n"], boundary_median(doc["boundary_runs"]), doc["boundary_errors"])
    if "boundary" not in doc["cases"]:
        checks = [check for check in checks if not check[0].startswith("boundary")]
    title = (
        f"Berth benchmarks ({'smoke, ' if doc['smoke'] else ''}median of {doc['runs']} run(s), "
        f"server on 1 core{'; workers-hello on 2' if 'workers-hello' in doc['cases'] else ''})"
    )
    write_svg(rows, svg, title)
    write_report(doc, rows, checks, out, svg)
    log("")
    for name, measured, met in checks:
        log(f"{'n/a   ' if met is None else 'met   ' if met else 'MISSED'}  {name}: {measured}")
    for row in rows.values():
        if is_baseline(row["server"]) and row["rps_xb"] is not None:
            cpu = f", at {row['cpu_us_xb']:.2f}× its CPU per request" if row["cpu_us_xb"] is not None else ""
            log(
                f"baseline  {row['scenario']} {row['case']}: {row['server']} does {row['rps_xb']:.2f}× "
                f"Berth's requests/s{runs_note(row, 'rps', 'xb')}{cpu}"
            )
    errors = [r for r in doc["measurements"] if r.get("errors")]
    if errors or doc["boundary_errors"]:
        log(f"note: {len(errors) + len(doc['boundary_errors'])} measurement(s) saw errors (see the report)")
    log(f"report: {out}\nchart:  {svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
