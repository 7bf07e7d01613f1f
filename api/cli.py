"""The `imagegen` command line."""

from __future__ import annotations

import os

import typer

from worker.migrate import MigrationError, migrate

app = typer.Typer(help="imagegen: PostgreSQL-backed image generation.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """imagegen: PostgreSQL-backed image generation."""


def _database_url(option: str | None) -> str:
    url = option or os.environ.get("DATABASE_URL")
    if not url:
        raise typer.BadParameter("give --database-url or set DATABASE_URL")
    return url


@app.command("migrate")
def migrate_command(
    database_url: str | None = typer.Option(None, help="PostgreSQL URL (else DATABASE_URL)."),
) -> None:
    """Apply the SQL migrations in sql/ that the database has not seen yet."""
    try:
        applied = migrate(_database_url(database_url))
    except MigrationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if applied:
        for name in applied:
            typer.echo(f"applied {name}")
    else:
        typer.echo("database is up to date")


if __name__ == "__main__":
    app()
