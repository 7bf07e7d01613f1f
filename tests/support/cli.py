"""The `imagegen` command as a user runs it: the venv's console script, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from worker.migrate import MIGRATIONS_DIR

IMAGEGEN = Path(sys.executable).parent / "imagegen"
MIGRATION_NAMES = sorted(path.name for path in MIGRATIONS_DIR.glob("*.sql"))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`imagegen <args>` with this environment less DATABASE_URL, plus `env`."""
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | (env or {})
    return subprocess.run(
        [str(IMAGEGEN), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )
