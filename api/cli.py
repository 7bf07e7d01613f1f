"""The `imagegen` command line."""

from __future__ import annotations

import asyncio
import difflib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from typing import Any, NoReturn

import httpx
import psycopg
import typer
from psycopg.rows import dict_row
from rich.console import Console
from rich.table import Table

from worker.migrate import MigrationError, migrate
from worker.settings import Settings

app = typer.Typer(
    help="imagegen: PostgreSQL-backed image generation.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8000"
NO_DEVSTACK = "this installation has no dev stack (devstack/): run it from a checkout, `make dev`"


def _fail(message: str) -> NoReturn:
    """One readable line on stderr and exit status 1: no traceback for the user."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _has_devstack() -> bool:
    """The dev stack is in a checkout's install, never in the Docker image (devstack/)."""
    return importlib.util.find_spec("devstack") is not None


def _database_url(option: str | None) -> str:
    """--database-url, else DATABASE_URL, else the dev stack running from this project."""
    if url := option or os.environ.get("DATABASE_URL"):
        return url
    if not _has_devstack():
        _fail("no database given: pass --database-url (or set DATABASE_URL)")
    from devstack.stack import DevError, DevState, local_dir, running_stack

    root = local_dir()
    try:
        state = DevState.read(root)
    except DevError as exc:
        _fail(str(exc))
    if state is None or running_stack(root) is None:
        _fail(
            f"no database given and no dev stack running in {root.parent}:"
            " start one with `make dev`, or pass --database-url (or set DATABASE_URL)"
        )
    return state.database_url()


def _service_url(option: str | None) -> str:
    """--url, else IMAGEGEN_URL, else the running dev stack's, else the default."""
    if url := option or os.environ.get("IMAGEGEN_URL"):
        return url.rstrip("/")
    if not _has_devstack():
        return DEFAULT_URL
    from devstack.stack import local_dir, running_stack

    stack = running_stack(local_dir())
    return stack.url if stack else DEFAULT_URL


DatabaseUrl = typer.Option(None, "--database-url", help="PostgreSQL URL (else DATABASE_URL).")


def _serve(settings: Settings, **app_options: Any) -> None:
    import uvicorn

    from api.app import create_app
    from api.limits import uvicorn_options
    from worker.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings, **app_options),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        log_config=None,  # uvicorn's lines go through configure_logging's handler
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
        **uvicorn_options(),  # the header limits (api/limits.py)
    )


@app.command()
def serve() -> None:
    """Run the HTTP API and the job runner in one process (the default deployment)."""
    _serve(Settings(), run_jobs=True)


@app.command("api")
def api_only() -> None:
    """Run the HTTP API alone; its process-jobs then only nudges the queue's workers."""
    _serve(Settings(), run_jobs=False)


@app.command()
def worker() -> None:
    """Run the job runner alone (no HTTP), until SIGTERM or Ctrl-C."""
    from worker.logs import configure_logging
    from worker.service import run_worker

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        import uvloop  # as uvicorn does for the API: a faster event loop where installed
    except ImportError:
        asyncio.run(run_worker(settings))
    else:
        uvloop.run(run_worker(settings))


@app.command("migrate")
def migrate_command(database_url: str | None = DatabaseUrl) -> None:
    """Apply the SQL migrations in sql/ that the database has not seen yet."""
    try:
        applied = migrate(_database_url(database_url))
    except MigrationError as exc:
        _fail(str(exc))
    except psycopg.OperationalError as exc:
        _fail(f"cannot connect to the database: {_first_line(exc)}")
    for name in applied:
        typer.echo(f"applied {name}")
    if not applied:
        typer.echo("database is up to date")


@app.command("configure-cron")
def configure_cron(
    url: str = typer.Option(..., help="Base URL of this service, as pg_net will call it."),
    secret: str = typer.Option(..., help="The worker secret (WORKER_SECRET) sent as bearer."),
    schedule: str | None = typer.Option(
        None, help="pg_cron schedule; default '10 seconds' (pg_cron >= 1.5) or every minute."
    ),
    database_url: str | None = DatabaseUrl,
) -> None:
    """Schedule pg_cron to POST to <url>/functions/v1/process-jobs (URL and secret are
    kept in Vault or a service-only table, never in cron.job)."""
    try:
        with psycopg.connect(_database_url(database_url), autocommit=True) as conn:
            # The old platform's schedule it replaces is reported as a notice.
            conn.add_notice_handler(lambda notice: typer.echo(notice.message_primary))
            row = conn.execute(
                "select public.configure_worker_cron(%s, %s, %s)", (url, secret, schedule)
            ).fetchone()
    except psycopg.Error as exc:
        _fail(exc.diag.message_primary or _first_line(exc))
    typer.echo(f"scheduled process-jobs-worker (cron job {row[0] if row else '?'})")


@app.command()
def queue(database_url: str | None = DatabaseUrl) -> None:
    """Show the queue_health view as a table."""
    try:
        with psycopg.connect(_database_url(database_url), row_factory=dict_row) as conn:
            rows = conn.execute("select * from queue_health order by job_type, status").fetchall()
    except psycopg.Error as exc:
        _fail(f"cannot read the queue: {_first_line(exc)}")
    table = Table(title="queue_health")
    for column in ("job_type", "status", "count", "oldest_job", "avg_duration_seconds"):
        table.add_column(column)
    for row in rows:
        duration = row["avg_duration_seconds"]
        table.add_row(
            row["job_type"],
            row["status"],
            str(row["count"]),
            f"{row['oldest_job']:%Y-%m-%d %H:%M:%S}",
            "" if duration is None else f"{duration:.2f}",
        )
    _wide_console().print(table if rows else "the queue is empty")


@app.command()
def events(
    database_url: str | None = DatabaseUrl,
    visibility_timeout: int = typer.Option(
        30, min=1, help="Seconds a read event stays hidden from other readers before redelivery."
    ),
    batch_size: int = typer.Option(10, min=1, max=1000, help="Events read at a time."),
    once: bool = typer.Option(False, "--once", help="Stop when no event is left to read."),
) -> None:
    """Follow the completion events (pgmq queue generation_events): one JSON line per
    event on stdout, archived once printed."""
    from worker.events import follow_events

    def emit(event: dict[str, Any]) -> None:
        typer.echo(json.dumps(event, default=str))
        sys.stdout.flush()  # printed before archived: a crash in between re-delivers

    try:
        follow_events(
            _database_url(database_url),
            emit,
            visibility_timeout=visibility_timeout,
            batch_size=batch_size,
            once=once,
        )
    except psycopg.Error as exc:
        _fail(f"cannot read the events: {_first_line(exc)}")
    except KeyboardInterrupt:
        pass


@app.command()
def token(
    user_id: str | None = typer.Option(None, help="User id (default: the local dev user)."),
    ttl: int = typer.Option(3600, help="Lifetime in seconds."),
) -> None:
    """Mint an access token for the local embedded default (never for a real project)."""
    import uuid

    if not _has_devstack():
        _fail(NO_DEVSTACK)
    from devstack.stack import DevError, DevState, dev_token, local_dir

    root = local_dir()
    try:
        state = DevState.read(root)
    except DevError as exc:
        _fail(str(exc))
    if state is None:
        _fail(f"no dev stack in {root.parent}; run `make dev` first")
    if user_id:
        try:
            state = replace(state, user_id=str(uuid.UUID(user_id)))
        except ValueError:
            _fail("--user-id must be a UUID")
    # The issuer is the URL the stack runs on: its token check compares them.
    typer.echo(dev_token(state, _service_url(None), ttl))


@app.command()
def dev(
    port: int = typer.Option(8000, envvar="PORT", help="Port of the service (env PORT)."),
    host: str = typer.Option("127.0.0.1", envvar="HOST", help="Address to listen on (env HOST)."),
    reset: bool = typer.Option(
        False, "--reset", help="Delete the local stack (database, images, tokens) and exit."
    ),
) -> None:
    """Run everything locally: PostgreSQL + pg_cron, the service, the file store and the
    Replicate simulator (unless REPLICATE_API_TOKEN is set); state in the project's .local/."""
    if not _has_devstack():
        _fail(NO_DEVSTACK)
    from devstack import stack as devstack

    if reset:
        devstack.main_guard(lambda: devstack.reset(devstack.local_dir()))
        devstack.say(f"removed {devstack.local_dir()}")
        return
    devstack.main_guard(lambda: devstack.run(host, port))


def _default_token() -> str | None:
    if token := os.environ.get("IMAGEGEN_TOKEN"):
        return token
    if not _has_devstack():
        return None
    from devstack.stack import TOKEN_FILE, local_dir

    path = local_dir() / TOKEN_FILE
    return path.read_text().strip() if path.exists() else None


TERMINAL = ("completed", "failed")


class ServiceClient:
    """The service's HTTP API as a signed-in user calls it; failures are one line."""

    def __init__(self, url: str, bearer: str | None) -> None:
        if not bearer:
            _fail("no access token: pass --token, set IMAGEGEN_TOKEN, or run `make dev` first")
        self.url = url
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {bearer}"}, timeout=30
        )

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, f"/functions/v1/{path}", **kwargs)
        except httpx.ConnectError:
            _fail(f"cannot reach imagegen at {self.url}: is `make dev` running? (or pass --url)")
        except httpx.TimeoutException:
            _fail(f"imagegen at {self.url} did not answer within 30 s; try again")
        except httpx.HTTPError as exc:
            _fail(f"talking to {self.url} failed: {type(exc).__name__}")
        if response.status_code != 200:
            _fail(f"refused ({response.status_code}): {_error(response)}")
        try:
            answer: dict[str, Any] = response.json()
        except ValueError:
            _fail(f"{self.url} answered with something that is not JSON: is it imagegen?")
        return answer

    def models(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "list-models")["models"])

    def close(self) -> None:
        self.http.close()


def resolve_model(name: str, models: list[dict[str, Any]]) -> str:
    """The model_id for `name`: a Replicate id, a models.id, a models.name, or the end of
    a Replicate id where only one model ends so (`flux-schnell`)."""
    for model in models:
        if name in (model["replicate_id"], str(model["id"]), model["name"]):
            return str(model["replicate_id"])
    endings = [m for m in models if str(m["replicate_id"]).endswith(f"/{name}")]
    if len(endings) == 1:
        return str(endings[0]["replicate_id"])
    known = [str(m["name"]) for m in models] + [str(m["replicate_id"]) for m in models]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    if len(endings) > 1:
        hint = f"; it could be {' or '.join(m['replicate_id'] for m in endings)}"
    _fail(f"unknown model {name!r}{hint} (`imagegen models` lists them)")


UrlOption = typer.Option(
    None, "--url", help="The service's base URL (else IMAGEGEN_URL, else the running dev stack)."
)
TokenOption = typer.Option(
    None, "--token", help="User access token (else IMAGEGEN_TOKEN, else .local/dev-token)."
)


@app.command()
def models(url: str | None = UrlOption, access_token: str | None = TokenOption) -> None:
    """List the models you can generate with, their sizes and what they support."""
    client = ServiceClient(_service_url(url), access_token or _default_token())
    try:
        rows = client.models()
    finally:
        client.close()
    table = Table(title="models")
    for column in ("name", "model_id", "width", "height", "steps", "img2img", "neg. prompt"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["name"]) + (" (default)" if row.get("is_default") else ""),
            str(row["replicate_id"]),
            f"{row['min_width']}-{row['max_width']}",
            f"{row['min_height']}-{row['max_height']}",
            f"≤ {row['max_steps']}",
            "yes" if row.get("supports_img2img") else "no",
            "yes" if row.get("supports_negative_prompt") else "no",
        )
    _wide_console().print(table)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    model: str = typer.Option(
        "flux-schnell", "--model", help="Model: name, Replicate id or id (`imagegen models`)."
    ),
    width: int | None = typer.Option(None),
    height: int | None = typer.Option(None),
    url: str | None = UrlOption,
    access_token: str | None = TokenOption,
    timeout: float = typer.Option(600, help="Stop waiting after this many seconds."),
) -> None:
    """Submit a prompt through the HTTP API as a user would, follow it, print the image URL."""
    client = ServiceClient(_service_url(url), access_token or _default_token())
    try:
        body: dict[str, Any] = {"prompt": prompt, "model_id": resolve_model(model, client.models())}
        if width:
            body["width"] = width
        if height:
            body["height"] = height
        generation_id = client.request("POST", "start-generation", json=body)["generation_id"]
        generation = _follow(client, generation_id, timeout)
    finally:
        client.close()
    status = generation.get("status")
    if status not in TERMINAL:
        typer.echo(
            f"still {status} after {timeout:g} s; generation {generation_id} goes on"
            " (run again with a longer --timeout, or watch `imagegen queue`)",
            err=True,
        )
        raise typer.Exit(2)
    if status == "failed":
        _fail(f"generation failed: {generation.get('error_message') or 'no reason given'}")
    image = (generation.get("images") or [{}])[0]
    typer.echo(image.get("public_url", ""))


def _wide_console() -> Console:
    """The terminal's width, or a wide page when piped (rich would cut tables at 80)."""
    return Console(width=shutil.get_terminal_size((160, 24)).columns)


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text[:200]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _follow(client: ServiceClient, generation_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    generation: dict[str, Any] = {"status": "queued"}
    with console.status(f"generation {generation_id}: queued") as status:
        while time.monotonic() < deadline:
            generation = client.request("GET", "get-generation", params={"id": generation_id})
            status.update(f"generation {generation_id}: {generation['status']}")
            if generation["status"] in TERMINAL:
                break
            time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
    return generation


if __name__ == "__main__":
    app()
