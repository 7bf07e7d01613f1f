"""What every benchmark shares: arguments, a private durable cluster, the machine, output.

A benchmark is a script (`python -m bench.<name> [--quick]`) that starts what it needs,
prints a table, writes `bench/results/<name>.json` and stops everything. The cluster is
durable (fsync and synchronous_commit on, normal settings) so every system compared
pays the same price for a commit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from devstack.postgres import BIN_DIR, LocalPostgres, temporary_cluster
from worker.migrate import migrate

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TEMPLATE = "bench_template"


def parse_args(
    description: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: Sequence[str] | None = None,
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="run for a few seconds (a smoke test, not a figure)"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL"),
        help="use this server (its user must be able to CREATEDB) instead of starting one",
    )
    if extra:
        extra(parser)
    return parser.parse_args(argv)


@dataclass
class Cluster:
    """A PostgreSQL server the benchmark may create databases on."""

    base_url: str
    bin_dir: Path
    local: LocalPostgres | None = None
    _template_ready: bool = False

    def url(self, name: str) -> str:
        """A postgresql:// URL (every client here, asyncpg included, takes that form)."""
        info = conninfo_to_dict(self.base_url)
        user = quote(str(info.get("user") or "postgres"), safe="")
        if info.get("password"):
            user += ":" + quote(str(info["password"]), safe="")
        host = info.get("host") or "127.0.0.1"
        return f"postgresql://{user}@{host}:{info.get('port') or 5432}/{quote(name, safe='')}"

    def create_database(
        self, name: str, migrated: bool = True, *, template: str | None = None
    ) -> str:
        """A fresh database `name` (dropped first if it exists), migrated when asked; a copy
        of `template` when given (a file copy: much faster than migrating again)."""
        self.drop_database(name)
        sql = f'create database "{name}"'
        if template:
            sql += f' template "{template}" strategy file_copy'
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.encode())
        url = self.url(name)
        if migrated and not template:
            migrate(url)
        return url

    def migrated_database(self, name: str) -> str:
        """A fresh migrated database, copied from a template migrated once per cluster."""
        if not self._template_ready:
            self.create_database(TEMPLATE, migrated=True)
            self._template_ready = True
        return self.create_database(name, template=TEMPLATE)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)'.encode())

    def settings(self) -> dict[str, str]:
        """The settings that decide what a commit costs, as the server reports them."""
        names = ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")
        with psycopg.connect(self.url("postgres")) as conn:
            rows = {name: conn.execute(f"show {name}".encode()).fetchone() for name in names}
        return {name: str(row[0]) if row else "?" for name, row in rows.items()}

    def version(self) -> str:
        with psycopg.connect(self.url("postgres")) as conn:
            row = conn.execute("show server_version").fetchone()
        return str(row[0]) if row else "?"

    def conninfo(self) -> dict[str, Any]:
        """host, port, user of the server (for command-line clients such as pgbench)."""
        info = conninfo_to_dict(self.base_url)
        return {key: info.get(key) for key in ("host", "port", "user", "password")}


@contextmanager
def cluster(database_url: str | None) -> Iterator[Cluster]:
    """A private durable cluster on a free port, removed at exit; or `database_url`'s server."""
    if database_url:
        yield Cluster(make_conninfo(database_url, dbname="postgres"), BIN_DIR)
        return
    with temporary_cluster("imagegen-bench-", durable=True) as local:
        yield Cluster(local.url("postgres"), BIN_DIR, local)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb: float | None = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        ram_gb = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    postgres = "?"
    if (BIN_DIR / "postgres").exists():
        command = [str(BIN_DIR / "postgres"), "--version"]
        out = subprocess.run(command, capture_output=True, text=True, check=False)
        postgres = out.stdout.strip() or postgres
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": postgres,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Rows as aligned columns (numbers right-aligned), under a title."""
    print(f"\n{title}")
    if not rows:
        print("  (no rows)")
        return
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    cells = [[_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(row.get(c), int | float) or row.get(c) is None for row in rows)
        for c in columns
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    print("  " + line(columns))
    print("  " + "  ".join("-" * w for w in widths))
    for values in cells:
        print("  " + line(values))
    sys.stdout.flush()


def write_results(
    name: str, rows: list[dict[str, Any]], meta: dict[str, Any], variant: str | None = None
) -> Path:
    """bench/results/<name>.json (<name>_<variant>.json for a part of the benchmark): the
    rows, the machine, the command line, and `meta`."""
    # BENCH_RESULTS_DIR: elsewhere (the smoke test's quick runs must not replace real figures).
    results_dir = Path(os.environ.get("BENCH_RESULTS_DIR") or RESULTS_DIR)
    results_dir.mkdir(parents=True, exist_ok=True)
    # A quick run's figures are a smoke check: they never replace the full run's.
    stem = f"{name}_{variant}" if variant else name
    path = results_dir / (f"{stem}.quick.json" if "--quick" in sys.argv else f"{stem}.json")
    document = {
        "benchmark": name,
        "command": shlex.join([Path(sys.executable).name, "-m", f"bench.{name}", *sys.argv[1:]]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        **meta,
        "rows": rows,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"\nwrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return path


def percentile(values: Sequence[float], share: float) -> float:
    """The `share` (0..1) percentile by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(share * (len(ordered) - 1))))
    return ordered[rank]
