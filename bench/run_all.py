"""Every benchmark, one after the other, each in a process of its own (as `make bench`
and `make bench-quick` run them); each prints its table and writes its JSON, and a
summary of what ran, for how long and whether it succeeded closes the run.

    .venv/bin/python -m bench.run_all [--quick] [--database-url URL] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from typing import Any

from bench.common import parse_args, print_table
from bench.processes import ROOT

BENCHMARKS = (
    "queue_overhead",
    "pickup_latency",
    "growth",
    "accept_path",
    "generation_throughput",
    "scale_out",
    "crash_recovery",
    "flood",
    "cancellation",
    "provider_limit",
    "queue_position",
    "monitor_snapshot",
)


def _extra(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only", nargs="+", choices=BENCHMARKS, metavar="NAME", help="run just these"
    )


def main() -> None:
    args = parse_args("Run every benchmark in sequence.", _extra)
    names = [name for name in BENCHMARKS if not args.only or name in args.only]
    options = ["--quick"] if args.quick else []
    if args.database_url:
        options += ["--database-url", args.database_url]
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for name in names:
        print(f"\n=== bench.{name} {' '.join(options)}".rstrip(), flush=True)
        began = time.monotonic()
        command = [sys.executable, "-m", f"bench.{name}", *options]
        code = subprocess.run(command, check=False, cwd=ROOT)
        rows.append(
            {
                "benchmark": name,
                "seconds": time.monotonic() - began,
                "result": "ok" if code.returncode == 0 else f"FAILED (exit {code.returncode})",
            }
        )
    rows.append({"benchmark": "total", "seconds": time.monotonic() - started, "result": ""})
    print_table("benchmarks run" + (" (quick)" if args.quick else ""), rows)
    if any(row["result"].startswith("FAILED") for row in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
