"""Idle round-trip latency through each tunnel: ``ping -c 200 -i 0.01`` (per-packet times, so
the table shows the median and the 90th percentile beside the mean), with the same targets and
namespaces as bench/throughput.py (raw veth, wireguard-go, OpenVPN, Tunseal in each mode).

Run on demand, as root, never in the test suite::

    python -m bench.latency [--only NAME[,NAME]] [--rounds N] [--count 200]
                            [--interval 0.01] [--strace DIR] [--json FILE]

``--strace DIR`` also records, for each Tunseal target, ``strace -f -tt -T`` of both helpers
during a second, shorter ping run (strace slows every system call: those numbers are only for
reading where the time between the system calls of one packet goes, never for the table).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._netns import Lab, sweep_stale
from bench.throughput import (
    TARGETS,
    Bench,
    Link,
    Target,
    Terminated,
    missing_tools,
    start,
    wait_reachable,
)

log = logging.getLogger("bench.latency")


_TIME_RE = re.compile(r"time=([\d.]+) ms")


def ping_times(b: Bench, addr: str, count: int, interval: str) -> list[float]:
    """Round-trip times in ms of ``count`` pings (lost ones left out)."""
    done = b.lab.run(b.topo.client, "ping", "-n", "-c", str(count), "-i", interval, "-W", "1",
                     addr, check=False, timeout=30 + count * float(interval) * 3)
    times = [float(x) for x in _TIME_RE.findall(done.stdout)]
    if not times:
        raise RuntimeError(f"ping {addr}: {(done.stdout + done.stderr).strip()[-500:]}")
    return times


def summary(times: list[float], sent: int) -> dict[str, float]:
    ordered = sorted(times)
    return {"min_ms": ordered[0], "median_ms": statistics.median(ordered),
            "avg_ms": statistics.fmean(ordered),
            "p90_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))],
            "max_ms": ordered[-1], "lost": sent - len(ordered)}


def strace_helpers(b: Bench, link: Link, out: Path, name: str, count: int,
                   interval: str) -> None:
    """``strace -f -tt -T`` both helpers during ``count`` pings; one file per side."""
    procs = []
    for side, pid in link.pids.items():
        path = out / f"{name}-{side}.strace"
        procs.append(subprocess.Popen(["strace", "-f", "-tt", "-T", "-o", str(path), "-p",
                                       str(pid)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    try:
        time.sleep(1.0)  # attached to every thread
        ping_times(b, link.server_addr, count, interval)
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def measure(b: Bench, t: Target, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"name": t.name, "load_before": os.getloadavg()[0]}
    try:
        with start(b, t) as link:
            wait_reachable(b, link.server_addr)
            ping_times(b, link.server_addr, 20, args.interval)  # warm up: ARP, caches, GIL
            times = ping_times(b, link.server_addr, args.count, args.interval)
            result |= summary(times, args.count)
            if args.strace and t.kind == "tunseal":
                strace_helpers(b, link, Path(args.strace), t.name, 50, "0.05")
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    if leftovers := b.lab.clear_namespaces():
        log.warning("%s left processes behind (killed): %s", t.name, leftovers)
    result["load_after"] = os.getloadavg()[0]
    return result


def table(results: list[dict[str, Any]], targets: list[Target]) -> str:
    lines = ["| target | min | median | mean | p90 | max | lost | load |",
             "|---|---|---|---|---|---|---|---|"]
    for t in targets:
        ok = [r for r in results if r["name"] == t.name and "error" not in r]
        if not ok:
            lines.append(f"| {t.name} | failed | | | | | | |")
            continue

        def med(key: str, rows: list[dict[str, Any]] = ok) -> float:
            return float(statistics.median(r[key] for r in rows))
        lines.append(f"| {t.name} | {med('min_ms'):.3f} | {med('median_ms'):.3f} | "
                     f"{med('avg_ms'):.3f} | {med('p90_ms'):.3f} | {med('max_ms'):.3f} | "
                     f"{sum(r['lost'] for r in ok)} | {med('load_before'):.1f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split(
        "\n\n")[0])
    ap.add_argument("--only", metavar="NAME[,NAME]", default="raw-veth,wireguard-go,"
                    "tunseal-plain,tunseal-ephemeral",
                    help="targets (shell patterns; default %(default)s)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds over every target, in turn; "
                    "the table shows medians (default %(default)s)")
    ap.add_argument("--count", type=int, default=200, help="pings per target and round")
    ap.add_argument("--interval", default="0.01", help="ping -i (default %(default)s)")
    ap.add_argument("--router", action="store_true", help="a router namespace in between")
    ap.add_argument("--strace", metavar="DIR", help="also strace the helpers into DIR")
    ap.add_argument("--json", metavar="FILE", help="write every result as JSON to FILE")
    args = ap.parse_args(argv)
    patterns = [p.strip() for p in args.only.split(",") if p.strip()]
    args.targets = [t for t in TARGETS if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)]
    if not args.targets:
        ap.error(f"--only: no target matches; targets: {', '.join(t.name for t in TARGETS)}")
    if not 1 <= args.count <= 10_000 or not 1 <= args.rounds <= 20:
        ap.error("--count must be 1-10000, --rounds 1-20")
    return args


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        print("bench.latency: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    if missing := missing_tools(args.targets) + (
            ["strace"] if args.strace and shutil.which("strace") is None else []):
        print(f"bench.latency: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.strace:
        Path(args.strace).mkdir(parents=True, exist_ok=True)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    sweep_stale()
    results: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="tunseal-latency-"))
    try:
        with Lab() as lab:
            topo = lab.topology(router=args.router, mtu=1500)
            b = Bench(lab, topo, workdir, 1, (1,))
            for rnd in range(args.rounds):
                for t in args.targets:
                    r = measure(b, t, args) | {"round": rnd}
                    results.append(r)
                    shown = r.get("error") or (f"median {r['median_ms']:.3f} ms, mean "
                                                f"{r['avg_ms']:.3f} ms")
                    print(f"[{rnd + 1}/{args.rounds}] {t.name}: {shown}", file=sys.stderr,
                          flush=True)
    except (KeyboardInterrupt, Terminated):
        print("stopped; everything this run created has been removed", file=sys.stderr)
        return 130
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"ping -c {args.count} -i {args.interval}, {args.rounds} round(s), "
          f"load {os.getloadavg()[0]:.1f}, ms")
    print(table(results, args.targets))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
