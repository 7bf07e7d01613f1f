"""`make dev` then `imagegen generate "a lighthouse at dusk"`: the same path, with a
short-lived embedded default in a temporary directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.local_postgres import free_port


@pytest.fixture
def local_dir() -> Iterator[Path]:
    # Readable by the postgres user, which owns the cluster under it when we run as root.
    root = Path(tempfile.mkdtemp(prefix="imagegen-dev-"))
    root.chmod(0o755)
    yield root
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_dev_stack_generates_a_downloadable_image(local_dir: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key != "REPLICATE_API_TOKEN"} | {
        "IMAGEGEN_LOCAL_DIR": str(local_dir),
        "LOG_FORMAT": "json",
    }
    cli = [sys.executable, "-m", "api.cli"]
    dev = subprocess.Popen(
        [*cli, "dev", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert dev.poll() is None, dev.stderr.read() if dev.stderr else ""
            time.sleep(0.2)
        else:
            pytest.fail("the dev stack did not become healthy")

        generated = subprocess.run(
            [*cli, "generate", "a lighthouse at dusk", "--url", base],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert generated.returncode == 0, generated.stderr
        url = generated.stdout.strip().splitlines()[-1]
        assert url.startswith(f"{base}/storage/v1/object/public/generated-images/")
        image = httpx.get(url, timeout=10)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/webp"
        assert image.content[:4] == b"RIFF"
    finally:
        dev.send_signal(signal.SIGINT)
        try:
            dev.wait(30)
        except subprocess.TimeoutExpired:
            dev.kill()
    # Ctrl-C stopped PostgreSQL too.
    assert not (local_dir / "postgres" / "data" / "postmaster.pid").exists()
