"""The default gateway: direct PostgreSQL through psycopg 3's async pool, with LISTEN."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from decimal import Decimal
from functools import lru_cache
from typing import Any

import psycopg
import structlog
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from worker.gateway import DatabaseError, GatewayUnavailable

log = structlog.get_logger(__name__)

Connection = psycopg.AsyncConnection[Any]

PING_TIMEOUT_SECONDS = 2.0
SESSION_CHECK_SECONDS = 5.0  # how often the liveness session is used, to notice its loss
# A connection of its own (LISTEN, the liveness session) is opened again after a loss
# this soon, doubling up to the most while it keeps failing.
RETRY_FIRST_SECONDS = 0.1
RETRY_MOST_SECONDS = 2.0
# How long a call may wait for a pooled connection, when shorter than the gateway's own
# timeout: the HTTP service sets it per request (api/limits.py), so that an outage answers
# a request within seconds while the job runner keeps waiting patiently.
ACQUIRE_TIMEOUT: ContextVar[float | None] = ContextVar("acquire_timeout", default=None)


@lru_cache(maxsize=256)
def _statement(function: str, names: tuple[str, ...]) -> str:
    arguments = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder(name)) for name in names
    )
    statement = sql.SQL("select * from public.{}({})").format(sql.Identifier(function), arguments)
    # Rendered once: psycopg would otherwise re-render a Composed on every call.
    return statement.as_string(None)


def _adapt(value: Any) -> Any:
    if isinstance(value, dict):
        return Jsonb(value)
    if isinstance(value, list):
        return [_adapt(item) for item in value]
    if isinstance(value, float):
        # float8 has no implicit cast to numeric: send the exact decimal instead.
        return Decimal(repr(value))
    return value


class PostgresGateway:
    def __init__(self, url: str, *, max_size: int = 10, timeout: float = 10.0) -> None:
        self._url = url
        self._timeout = timeout
        self._ping_conn: Connection | None = None
        self._ping_lock = asyncio.Lock()
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=timeout,
            kwargs={"autocommit": True},
            reconnect_timeout=3600,
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def call(self, function: str, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        statement = _statement(function, tuple(args))
        params = {name: _adapt(value) for name, value in args.items()}
        timeout = min(self._timeout, ACQUIRE_TIMEOUT.get() or self._timeout)
        try:
            async with (
                self._pool.connection(timeout=timeout) as conn,
                conn.cursor(row_factory=dict_row) as cursor,
            ):
                await cursor.execute(statement, params)
                return await cursor.fetchall()
        except PoolTimeout as exc:
            raise GatewayUnavailable(f"no database connection within {timeout}s") from exc
        except psycopg.OperationalError as exc:
            raise GatewayUnavailable(f"database unavailable: {exc.sqlstate or exc}") from exc
        except psycopg.Error as exc:
            raise DatabaseError(
                exc.diag.message_primary or str(exc),
                sqlstate=exc.sqlstate,
                column=exc.diag.column_name,
                detail=exc.diag.message_detail,
            ) from exc

    async def listen(self, channel: str, wake: Callable[[], None]) -> None:
        """Wake on every NOTIFY; reconnect (and wake once, in case one was missed) on loss."""

        async def session(conn: Connection, established: Callable[[], None]) -> float:
            await conn.execute(sql.SQL("listen {}").format(sql.Identifier(channel)))
            log.info("listening", channel=channel)
            established()
            wake()
            async for _ in conn.notifies():
                wake()
            return RETRY_FIRST_SECONDS

        await self._reconnecting("listen connection lost", session)

    async def hold_session(self, worker_id: str, registered: asyncio.Event) -> None:
        async def session(conn: Connection, established: Callable[[], None]) -> float:
            cursor = await conn.execute("select public.register_worker(%s)", (worker_id,))
            row = await cursor.fetchone()
            registered.set()
            if row and row[0]:
                log.info("worker registered", worker_id=worker_id)
                established()
                while True:  # a query now and then notices a lost connection
                    await asyncio.sleep(SESSION_CHECK_SECONDS)
                    await conn.execute("select 1")
            log.warning("worker id held by another session; lease only", worker_id=worker_id)
            return RETRY_MOST_SECONDS

        await self._reconnecting("worker session lost", session)

    async def _reconnecting(
        self,
        lost: str,
        session: Callable[[Connection, Callable[[], None]], Awaitable[float]],
    ) -> None:
        """Runs `session` on a connection of its own, for ever: a lost connection is
        logged as `lost` and opened again after 0.1 s, doubling to 2 s while it keeps
        failing. The session calls `established()` once it works (the next loss waits
        0.1 s again); when it returns, it says how long to wait before it runs again."""
        delay = RETRY_FIRST_SECONDS

        def established() -> None:
            nonlocal delay
            delay = RETRY_FIRST_SECONDS

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=int(self._timeout)
                ) as conn:
                    delay = await session(conn, established)
            except psycopg.Error as exc:
                log.warning(lost, error=type(exc).__name__, retry_in=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MOST_SECONDS)

    async def ping(self) -> bool:
        """On a connection of its own, not the pool's: /health must answer while a flood
        of requests queues for the pool."""
        async with self._ping_lock:
            try:
                async with asyncio.timeout(PING_TIMEOUT_SECONDS):
                    if self._ping_conn is None or self._ping_conn.closed:
                        self._ping_conn = await psycopg.AsyncConnection.connect(
                            self._url, autocommit=True, connect_timeout=int(PING_TIMEOUT_SECONDS)
                        )
                    await self._ping_conn.execute("select 1")
                return True
            except (psycopg.Error, TimeoutError):
                await self._close_ping()
                return False

    async def _close_ping(self) -> None:
        conn, self._ping_conn = self._ping_conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()

    async def close(self) -> None:
        async with self._ping_lock:
            await self._close_ping()
        await self._pool.close()
