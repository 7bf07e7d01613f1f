"""The `imagegen` command line."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

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


def _database_url(option: str | None) -> str:
    url = option or os.environ.get("DATABASE_URL")
    if not url:
        raise typer.BadParameter("give --database-url or set DATABASE_URL")
    return url


DatabaseUrl = typer.Option(None, "--database-url", help="PostgreSQL URL (else DATABASE_URL).")


def _serve(settings: Settings, **app_options: Any) -> None:
    import uvicorn

    from api.app import create_app
    from worker.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings, **app_options),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
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
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
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
    with psycopg.connect(_database_url(database_url), autocommit=True) as conn:
        # The old platform's schedule it replaces is reported as a notice.
        conn.add_notice_handler(lambda notice: typer.echo(notice.message_primary))
        try:
            row = conn.execute(
                "select public.configure_worker_cron(%s, %s, %s)", (url, secret, schedule)
            ).fetchone()
        except psycopg.Error as exc:
            typer.echo(f"error: {exc.diag.message_primary or exc}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"scheduled process-jobs-worker (cron job {row[0] if row else '?'})")


@app.command()
def queue(database_url: str | None = DatabaseUrl) -> None:
    """Show the queue_health view as a table."""
    with psycopg.connect(_database_url(database_url), row_factory=dict_row) as conn:
        rows = conn.execute("select * from queue_health order by job_type, status").fetchall()
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
    Console().print(table if rows else "the queue is empty")


@app.command()
def token(
    user_id: str | None = typer.Option(None, help="User id (default: the local dev user)."),
    ttl: int = typer.Option(3600, help="Lifetime in seconds."),
) -> None:
    """Mint an access token for the local embedded default (never for a real project)."""
    import uuid

    from api.dev import LOCAL_DIR, DevState, dev_token

    if not (LOCAL_DIR / "state.json").exists():
        typer.echo("error: no local stack here; run `make dev` first", err=True)
        raise typer.Exit(1)
    state = DevState.load(LOCAL_DIR)
    if user_id:
        state = DevState(**{**state.__dict__, "user_id": str(uuid.UUID(user_id))})
    typer.echo(dev_token(state, os.environ.get("SUPABASE_URL", DEFAULT_URL), ttl))


@app.command()
def dev(
    port: int = typer.Option(8000, help="Port of the service on 127.0.0.1."),
) -> None:
    """Run everything locally: PostgreSQL + pg_cron under .local/, the service, the file
    store and the Replicate simulator (unless REPLICATE_API_TOKEN is set)."""
    from api.dev import (
        LOCAL_DIR,
        DevState,
        dev_settings,
        dev_token,
        prepare_database,
        start_database,
    )
    from worker.simulator import SimulatorConfig, create_simulator_app

    host = "127.0.0.1"
    state = DevState.load(LOCAL_DIR)
    console.print("starting PostgreSQL (pg_cron) under .local/postgres ...")
    cluster = start_database(LOCAL_DIR, state)
    try:
        settings = dev_settings(state, host=host, port=port, database_url=cluster.url())
        base = settings.supabase_url or f"http://{host}:{port}"
        prepare_database(cluster.url(), state, base)
        access_token = dev_token(state, base)
        (LOCAL_DIR / "dev-token").write_text(access_token)
        real = bool(os.environ.get("REPLICATE_API_TOKEN"))
        console.print(
            f"""
[bold]imagegen is running[/bold]
  API            {base}/functions/v1/start-generation   (docs: {base}/docs)
  health         {base}/health      metrics: {base}/metrics
  database       {cluster.url()}
  storage        {base}/storage/v1/object/public/generated-images/...  (files in .local/storage)
  replicate      {
                "real Replicate (REPLICATE_API_TOKEN)"
                if real
                else f"SIMULATOR at {base}/replicate/v1 (no real model is called)"
            }
  pg_cron        process-jobs-worker calls {base}/functions/v1/process-jobs every minute
  dev user       {state.user_id}
  access token   saved in .local/dev-token

Try it in another shell:
  .venv/bin/imagegen generate "a lighthouse at dusk"
Ctrl-C stops everything.
"""
        )
        simulator = None if real else create_simulator_app(SimulatorConfig(latency_seconds=2.0))
        _serve(settings, run_jobs=True, storage_root=LOCAL_DIR / "storage", simulator=simulator)
    finally:
        console.print("stopping PostgreSQL ...")
        cluster.stop("fast")


def _default_token() -> str | None:
    from api.dev import LOCAL_DIR

    path = LOCAL_DIR / "dev-token"
    return os.environ.get("IMAGEGEN_TOKEN") or (path.read_text().strip() if path.exists() else None)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to draw."),
    model: str = typer.Option("black-forest-labs/flux-schnell", "--model", help="model_id"),
    width: int | None = typer.Option(None),
    height: int | None = typer.Option(None),
    url: str = typer.Option(DEFAULT_URL, envvar="IMAGEGEN_URL", help="The service's base URL."),
    access_token: str | None = typer.Option(
        None, "--token", help="User access token (default: IMAGEGEN_TOKEN or .local/dev-token)."
    ),
    timeout: float = typer.Option(600, help="Give up after this many seconds."),
) -> None:
    """Submit a prompt through the HTTP API as a user would, follow it, print the image URL."""
    bearer = access_token or _default_token()
    if not bearer:
        typer.echo("error: no access token; pass --token or run `make dev` first", err=True)
        raise typer.Exit(1)
    headers = {"Authorization": f"Bearer {bearer}"}
    body: dict[str, Any] = {"prompt": prompt, "model_id": model}
    if width:
        body["width"] = width
    if height:
        body["height"] = height
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        answer = client.post("/functions/v1/start-generation", json=body)
        if answer.status_code != 200:
            typer.echo(f"refused ({answer.status_code}): {_error(answer)}", err=True)
            raise typer.Exit(1)
        generation_id = answer.json()["generation_id"]
        generation = _follow(client, generation_id, timeout)
    if generation.get("status") != "completed":
        typer.echo(
            f"failed: {generation.get('error_message') or generation.get('status')}", err=True
        )
        raise typer.Exit(1)
    image = (generation.get("images") or [{}])[0]
    typer.echo(image.get("public_url", ""))


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text


def _follow(client: httpx.Client, generation_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    generation: dict[str, Any] = {}
    with console.status(f"generation {generation_id}: queued") as status:
        while time.monotonic() < deadline:
            response = client.get("/functions/v1/get-generation", params={"id": generation_id})
            if response.status_code == 200:
                generation = response.json()
                status.update(f"generation {generation_id}: {generation['status']}")
                if generation["status"] in ("completed", "failed"):
                    return generation
            time.sleep(0.5)
    generation.setdefault("error_message", f"still {generation.get('status')} after {timeout}s")
    return generation


if __name__ == "__main__":
    app()
