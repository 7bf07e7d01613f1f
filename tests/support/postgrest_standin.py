"""A PostgREST stand-in for the tests: RPC (and a minimal table read) on the real database.

It follows PostgREST's wire format: `POST /rpc/{fn}` (`/rest/v1/rpc/{fn}` on Supabase)
with a JSON object of named arguments; the function is found in pg_catalog (schema
public) by its argument names and called as PostgREST calls it, with the arguments read
from the body by `json_to_record` cast to their declared types, as the role the bearer
key stands for. Answers: a scalar as its JSON value, a set as a JSON array, errors as
`{code, message, details, hint}` with PostgREST's status mapping.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_EXACT_STATUS = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "53400": 500,
    "P0001": 400,
    "42883": 404,
    "42P01": 404,
    "42P17": 500,
}
_CLASS_STATUS = {
    "08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
    "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
    "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500,
}  # fmt: skip

_FUNCTIONS = """
select p.proretset as returns_set,
       t.typtype::text as return_kind,
       t.typname::text as return_name,
       coalesce('o' = any (p.proargmodes::text[]) or 't' = any (p.proargmodes::text[]),
                false) as has_out_args,
       p.pronargdefaults as defaults,
       coalesce((
           select json_agg(json_build_object('name', a.name, 'type', format_type(a.type, null))
                           order by a.ord)
           from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]),
                       coalesce(p.proargmodes::text[],
                                array_fill('i'::text, array[p.pronargs::int])),
                       p.proargnames)
                with ordinality as a(type, mode, name, ord)
           where a.mode in ('i', 'b', 'v')
       ), '[]'::json) as args
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type t on t.oid = p.prorettype
where n.nspname = 'public' and p.proname = %s and p.prokind = 'f'
"""


@dataclass(frozen=True)
class Function:
    name: str
    args: list[dict[str, str]]  # input arguments: name, declared type
    defaults: int
    returns_set: bool
    returns_rows: bool  # a composite type or OUT/TABLE columns
    returns_void: bool

    def accepts(self, given: set[str]) -> bool:
        names = [arg["name"] for arg in self.args]
        required = names[: len(names) - self.defaults]
        return None not in names and given <= set(names) and set(required) <= given


class PostgrestFailure(Exception):
    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        details: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "details": details, "hint": hint, "message": message}

    def response(self) -> JSONResponse:
        code = self.body["code"]
        headers = {"Proxy-Status": f"PostgREST; error={code}"} if code else None
        return JSONResponse(self.body, status_code=self.status, headers=headers)


def create_postgrest_app(
    database_url: str, *, service_role_key: str | None = None, anon_key: str | None = None
) -> Starlette:
    """PostgREST's own paths (`/rpc/{fn}`, `/{table}`): mount it at `/rest/v1`, where
    Supabase's gateway serves it. The service key acts as `service_role`, the anon key as
    `anon`, as Supabase's keys do through their `role` claim; without a service key any
    key acts as `service_role` (the headers must still be there)."""
    roles = {service_role_key: "service_role"} if service_role_key else {}
    if anon_key:
        roles[anon_key] = "anon"

    def role_of(key: str) -> str | None:
        return roles.get(key) or (None if service_role_key else "service_role")

    def authorize(request: Request) -> str:
        apikey = request.headers.get("apikey")
        if not apikey:
            # Supabase's API gateway (Kong) refuses before PostgREST sees the request.
            raise PostgrestFailure(401, None, "No API key found in request")
        if role_of(apikey) is None:
            raise PostgrestFailure(401, None, "Invalid API key")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        role = role_of(token.strip() or apikey)
        if (token and scheme.lower() != "bearer") or role is None:
            raise PostgrestFailure(401, "PGRST301", "JWSError JWSInvalidSignature")
        return role

    async def rpc(request: Request) -> Response:
        try:
            role = authorize(request)
            body = await _json_object(request)
            name = request.path_params["function"]
            async with await _connect(database_url) as conn:
                function = await _find_function(conn, name, set(body))
                text = await _run(conn, role, _rpc_statement(function, body), [json.dumps(body)])
        except PostgrestFailure as failure:
            return failure.response()
        return Response(text or "null", media_type="application/json")

    async def read_table(request: Request) -> Response:
        try:
            role = authorize(request)
            statement = _select_statement(
                request.path_params["table"],
                request.query_params.get("select", "*"),
                request.query_params.get("limit"),
            )
            async with await _connect(database_url) as conn:
                text = await _run(conn, role, statement, [])
        except PostgrestFailure as failure:
            return failure.response()
        return Response(text or "[]", media_type="application/json")

    return Starlette(
        routes=[
            Route("/rpc/{function}", rpc, methods=["POST"]),
            Route("/{table}", read_table, methods=["GET"]),
        ]
    )


async def _connect(database_url: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(database_url, connect_timeout=5)
    except psycopg.OperationalError:
        raise PostgrestFailure(
            503, "PGRST000", "Could not connect with the database", "connection failed"
        ) from None


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise PostgrestFailure(400, "PGRST102", "Empty or invalid json")
    return body


async def _find_function(
    conn: psycopg.AsyncConnection[Any], name: str, given: set[str]
) -> Function:
    cursor = await conn.execute(_FUNCTIONS, [name])
    candidates = [
        Function(
            name=name,
            args=row[5],
            defaults=row[4],
            returns_set=row[0],
            returns_rows=row[1] == "c" or row[3],
            returns_void=row[2] == "void",
        )
        for row in await cursor.fetchall()
    ]
    await conn.rollback()
    matches = [function for function in candidates if function.accepts(given)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(sorted(given))
    if not matches:
        raise PostgrestFailure(
            404,
            "PGRST202",
            f"Could not find the function public.{name}({listed}) in the schema cache",
            f"Searched for the function public.{name} with parameters {listed} or with a "
            "single unnamed json/jsonb parameter, but no matches were found in the schema "
            "cache.",
        )
    raise PostgrestFailure(
        300,
        "PGRST203",
        f"Could not choose the best candidate function between: public.{name}",
        hint="Try renaming the parameters or the function itself in the database so "
        "function overloading can be resolved",
    )


def _rpc_statement(function: Function, body: dict[str, Any]) -> sql.Composed:
    args = [arg for arg in function.args if arg["name"] in body]
    call = sql.SQL("public.{}({})").format(
        sql.Identifier(function.name),
        sql.SQL(", ").join(
            sql.SQL("{} => _.{}").format(sql.Identifier(a["name"]), sql.Identifier(a["name"]))
            for a in args
        ),
    )
    source: sql.Composable
    if function.returns_rows:
        source = sql.SQL("{} as pgrst_call").format(call)
        value = sql.SQL("json_agg(pgrst_call)")
    else:
        source = sql.SQL("{} as pgrst_call(v)").format(call)
        value = sql.SQL("json_agg(pgrst_call.v)")
    if args:
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(a["name"]), sql.SQL(a["type"])) for a in args
        )
        # As PostgREST does: the body read into a record of the declared argument types.
        source = sql.SQL("json_to_record(%s::json) as _({}) cross join lateral {}").format(
            columns, source
        )
    else:
        source = sql.SQL("(select %s::json) as _ cross join lateral {}").format(source)
    result: sql.Composable
    if function.returns_void:
        result = sql.SQL("'null'")
    elif function.returns_set:
        result = sql.SQL("coalesce({}, '[]'::json)::text").format(value)
    else:
        result = sql.SQL("({} -> 0)::text").format(value)
    return sql.SQL("select {} from {}").format(result, source)


def _select_statement(table: str, select: str, limit: str | None) -> sql.Composed:
    columns = [column.strip() for column in select.split(",")]
    if not _IDENTIFIER.match(table) or not all(
        column == "*" or _IDENTIFIER.match(column) for column in columns
    ):
        raise PostgrestFailure(400, "PGRST100", "The stand-in reads plain columns only")
    if limit is not None and not limit.isdigit():
        raise PostgrestFailure(400, "PGRST100", f"Invalid limit: {limit}")
    selected = sql.SQL(", ").join(
        sql.SQL("*") if column == "*" else sql.Identifier(column) for column in columns
    )
    return sql.SQL(
        "select coalesce(json_agg(t), '[]'::json)::text from (select {} from public.{} {}) t"
    ).format(
        selected,
        sql.Identifier(table),
        sql.SQL("limit {}").format(sql.Literal(int(limit))) if limit else sql.SQL(""),
    )


async def _run(
    conn: psycopg.AsyncConnection[Any], role: str, statement: sql.Composed, params: list[Any]
) -> str | None:
    """One transaction as `role`, the way PostgREST runs each request."""
    claims = json.dumps({"role": role})
    try:
        async with conn.transaction():
            await conn.execute(
                "select set_config('role', %s, true), set_config('request.jwt.claims', %s, true)",
                [role, claims],
            )
            cursor = await conn.execute(statement, params)
            row = await cursor.fetchone()
    except psycopg.OperationalError as exc:
        if exc.sqlstate is None:
            raise PostgrestFailure(503, "PGRST001", "Database client error") from None
        raise _failure(exc, role) from None
    except psycopg.Error as exc:
        raise _failure(exc, role) from None
    return None if row is None else row[0]


def _failure(exc: psycopg.Error, role: str) -> PostgrestFailure:
    code = exc.sqlstate or "XX000"
    if code == "42501":
        status = 401 if role == "anon" else 403
    elif code.startswith("PT") and code[2:].isdigit():
        status = int(code[2:])  # PostgREST: SQLSTATE PTxyz answers HTTP xyz
    else:
        status = _EXACT_STATUS.get(code) or _CLASS_STATUS.get(code[:2], 400)
    return PostgrestFailure(
        status,
        code,
        exc.diag.message_primary or str(exc),
        exc.diag.message_detail,
        exc.diag.message_hint,
    )
