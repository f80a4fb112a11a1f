#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: a repeatable figure on noisy machines.

Wall-clock benchmarks on these shared 2-core machines swing by ±20% from one minute to the next;
the instructions a server executes per request do not (callgrind counts them, whatever else the
machine is doing). This is the loop used to decide what to optimize; `bench/run.py` stays the
source of the published figures.

    cargo build --release -p berth-server -p hello -p fetch -p gather -p berth-bench
    python3 bench/instructions.py                       # Berth + hello and native-hello, HTTP/1.1
    python3 bench/instructions.py --h2 --top 30         # HTTP/2 (16 streams), the 30 costliest functions
    python3 bench/instructions.py --fetch http://127.0.0.1:8000/small.txt   # fetch, against an upstream you run
    python3 bench/instructions.py --cache               # and the simulated L1 misses per request
    python3 bench/instructions.py --abi                 # and native-abi: the plugin boundary alone

Each server runs under `valgrind --tool=callgrind`; after a warm-up of 500 requests its counters
are zeroed, `h2load` sends `--n` requests over 8 connections, and the counters are dumped. Only
the server's user-space instructions are counted (not the kernel's), in all and by binary (the
server's own, the app plugin, the C library: allocation and copies). Needs valgrind and h2load
(Debian: valgrind, nghttp2-client).

With `--abi`, it also counts `native-abi`: native-hello's server answering through the `hello`
plugin via Berth's boundary code (`berth_server::embed`) and nothing else of Berth, which
splits Berth's extra cost into the boundary's and the rest of the server's.

With `--cache`, the L1 misses count the distinct cache lines of code a request runs (a 32 KiB
instruction cache holds 512): the server's code footprint per request, which the instruction
count alone does not show.
"""

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from common import ROOT, free_port

RELEASE = ROOT / "target" / "release"


def event_costs(path, events, by="fn"):
    """Each of `events` per function (exclusive; `by="ob"`: per binary, the server's or a
    shared library), from a callgrind output file written with uncompressed names: cost lines
    under `fn=`, minus the lines that give a call's cost. The columns are found by the file's
    `events:` line."""
    costs = {event: collections.Counter() for event in events}
    columns, fn, ob, call_cost_next = [], None, None, False
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
            columns = [(event, 1 + names.index(event)) for event in events]
        elif line.startswith("ob="):
            ob = Path(line[3:]).name
            fn = ob if by == "ob" else fn
        elif line.startswith("fn="):
            fn = line[3:] if by == "fn" else ob
        elif line.startswith("calls="):
            call_cost_next = True
        elif line[:1] in set("0123456789+-*"):
            parts = line.split()
            if not call_cost_next:
                for event, column in columns:
                    if column < len(parts):
                        costs[event][fn] += int(parts[column])
            call_cost_next = False
    return costs


def self_costs(path):
    """Instructions per function (exclusive); see `event_costs`."""
    return event_costs(path, ["Ir"])["Ir"]


def measure(name, argv, path, n, h2, top, keep, cache=False):
    out = Path(tempfile.mkdtemp(prefix="berth-callgrind-")) / "callgrind.out"
    port = free_port()
    cmd = ["valgrind", "--tool=callgrind", "--compress-strings=no", "--compress-pos=no",
           *(["--cache-sim=yes"] if cache else []),
           f"--callgrind-out-file={out}", *[a.replace("PORT", str(port)) for a in argv]]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}{path}"
    try:
        for _ in range(150):
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        else:
            sys.exit(f"{name} did not answer {url}")
        load = ["h2load", "-c", "8", *(["-m", "16"] if h2 else ["--h1"])]
        subprocess.run([*load, "-n", "500", url], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-z", str(server.pid)], capture_output=True, check=True)
        done = subprocess.run([*load, "-n", str(n), url], capture_output=True, text=True, check=True)
        subprocess.run(["callgrind_control", "-d", str(server.pid)], capture_output=True, check=True)
        time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
    if f"{n} succeeded" not in done.stdout:
        sys.exit(f"{name}: not every request succeeded:\n{done.stdout[-800:]}")
    dump = min(out.parent.glob("callgrind.out.*"), key=lambda p: p.name)
    misses = ["I1mr", "D1mr", "D1mw"] if cache else []
    by_event = event_costs(dump, ["Ir", *misses])
    costs = by_event["Ir"]
    total = sum(costs.values())
    print(f"{name}: {total / n:,.0f} instructions per request ({n:,} requests, {'HTTP/2' if h2 else 'HTTP/1.1'})")
    if cache:
        code, read, written = (sum(by_event[event].values()) for event in misses)
        print(f"  simulated L1 misses per request: {code / n:,.0f} instruction, {(read + written) / n:,.0f} data")
    # Which binary runs how much: the server's own, the app plugin, the C library.
    by_binary = event_costs(dump, ["Ir", *misses[:1]], by="ob")
    for binary, cost in by_binary["Ir"].most_common(4):
        code = f", {by_binary['I1mr'][binary] / n:,.0f} instruction misses" if cache else ""
        print(f"    in {binary}: {cost / n:,.0f} instructions{code}")
    for fn, cost in costs.most_common(top):
        print(f"  {cost / n:8,.0f}  {fn[:140]}")
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(dump, keep / f"callgrind.{name.lower()}.out")
    shutil.rmtree(out.parent, ignore_errors=True)
    return total / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4000, help="requests to count (default 4000)")
    parser.add_argument("--h2", action="store_true", help="HTTP/2 with 16 streams per connection")
    parser.add_argument("--top", type=int, default=0, help="list this many costliest functions")
    parser.add_argument("--fetch", metavar="URL", help="measure the fetch app against this upstream")
    parser.add_argument("--cache", action="store_true",
                        help="also simulate the L1 caches: missed lines of code and data per request")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="keep the callgrind dumps in DIR (for callgrind_annotate)")
    parser.add_argument("--abi", action="store_true",
                        help="also native-abi: native's server calling the hello plugin through the ABI")
    args = parser.parse_args()
    if args.abi and args.fetch:
        sys.exit("--abi measures the hello app; leave out --fetch")
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (Debian: apt-get install valgrind nghttp2-client)")

    apps = Path(tempfile.mkdtemp(prefix="berth-callgrind-apps-"))
    for app in ("hello", "fetch"):
        shutil.copy(RELEASE / f"lib{app}.so", apps / f"{app}.so")
    berth = [str(RELEASE / "berth"), "--apps-dir", str(apps), "--listen", "127.0.0.1:PORT",
             "--admin-listen", "off", "--allow-outbound", "http://127.0.0.1:*"]
    if args.fetch:
        path = "/fetch?url=" + urllib.parse.quote(args.fetch, safe="")
        native = [str(RELEASE / "native-fetch"), "--listen", "127.0.0.1:PORT"]
    else:
        path = "/hello"
        native = [str(RELEASE / "native-hello"), "--listen", "127.0.0.1:PORT"]
    ours = measure("Berth", berth, path, args.n, args.h2, args.top, args.keep, args.cache)
    theirs = measure("native", native, path, args.n, args.h2, args.top, args.keep, args.cache)
    print(f"Berth / native: {ours / theirs:.2f}×")
    if args.abi:
        crossing = [str(RELEASE / "native-abi"), "--listen", "127.0.0.1:PORT",
                    "--app", str(RELEASE / "libhello.so")]
        floor = measure("native-abi", crossing, path, args.n, args.h2, args.top, args.keep, args.cache)
        print(f"native-abi / native: {floor / theirs:.2f}× (the boundary alone); "
              f"Berth / native-abi: {ours / floor:.2f}× (the rest of Berth)")
    shutil.rmtree(apps, ignore_errors=True)


if __name__ == "__main__":
    main()
