"""The one door to the database: call a SQL function by name, with named arguments.

Two implementations call the same functions: `PostgresGateway` (psycopg 3, async pool,
LISTEN for instant pickup; the default) and `PostgrestGateway` (supabase-py
`client.rpc`, for deployments that only have SUPABASE_URL and the service role key).
Everything above this (worker.database) is the same for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from worker.errors import ImagegenError


class DatabaseError(ImagegenError):
    """A SQL function refused or failed. `sqlstate`, `column` and `detail` come from the
    server (a limit's refusal carries in `detail` when to retry)."""

    def __init__(
        self,
        message: str,
        sqlstate: str | None = None,
        column: str | None = None,
        detail: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.column = column
        self.detail = detail

    @property
    def is_invalid_input(self) -> bool:
        # 22xxx data exceptions, 23xxx integrity violations: the input, not the system.
        return self.sqlstate is not None and self.sqlstate[:2] in ("22", "23")


class GatewayUnavailable(ImagegenError):
    """The database could not be reached; the caller may retry later."""


class Gateway(Protocol):
    """Both gateways give the same Python types for the same SQL types: uuid as
    uuid.UUID, timestamptz as an aware datetime, numeric as Decimal, double precision as
    float, json and jsonb as dicts, lists and plain JSON values (inside which uuids and
    timestamps stay text), arrays as lists (tests/integration/test_gateway_contract.py)."""

    async def open(self) -> None:
        """Get ready for calls; a database that cannot be reached now is not an error
        (the calls then raise GatewayUnavailable until it can)."""
        ...

    async def call(self, function: str, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run `public.<function>(name => value, ...)`; return its rows as dicts.

        A function returning a scalar yields one row `{function: value}`; a set-returning
        function yields one dict per row (possibly none).
        """
        ...

    async def listen(self, channel: str, wake: Callable[[], None]) -> None:
        """Call `wake()` on each NOTIFY on `channel` until cancelled, reconnecting as
        needed. Gateways that cannot listen return at once (the runner then polls)."""
        ...

    async def hold_session(self, worker_id: str, registered: asyncio.Event) -> None:
        """Hold the worker's liveness lock (`register_worker`, sql/0040) on a session of
        its own until cancelled, registering again after a reconnect, so that other
        workers take its jobs over as soon as it dies. Sets `registered` once the first
        attempt is answered (or at once, for gateways without sessions: they return, and
        the lease alone then tells a dead worker)."""
        ...

    async def ping(self) -> bool:
        """Whether the database answers now."""
        ...

    async def close(self) -> None: ...
