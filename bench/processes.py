"""What the service-level benchmarks share: the service (`imagegen api`, `imagegen
worker`) and the stand-ins (Replicate simulator, Storage) as processes of their own,
configured through the environment as in production; users; CPU and memory of a
process, read from /proc."""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench.stand_ins import KEY_VARIABLE
from devstack.postgres import free_port
from worker.settings import Settings

# Fresh for each run: the service gets them through its environment.
JWT_SECRET = secrets.token_urlsafe(32)
WORKER_SECRET = secrets.token_urlsafe(24)
FLUX = "black-forest-labs/flux-schnell"
START = "select start_generation(p_user_id => %s, p_prompt => %s, p_model_id => %s)"
PROMPT = "a lighthouse at dusk, oil on canvas"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Where `python -m bench.*` and `python -m api.cli` resolve, whatever the caller's directory.
ROOT = Path(__file__).resolve().parent.parent


class Process:
    """A child process whose output goes to a log file; stopped with SIGTERM, then KILL."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                args,
                env=dict(env),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far (this process only, not its children)."""
        return process_cpu_seconds(self.pid)

    def memory_mb(self) -> tuple[float, float]:
        """(resident now, peak resident) in MB."""
        values: dict[str, float] = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def wait_until_up(url: str, process: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        process.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 500:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{process.name} did not answer {url} within {timeout:g} s")
        time.sleep(0.1)


@dataclass
class StandIns:
    url: str
    service_role_key: str
    process: Process

    def simulator_stats(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/replicate/_simulator/stats", timeout=30)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A scratch directory for logs and stored files, removed at exit."""
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as path:
        yield Path(path)


@contextlib.contextmanager
def stand_ins(
    latency_seconds: float, work_dir: Path, create_limit: float = 0.0
) -> Iterator[StandIns]:
    """The Replicate simulator (`latency_seconds` per prediction; `create_limit` creates a
    second, 0: no limit) and Storage, in a process."""
    port, key = free_port(), secrets.token_urlsafe(24)
    args = [
        sys.executable,
        "-m",
        "bench.stand_ins",
        "--port",
        str(port),
        "--latency",
        str(latency_seconds),
        "--storage-root",
        str(work_dir / "storage"),
        "--create-limit",
        str(create_limit),
    ]
    env = {**os.environ, KEY_VARIABLE: key}
    process = Process(f"stand-ins-{port}", args, env, work_dir)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(f"{url}/replicate/_simulator/stats", process)
        yield StandIns(url, key, process)
    finally:
        process.stop()


def service_env(database_url: str, stand: StandIns, **settings: Any) -> dict[str, str]:
    """This environment, less any imagegen setting in it, plus the benchmark's settings."""
    ours = {
        "database_url": database_url,
        "database_gateway": "postgres",
        "supabase_url": stand.url,
        "supabase_service_role_key": stand.service_role_key,
        "supabase_jwt_secret": JWT_SECRET,
        "replicate_base_url": f"{stand.url}/replicate/v1",
        "replicate_api_token": "r8_bench_token_for_the_simulator",
        "output_private_origins": stand.url,  # the simulator's outputs are on loopback
        "worker_secret": WORKER_SECRET,
        "log_format": "json",  # as in production (the level stays the default, info)
    } | settings
    names = set(Settings.model_fields)
    env = {key: value for key, value in os.environ.items() if key.lower() not in names}
    return env | {key.upper(): str(value) for key, value in ours.items()}


def start_service(
    command: str, name: str, env: Mapping[str, str], work_dir: Path, ready_url: str | None = None
) -> Process:
    """`imagegen <command>` (api, worker, serve) as a child process."""
    process = Process(name, [sys.executable, "-m", "api.cli", command], env, work_dir)
    if ready_url:
        try:
            wait_until_up(ready_url, process)
        except BaseException:
            process.stop()
            raise
    return process


def make_users(database_url: str, count: int) -> list[uuid.UUID]:
    users = [uuid.uuid4() for _ in range(count)]
    with psycopg.connect(database_url) as conn, conn.cursor() as cursor:
        cursor.executemany(
            "insert into auth.users (id, email) values (%s, %s)",
            [(user, f"{user.hex[:12]}@bench.test") for user in users],
        )
    return users


# The account's creates a minute (and burst) in the benchmarks of the worker: under
# Replicate's default, 600 a minute (sql/0111), they would measure that limit, not the
# worker. bench.provider_limit measures the limit itself.
CREATE_LIMIT_PER_MINUTE = 60_000
CREATE_BURST = 500


def raise_create_limit(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "select configure_provider_limit('replicate', %s, %s)",
            (CREATE_LIMIT_PER_MINUTE, CREATE_BURST),
        )


def configure_admission(database_url: str, per_user: int, queue_depth: int) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "select configure_admission(p_max_active_per_user => %s, p_max_queue_depth => %s)",
            (per_user, queue_depth),
        )


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of `pid` so far (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def children_cpu_seconds(parent: int) -> float:
    """CPU time of `parent` and its live children (a postmaster and its backends)."""
    total = process_cpu_seconds(parent)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # not guest time, which steal/user already count
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def postgres_cpu(data_dir: Path | None) -> dict[str, Callable[[], float]]:
    """{"postgres": CPU seconds of the server and its backends} for a CpuMeter, when this
    machine runs the server (our own cluster in `data_dir`); else nothing."""
    if data_dir is None:
        return {}
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return {"postgres": functools.partial(children_cpu_seconds, postmaster)}


def waited_children_cpu_seconds() -> float:
    """CPU time of this process's children that have ended and been waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """CPU used between `start()` and `stop()` by each named source (a function returning
    CPU seconds so far), in % of one core, and the whole machine's busy share in %."""

    def __init__(self, sources: Mapping[str, Callable[[], float]]) -> None:
        self.sources = dict(sources)
        self._start: dict[str, float] = {}
        self._machine = (0.0, 0.0)
        self._wall = 0.0

    def start(self) -> None:
        self._start = {name: read() for name, read in self.sources.items()}
        self._machine = machine_cpu_seconds()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._wall
        shares = {
            f"{name}_cpu_pct": 100 * (read() - self._start[name]) / wall
            for name, read in self.sources.items()
        }
        busy, total = machine_cpu_seconds()
        elapsed = total - self._machine[1]
        shares["machine_busy_pct"] = 100 * (busy - self._machine[0]) / elapsed if elapsed else 0.0
        return shares


class Feeder(threading.Thread):
    """Starts generations at `rate` a second, evenly, until stopped."""

    def __init__(self, database_url: str, users: list[uuid.UUID], rate: float) -> None:
        super().__init__(name="feeder", daemon=True)
        self.database_url = database_url
        self.users = users
        self.rate = rate
        self.sent = 0
        self.error: BaseException | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                started = time.monotonic()
                while not self._stopping.is_set():
                    due = int((time.monotonic() - started) * self.rate) - self.sent
                    if due > 0:
                        batch = [
                            (self.users[(self.sent + i) % len(self.users)], PROMPT, FLUX)
                            for i in range(due)
                        ]
                        with conn.cursor() as cursor:
                            cursor.executemany(START, batch)
                        self.sent += due
                    self._stopping.wait(0.05)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stopping.set()
        if self.ident is not None:
            self.join(10)
        if self.error is not None:
            raise RuntimeError(f"the feeder failed: {self.error!r}")


def counts(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("select status, count(*) from image_generations group by status")
        by_status = {str(status): int(n) for status, n in rows.fetchall()}
        pending = conn.execute("select count(*) from job_queue where status = 'pending'").fetchone()
    return by_status | {"pending_jobs": int(pending[0]) if pending else 0}
