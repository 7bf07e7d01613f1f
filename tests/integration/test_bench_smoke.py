"""Keeps the benchmarks alive: each script's quick mode runs to the end and writes its
JSON. Nothing here is about speed (figures come from `make bench`, never from tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.processes import ROOT
from bench.run_all import BENCHMARKS
from tests.support.pg import Server


@pytest.mark.parametrize("name", BENCHMARKS)
def test_quick_mode_runs_and_writes_results(name: str, pg_server: Server, tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_RESULTS_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", "--database-url", pg_server.url()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / f"{name}.quick.json").read_text())
    assert results["benchmark"] == name and results["rows"]
