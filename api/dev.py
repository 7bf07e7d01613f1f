"""The embedded default (`make dev` / `imagegen dev`): everything on this machine.

A private PostgreSQL with pg_cron under .local/ (kept between runs), the migrations, the
cron schedule calling this service, the local Supabase-Storage-compatible file store and
the Replicate simulator (unless REPLICATE_API_TOKEN is set) served by the app itself,
and a signed-in local user with a dev access token.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from api.auth import mint_dev_token
from api.local_postgres import LocalPostgres, free_port
from worker.migrate import migrate
from worker.settings import Settings

LOCAL_DIR = Path(os.environ.get("IMAGEGEN_LOCAL_DIR", ".local"))
DEV_USER_EMAIL = "dev@imagegen.local"


@dataclass(frozen=True)
class DevState:
    """What must survive restarts: ports, secrets and the dev user."""

    postgres_port: int
    service_role_key: str
    jwt_secret: str
    worker_secret: str
    user_id: str

    @classmethod
    def load(cls, root: Path) -> DevState:
        path = root / "state.json"
        if path.exists():
            return cls(**json.loads(path.read_text()))
        state = cls(
            postgres_port=free_port(),
            service_role_key=secrets.token_urlsafe(32),
            jwt_secret=secrets.token_urlsafe(32),
            worker_secret=secrets.token_urlsafe(32),
            user_id=str(uuid.uuid4()),
        )
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state.__dict__, indent=2))
        path.chmod(0o600)
        return state


def dev_settings(state: DevState, *, host: str, port: int, database_url: str) -> Settings:
    base = f"http://{host}:{port}"
    real_replicate = bool(os.environ.get("REPLICATE_API_TOKEN"))
    values: dict[str, object] = {
        "database_url": database_url,
        "database_gateway": "postgres",
        "supabase_url": base,
        "supabase_service_role_key": state.service_role_key,
        "supabase_jwt_secret": state.jwt_secret,
        "worker_secret": state.worker_secret,
        "host": host,
        "port": port,
    }
    if not real_replicate:
        values |= {"replicate_base_url": f"{base}/replicate/v1", "replicate_api_token": "simulator"}
    # Explicit values win over the environment, which still fills in everything else.
    return Settings(**values)  # type: ignore[arg-type]


def start_database(root: Path, state: DevState) -> LocalPostgres:
    cluster = LocalPostgres(root / "postgres", port=state.postgres_port, cron_database="imagegen")
    cluster.init()
    if cluster.is_running():
        cluster.stop("fast")  # left by a run that was killed; restart with current settings
    cluster.start()
    migrate(cluster.url())
    return cluster


def prepare_database(database_url: str, state: DevState, worker_url: str) -> None:
    """The dev user exists, and pg_cron calls this service's process-jobs."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s) on conflict (id) do nothing",
            (state.user_id, DEV_USER_EMAIL),
        )
        conn.execute(
            "select public.configure_worker_cron(%s, %s)", (worker_url, state.worker_secret)
        )


def dev_token(state: DevState, supabase_url: str, ttl_seconds: int = 7 * 24 * 3600) -> str:
    return mint_dev_token(
        state.jwt_secret,
        uuid.UUID(state.user_id),
        email=DEV_USER_EMAIL,
        ttl_seconds=ttl_seconds,
        issuer=f"{supabase_url}/auth/v1",
    )
