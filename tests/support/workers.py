"""Running the worker in tests: in this process (`run_worker_until`) or as its own
`imagegen worker` process (`spawn_worker`), and what the simulator saw."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row
from pydantic import SecretStr

from tests.support.stack import Stack
from worker.service import open_worker
from worker.settings import Settings

# One model of every input family of docs/CONTRACT.md §4.
FAMILY_MODELS = [
    "black-forest-labs/flux-schnell",
    "black-forest-labs/flux-dev",
    "black-forest-labs/flux-krea-dev",
    "ideogram-ai/ideogram-v3-turbo",
    "google/imagen-4",
    "bytedance/sdxl-lightning-4step",
    "stability-ai/sdxl",
    "bytedance/seedream-4",
    "bytedance/seedream-3",
    "black-forest-labs/flux-1.1-pro",
    "recraft-ai/recraft-v3-svg",
    "recraft-ai/recraft-v3",
    "stability-ai/stable-diffusion-3.5-large",
    "qwen/qwen-image",
    "playgroundai/playground-v2.5-1024px-aesthetic",
]
TERMINAL = ("completed", "failed")


async def wait_for(
    database_url: str, generation_ids: list[uuid.UUID], timeout: float
) -> dict[uuid.UUID, dict[str, Any]]:
    """The generations' rows once all have ended, or as they are at the deadline."""
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        while True:
            cursor = await conn.execute(
                "select * from image_generations where id = any(%s)", (generation_ids,)
            )
            rows = {row["id"]: row for row in await cursor.fetchall()}
            if (
                all(row["status"] in TERMINAL for row in rows.values())
                or time.monotonic() > deadline
            ):
                return rows
            await asyncio.sleep(0.1)


async def run_worker_until(
    settings: Settings, database_url: str, generation_ids: list[uuid.UUID], timeout: float = 60
) -> dict[uuid.UUID, dict[str, Any]]:
    """A worker in this event loop until the generations have ended (see wait_for)."""
    async with open_worker(settings) as worker:
        task = asyncio.create_task(worker.runner.run())
        try:
            return await wait_for(database_url, generation_ids, timeout)
        finally:
            worker.runner.stop()
            await task


def spawn_worker(settings: Settings, log_file: Path, **env: str) -> subprocess.Popen[bytes]:
    """`imagegen worker` as its own process, logging JSON lines to `log_file`."""
    key = settings.supabase_service_role_key
    variables = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "DATABASE_GATEWAY": "postgres",
        "SUPABASE_URL": settings.supabase_url or "",
        "SUPABASE_SERVICE_ROLE_KEY": key.get_secret_value() if key else "",
        "REPLICATE_BASE_URL": settings.replicate_base_url,
        "REPLICATE_API_TOKEN": "r8_test_token_for_the_simulator",
        "OUTPUT_PRIVATE_ORIGINS": settings.output_private_origins or "",
        "LOG_FORMAT": "json",
        **env,
    }
    with log_file.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "api.cli", "worker"],
            env=variables,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )


def settings_env(settings: Settings, **env: str) -> dict[str, str]:
    """This environment less any imagegen setting, plus `settings` as variables (secrets
    included; the worker id is each process's own), plus `env`."""
    variables = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    for name, value in settings.model_dump(exclude={"worker_id"}).items():
        if value is not None:
            secret = value.get_secret_value() if isinstance(value, SecretStr) else value
            variables[name.upper()] = str(secret)
    return variables | env


def spawn_api(settings: Settings, port: int, log_file: Path) -> subprocess.Popen[bytes]:
    """`imagegen api` as its own process on 127.0.0.1:`port`, answering once /health does."""
    env = settings_env(settings, HOST="127.0.0.1", PORT=str(port), LOG_FORMAT="json")
    with log_file.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "api"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log_file.read_text(errors="replace")[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "imagegen api did not come up"
        time.sleep(0.1)


def simulator_predictions(stack: Stack) -> list[dict[str, Any]]:
    """Every prediction the simulator created, through its list endpoint."""
    found: list[dict[str, Any]] = []
    url: str | None = f"{stack.simulator_url}/v1/predictions"
    with httpx.Client(headers={"Authorization": "Bearer test"}, timeout=30) as http:
        while url:
            page = http.get(url).raise_for_status().json()
            found += page["results"]
            url = page["next"]
    return found
