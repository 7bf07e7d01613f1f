"""An HTTP/1.1 load generator, run as its own process so its CPU is not the server's.

Keep-alive connections, requests pre-built as bytes (one per token, round robin), so the
client spends as little CPU as it can per request. Two modes:
- open loop (`--rate`): requests are due at fixed intervals whatever the answers do;
  latency is measured from when a request was due, so a stalled server is not hidden
  by the client waiting for it (no coordinated omission);
- closed loop (no `--rate`): every connection sends its next request as soon as the
  last is answered: the server's saturation throughput.

    python -m bench.loadgen --url URL --tokens FILE --body JSON [--rate R] --duration S

Prints one JSON object: requests, statuses, errors, seconds, latencies (ms) by
percentile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import percentile


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> int:
        """Send one request, read the whole answer; its status code."""
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
                break
        if length:
            await self.reader.readexactly(length)
        return status


class Client:
    def __init__(self, url: str, tokens: list[str], body: bytes, connections: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.requests = [
            (
                f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
            for token in tokens
        ]
        self.connections = connections
        self.idle: asyncio.Queue[Connection] = asyncio.Queue()
        self.sent = 0

    async def open(self) -> None:
        for _ in range(self.connections):
            self.idle.put_nowait(await self._connect())

    async def _connect(self) -> Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return Connection(reader, writer)

    def next_request(self) -> bytes:
        request = self.requests[self.sent % len(self.requests)]
        self.sent += 1
        return request

    async def one(self, tally: Tally | None, due: float) -> None:
        """One request on an idle connection (waiting for one counts as latency)."""
        request = self.next_request()
        connection = await self.idle.get()
        try:
            status = await connection.exchange(request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            connection.writer.close()
            if tally is not None:
                tally.errors[type(exc).__name__] += 1
                tally.first_error = tally.first_error or repr(exc)
            try:
                connection = await self._connect()
            except OSError:
                await asyncio.sleep(0.05)
                connection = await self._connect()
        else:
            if tally is not None:
                tally.latencies.append(time.perf_counter() - due)
                tally.statuses[status] += 1
        finally:
            self.idle.put_nowait(connection)

    async def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().writer.close()


async def open_loop(client: Client, rate: float, seconds: float, tally: Tally | None) -> float:
    """Requests due every 1/rate s for `seconds`; returns the wall time until the last
    answer."""
    started = time.perf_counter()
    total = int(rate * seconds)
    tasks: set[asyncio.Task[None]] = set()
    for i in range(total):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(client.one(tally, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    return time.perf_counter() - started


async def closed_loop(client: Client, seconds: float, tally: Tally | None) -> float:
    started = time.perf_counter()
    deadline = started + seconds

    async def sender() -> None:
        while time.perf_counter() < deadline:
            await client.one(tally, time.perf_counter())

    await asyncio.gather(*(sender() for _ in range(client.connections)))
    return time.perf_counter() - started


async def run(args: argparse.Namespace, tokens: list[str]) -> dict[str, Any]:
    client = Client(args.url, tokens, args.body.encode(), args.connections)
    await client.open()
    try:
        if args.warmup > 0:
            if args.rate:
                await open_loop(client, args.rate, args.warmup, None)
            else:
                await closed_loop(client, args.warmup, None)
        tally = Tally()
        if args.rate:
            seconds = await open_loop(client, args.rate, args.duration, tally)
        else:
            seconds = await closed_loop(client, args.duration, tally)
    finally:
        await client.close()
    ms = [latency * 1000 for latency in tally.latencies]
    return {
        "mode": "open" if args.rate else "closed",
        "rate": args.rate,
        "connections": args.connections,
        "requests": len(ms) + sum(tally.errors.values()),
        "statuses": {str(code): count for code, count in sorted(tally.statuses.items())},
        "errors": dict(tally.errors),
        "first_error": tally.first_error,
        "seconds": seconds,
        "latency_ms": {
            "p50": percentile(ms, 0.50),
            "p95": percentile(ms, 0.95),
            "p99": percentile(ms, 0.99),
            "max": max(ms, default=float("nan")),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", required=True, help="a JSON file: a list of bearer tokens")
    parser.add_argument("--body", required=True, help="the JSON body of every request")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s; 0: closed loop")
    parser.add_argument("--duration", type=float, required=True, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not measured, first")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    tokens = json.loads(Path(args.tokens).read_text())
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args, tokens))
    else:
        result = uvloop.run(run(args, tokens))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
