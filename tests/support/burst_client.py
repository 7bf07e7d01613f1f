"""A burst of concurrent start-generation requests from a process of its own, so that
the load generator does not share the server's interpreter (and its GIL). Prints `go`
when it starts sending, then one JSON line: every answer's status and latency.

    python -m tests.support.burst_client URL TOKEN COUNT
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx


async def burst(url: str, token: str, count: int) -> list[tuple[int, float]]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"prompt": "a burst of lighthouses", "model_id": "black-forest-labs/flux-schnell"}
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def one() -> tuple[int, float]:
            started = time.perf_counter()
            response = await http.post(url, json=body, headers=headers)
            return response.status_code, time.perf_counter() - started

        return await asyncio.gather(*(one() for _ in range(count)))


def main() -> None:
    url, token, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print("go", flush=True)
    started = time.perf_counter()
    answers = asyncio.run(burst(url, token, count))
    print(json.dumps({"answers": answers, "wall": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
