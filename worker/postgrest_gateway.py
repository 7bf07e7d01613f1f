"""The gateway for deployments that only have SUPABASE_URL and the service role key:
each call is `rpc(function, args)` through supabase-py, i.e. `POST /rest/v1/rpc/<fn>`.

PostgREST answers in JSON (uuids and timestamps as strings, numerics as numbers); this
gateway turns them back into the Python types psycopg gives (the `Gateway` contract), by
what each function returns (`function_result_columns`, sql/0051). It cannot LISTEN.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import httpx
import structlog
from postgrest.exceptions import APIError
from supabase import AsyncClient, AsyncClientOptions

from worker.errors import ImagegenError
from worker.gateway import DatabaseError, GatewayUnavailable

log = structlog.get_logger(__name__)

# SQLSTATE classes psycopg raises as OperationalError: PostgresGateway maps those to
# GatewayUnavailable, so this gateway does too.
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "54", "55", "57", "58", "F0", "HV"})


class _ServerUnavailable(ImagegenError):
    """Raised from the response hook, before postgrest-py turns the reply into APIError."""


class PostgrestGateway:
    def __init__(self, supabase_url: str, service_role_key: str, *, timeout: float) -> None:
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), event_hooks={"response": [_refuse_unavailable]}
        )
        options = AsyncClientOptions(
            httpx_client=self._http,
            postgrest_client_retry=False,  # a retried POST could run a function twice
            auto_refresh_token=False,
            persist_session=False,
        )
        self._client = AsyncClient(supabase_url, service_role_key, options)
        self._columns: dict[str, dict[str, str]] | None = None  # function -> column -> type
        self._columns_lock = asyncio.Lock()

    async def open(self) -> None:
        """Learn what each function returns (again on the first call, if unreachable now)."""
        try:
            await self._result_columns()
        except GatewayUnavailable as exc:
            log.warning("PostgREST unreachable; result types are learnt later", error=str(exc))

    async def call(self, function: str, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        columns = (await self._result_columns()).get(function, {})
        rows = await self._rpc(function, args)
        return [
            {name: _canonical(columns.get(name), value) for name, value in row.items()}
            for row in rows
        ]

    async def _result_columns(self) -> dict[str, dict[str, str]]:
        if self._columns is not None:  # learnt once; the lock only for the first calls
            return self._columns
        async with self._columns_lock:
            if self._columns is None:
                try:
                    rows = await self._rpc("function_result_columns", {})
                except DatabaseError as exc:  # a database from before sql/0051
                    log.warning("result types unknown; rows stay JSON", error=str(exc))
                    rows = []
                columns: dict[str, dict[str, str]] = {}
                for row in rows:
                    columns.setdefault(row["function_name"], {})[row["column_name"]] = row[
                        "type_name"
                    ]
                self._columns = columns
            return self._columns

    async def _rpc(self, function: str, args: Mapping[str, Any]) -> list[dict[str, Any]]:
        params = {name: _jsonable(value) for name, value in args.items()}
        try:
            response = await self._client.rpc(function, params).execute()
        except _ServerUnavailable as exc:
            raise GatewayUnavailable(str(exc)) from None
        except httpx.TransportError as exc:
            raise GatewayUnavailable(f"PostgREST unreachable: {type(exc).__name__}") from exc
        except APIError as exc:
            raise DatabaseError(
                exc.message or "PostgREST refused the call",
                exc.code,
                detail=str(exc.details) if exc.details else None,
            ) from exc
        return _rows(function, response.data)

    async def listen(self, channel: str, wake: Callable[[], None]) -> None:
        """PostgREST cannot LISTEN: return at once and let the runner poll."""
        return None

    async def hold_session(self, worker_id: str, registered: asyncio.Event) -> None:
        """PostgREST has no session that outlives a call: the lease alone tells."""
        registered.set()

    async def ping(self) -> bool:
        try:
            await self._client.table("models").select("id").limit(1).execute()
        except (_ServerUnavailable, httpx.TransportError, APIError):
            return False
        return True

    async def close(self) -> None:
        await self._http.aclose()


async def _refuse_unavailable(response: httpx.Response) -> None:
    """5xx and 429 mean "try later", unless the body is a SQL function's own error."""
    if response.status_code < 500 and response.status_code != 429:
        return
    await response.aread()
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    code = str(body.get("code") or "") if isinstance(body, dict) else ""
    if len(code) == 5 and not code.startswith("PGRST") and code[:2] not in _UNAVAILABLE_CLASSES:
        return  # e.g. XX000 raised inside a function: a DatabaseError, as with psycopg
    message = body.get("message") if isinstance(body, dict) else None
    raise _ServerUnavailable(
        f"PostgREST answered {response.status_code}{f' ({code})' if code else ''}: "
        f"{message or response.reason_phrase}"
    )


def _rows(function: str, data: Any) -> list[dict[str, Any]]:
    """A set of rows arrives as a list of objects; anything else is one scalar value
    (a set of scalars: one per row), named after the function like `select * from f()`."""
    if isinstance(data, list):
        if all(isinstance(item, dict) for item in data):
            return data
        return [{function: item} for item in data]
    return [{function: data}]


def _canonical(type_name: str | None, value: Any) -> Any:
    """A JSON value as psycopg would give a column of that SQL type."""
    if value is None or type_name is None:
        return value
    if type_name.endswith("[]") and isinstance(value, list):
        return [_canonical(type_name[:-2], item) for item in value]
    if type_name == "uuid":
        return uuid.UUID(value)
    if type_name.startswith("timestamp"):
        return datetime.fromisoformat(value)
    if type_name.startswith("numeric"):
        return Decimal(str(value))
    if type_name in ("double precision", "real"):
        return float(value)
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    return value
