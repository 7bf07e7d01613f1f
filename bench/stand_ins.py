"""The Replicate simulator and the Storage stand-in on one loopback server, in a process
of their own, so that the CPU they use is never counted as the service's.

    python -m bench.stand_ins --port 8787 --latency 30 --storage-root /tmp/store

Replicate at `/replicate/v1`, Storage at `/storage/v1` (Supabase's URL layout); the
service role key comes from STAND_INS_SERVICE_KEY, never from the command line.
Every output is one image rendered at start (1024x1024 WebP, flux-schnell's default):
the service downloads, checks and stores the same bytes as ever, and the simulator
does not spend a core drawing a new picture for each prediction, as Replicate's CDN
would not.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from devstack.simulator import SimulatorConfig, create_simulator_app, render_image
from devstack.storage import create_storage_app

KEY_VARIABLE = "STAND_INS_SERVICE_KEY"


def create_stand_ins_app(
    latency_seconds: float, storage_root: Path, key: str, create_limit: float = 0.0
) -> Starlette:
    # The simulator serves `output_body` as it is; bytes are what a Response takes.
    image: Any = render_image(1024, 1024, "webp", "imagegen benchmark", 0)
    config = SimulatorConfig(
        latency_seconds,
        output_body=image,
        output_content_type="image/webp",
        create_limit_per_second=create_limit,
    )
    return Starlette(
        routes=[
            Mount("/replicate", create_simulator_app(config)),
            Mount("/storage/v1", create_storage_app(storage_root, key)),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, required=True, help="seconds per prediction")
    parser.add_argument("--storage-root", type=Path, required=True)
    parser.add_argument(
        "--create-limit", type=float, default=0.0, help="creates a second (429 above; 0: none)"
    )
    args = parser.parse_args()
    app = create_stand_ins_app(
        args.latency, args.storage_root, os.environ[KEY_VARIABLE], args.create_limit
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
