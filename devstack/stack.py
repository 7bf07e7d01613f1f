"""The embedded default (`make dev` / `imagegen dev`): everything on this machine.

A private PostgreSQL with pg_cron (kept between runs), the migrations, the cron schedule
calling this service, the local Supabase-Storage-compatible file store and the Replicate
simulator (unless REPLICATE_API_TOKEN is set) served by the app itself, and a signed-in
local user with a dev access token. Everything lives in the project's `.local/`, found
from wherever a command runs, so `rm -rf .local` (or `imagegen dev --reset`) starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import html
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg.rows import dict_row

from devstack.postgres import LocalPostgres, free_port, postgres_url
from devstack.tokens import mint_dev_token
from worker.errors import UserFacingError
from worker.logs import SafeStream
from worker.migrate import migrate
from worker.settings import Settings

DEV_USER_EMAIL = "dev@imagegen.local"
STATE_FILE = "state.json"  # ports, secrets, the dev user: what survives restarts
LOCK_FILE = "dev.lock"  # held while a stack runs; says its pid and URL
TOKEN_FILE = "dev-token"  # noqa: S105 (a file name)
# As root, PostgreSQL runs as the `postgres` user, who cannot enter a 0700 home such as
# /root where root's clones live. Rather than loosen the user's directories, the cluster
# lives here (postgres-owned) and `.local/postgres` links to it; a start that finds the
# link gone (`rm -rf .local`) removes what it pointed at, so a reset leaves nothing.
SHARED_CLUSTERS = Path("/var/lib/imagegen/dev")
# Defaults that show the system at its best locally; the environment still wins.
DEV_DEFAULTS = {"max_parallel_jobs": 32, "log_format": "console"}
SIMULATED_SECONDS = 2.0


class DevError(UserFacingError):
    """What the user is told in one line (no traceback)."""


def project_root(start: Path | None = None) -> Path:
    """The checkout holding this project: from the working directory up, else the one
    this code was installed from (so commands work from any directory)."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        pyproject = directory / "pyproject.toml"
        if pyproject.is_file() and 'name = "imagegen"' in pyproject.read_text():
            return directory
    installed = Path(__file__).resolve().parent.parent
    return installed if (installed / "pyproject.toml").is_file() else here


def local_dir() -> Path:
    """Absolute, always: PostgreSQL resolves relative paths from its data directory."""
    configured = os.environ.get("IMAGEGEN_LOCAL_DIR")
    return Path(configured).absolute() if configured else project_root() / ".local"


@dataclass(frozen=True)
class DevState:
    postgres_port: int
    postgres_password: str
    service_role_key: str
    jwt_secret: str
    worker_secret: str
    user_id: str

    @classmethod
    def read(cls, root: Path) -> DevState | None:
        path = root / STATE_FILE
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (TypeError, ValueError) as exc:
            raise DevError(
                f"{path} was written by an older imagegen; start over with"
                " `imagegen dev --reset` (it deletes the local database and images)"
            ) from exc

    @classmethod
    def load(cls, root: Path) -> DevState:
        state = cls.read(root)
        if state is not None:
            return state
        state = cls(
            postgres_port=free_port(),
            postgres_password=secrets.token_urlsafe(24),
            service_role_key=secrets.token_urlsafe(32),
            jwt_secret=secrets.token_urlsafe(32),
            worker_secret=secrets.token_urlsafe(32),
            user_id=str(uuid.uuid4()),
        )
        root.mkdir(parents=True, exist_ok=True)
        _write_private(root / STATE_FILE, json.dumps(asdict(state), indent=2))
        return state

    def database_url(self, database: str = "imagegen") -> str:
        return postgres_url(self.postgres_port, self.postgres_password, database)


def _write_private(path: Path, text: str) -> None:
    """Readable by its owner only, from the first byte (tokens, secrets)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


# One stack per directory.


@dataclass(frozen=True)
class RunningStack:
    pid: int
    url: str


@contextlib.contextmanager
def dev_lock(root: Path, pid: int, url: str) -> Iterator[None]:
    """Held for the stack's life: a second start sees who holds it and touches nothing."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = running_stack(root)
            where = f"pid {holder.pid}, on {holder.url}" if holder else "starting"
            raise DevError(f"imagegen dev is already running here ({where})") from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, json.dumps({"pid": pid, "url": url}).encode())
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)


def running_stack(root: Path) -> RunningStack | None:
    """The stack running from `root`, if one holds its lock."""
    path = root / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(path.read_text())
                return RunningStack(int(info["pid"]), str(info["url"]))
            except (ValueError, KeyError):
                return None  # between open and write: not serving yet
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


def check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        # As uvicorn binds: connections of an earlier run in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise DevError(
                    f"port {port} on {host} is in use; stop what uses it, or run"
                    " `imagegen dev --port N` (or PORT=N make dev)"
                ) from None
            raise DevError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


# The cluster.


def _cluster_key(root: Path) -> str:
    return hashlib.sha256(str(root).encode()).hexdigest()[:16]


def cluster_dir(root: Path) -> Path:
    """Where this stack's PostgreSQL lives (see SHARED_CLUSTERS)."""
    link = root / "postgres"
    if os.geteuid() != 0:
        return link
    target = SHARED_CLUSTERS / _cluster_key(root)
    if not link.is_symlink():
        if link.exists():
            raise DevError(f"{link} should be a link to the cluster; run `imagegen dev --reset`")
        _remove_cluster(target)  # left by a `rm -rf .local`: a reset means a new database
        SHARED_CLUSTERS.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return target


def _remove_cluster(directory: Path) -> None:
    if (directory / "data").exists():
        LocalPostgres(directory).stop("immediate")
    shutil.rmtree(directory, ignore_errors=True)


def reset(root: Path) -> None:
    """`imagegen dev --reset`: the database, the images, the tokens, all of `.local`."""
    if holder := running_stack(root):
        raise DevError(f"imagegen dev is running here (pid {holder.pid}); stop it first")
    link = root / "postgres"
    if link.is_symlink():
        _remove_cluster(link.resolve())
    elif (link / "data").exists():
        _remove_cluster(link)
    shutil.rmtree(root, ignore_errors=True)


def start_database(root: Path, state: DevState) -> LocalPostgres:
    cluster = LocalPostgres(
        cluster_dir(root),
        port=state.postgres_port,
        cron_database="imagegen",
        password=state.postgres_password,
    )
    cluster.init()
    if cluster.is_running():
        cluster.stop("fast")  # left by a run that was killed; restart with current settings
    cluster.start()
    migrate(cluster.url())
    return cluster


def worker_prefix(root: Path) -> str:
    return f"imagegen-dev:{_cluster_key(root)[:8]}:"


def prepare_database(database_url: str, state: DevState, worker_url: str, prefix: str) -> str:
    """The dev user exists; jobs an earlier dev worker held when it died are handed back
    at once (the lock says none of them is alive); pg_cron calls this service. Returns
    the cron schedule."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s) on conflict (id) do nothing",
            (state.user_id, DEV_USER_EMAIL),
        )
        conn.execute(
            "select public.release_jobs(locked_by, array_agg(id)) from job_queue"
            " where status = 'processing' and starts_with(locked_by, %s) group by locked_by",
            (prefix,),
        )
        scheduled = conn.execute(
            "select public.configure_worker_cron(%s, %s)", (worker_url, state.worker_secret)
        ).fetchone()
        row = conn.execute(
            "select schedule from cron.job where jobid = %s", (scheduled[0] if scheduled else None,)
        ).fetchone()
    return str(row[0]) if row else "?"


def describe_schedule(schedule: str) -> str:
    if schedule.strip() == "* * * * *":
        return "every minute"
    if schedule.endswith("seconds"):
        return f"every {schedule}"
    return f"on schedule '{schedule}'"


def dev_settings(
    state: DevState, *, host: str, port: int, database_url: str, worker_id: str
) -> Settings:
    base = f"http://{host}:{port}"
    values: dict[str, object] = {
        key: value for key, value in DEV_DEFAULTS.items() if key.upper() not in os.environ
    }
    values |= {
        "database_url": database_url,
        "database_gateway": "postgres",
        "supabase_url": base,
        "supabase_service_role_key": state.service_role_key,
        "supabase_jwt_secret": state.jwt_secret,
        "worker_secret": state.worker_secret,
        "worker_id": worker_id,
        "host": host,
        "port": port,
    }
    if not os.environ.get("REPLICATE_API_TOKEN"):
        # A fresh token per run: the simulator's prediction routes take only this one.
        values |= {
            "replicate_base_url": f"{base}/replicate/v1",
            "replicate_api_token": secrets.token_urlsafe(24),
            # The simulator serves outputs from this loopback origin, which nothing else may.
            "output_private_origins": base,
        }
    # Explicit values win over the environment, which still fills in everything else.
    return Settings(**values)  # type: ignore[arg-type]


def dev_simulator(settings: Settings, state: DevState) -> Any:
    """The Replicate simulator `make dev` mounts at /replicate: its API takes only this
    run's Replicate token, its controls only the dev secret (the worker secret)."""
    from devstack.simulator import SimulatorConfig, create_simulator_app

    token = settings.replicate_api_token
    return create_simulator_app(
        SimulatorConfig(latency_seconds=SIMULATED_SECONDS),
        api_token=token.get_secret_value() if token else None,
        control_secret=state.worker_secret,
    )


def dev_token(state: DevState, supabase_url: str, ttl_seconds: int = 7 * 24 * 3600) -> str:
    return mint_dev_token(
        state.jwt_secret,
        uuid.UUID(state.user_id),
        email=DEV_USER_EMAIL,
        ttl_seconds=ttl_seconds,
        issuer=f"{supabase_url}/auth/v1",
    )


_TERMINAL = SafeStream(sys.stderr)


def say(text: str) -> None:
    """To the terminal, whatever became of it (a closed pipe loses the line, not the
    shutdown)."""
    _TERMINAL.write(text + "\n")
    _TERMINAL.flush()


# The page at / on the dev stack: the product's links plus the latest images.


async def _latest_images(database_url: str, user_id: str) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(
        database_url, row_factory=dict_row, connect_timeout=5
    ) as conn:
        cursor = await conn.execute(
            "select public_url, prompt, model, width, height, created_at from images"
            " where user_id = %s order by created_at desc limit 12",
            (user_id,),
        )
        return await cursor.fetchall()


def _images_html(images: list[dict[str, Any]]) -> str:
    if not images:
        return '<p>No images yet: <code>.venv/bin/imagegen generate "a lighthouse"</code></p>'
    cells = "".join(
        f'<figure><a href="{html.escape(row["public_url"])}">'
        f'<img src="{html.escape(row["public_url"])}" loading="lazy" alt=""></a>'
        f"<figcaption>{html.escape(row['prompt'][:80])}<br><small>"
        f"{html.escape(str(row['model']))} · {row['width']}&times;{row['height']}</small>"
        "</figcaption></figure>"
        for row in images
    )
    return f'<div class="grid">{cells}</div>'


def add_home_page(app: Any, database_url: str, user_id: str) -> None:
    """Serve / with the dev user's latest images above the product's links."""
    from fastapi.responses import HTMLResponse
    from starlette.routing import Route

    from api.docs import home_page

    async def home(_request: Any) -> HTMLResponse:
        try:
            images = _images_html(await _latest_images(database_url, user_id))
        except psycopg.Error:
            images = "<p>The database is not answering.</p>"
        return HTMLResponse(home_page(f"<h2>Latest images (dev user)</h2>{images}"))

    # Ahead of the product's own / route.
    app.router.routes.insert(0, Route("/", home, methods=["GET"]))


def create_dev_app(
    settings: Settings, state: DevState, root: Path, database_url: str, *, simulate: bool
) -> Any:
    """The app `imagegen serve` runs, with the dev stack mounted around it: the file store
    at /storage/v1, the Replicate simulator at /replicate (`simulate`), the home page."""
    from api.app import create_app
    from devstack.storage import create_storage_app

    app = create_app(settings, run_jobs=True)
    key = settings.supabase_service_role_key
    app.mount(
        "/storage/v1",
        create_storage_app(root / "storage", key.get_secret_value() if key else ""),
    )
    if simulate:
        app.mount("/replicate", dev_simulator(settings, state))
    add_home_page(app, database_url, state.user_id)
    return app


# The whole stack.


def run(host: str, port: int) -> None:
    """Start everything, serve until Ctrl-C or SIGTERM, then stop in order: the runner
    drains (while the simulator and the file store still answer it), the HTTP server
    stops, PostgreSQL stops."""
    import uvicorn

    from api.limits import uvicorn_options
    from worker.logs import configure_logging

    root = local_dir()
    base = f"http://{host}:{port}"
    with dev_lock(root, os.getpid(), base):
        check_port_free(host, port)
        state = DevState.load(root)
        say(f"starting PostgreSQL (pg_cron) for {root} ...")
        cluster = start_database(root, state)
        try:
            prefix = worker_prefix(root)
            settings = dev_settings(
                state,
                host=host,
                port=port,
                database_url=cluster.url(),
                worker_id=f"{prefix}{os.getpid()}",
            )
            schedule = prepare_database(cluster.url(), state, base, prefix)
            _write_private(root / TOKEN_FILE, dev_token(state, base))
            real = bool(os.environ.get("REPLICATE_API_TOKEN"))
            configure_logging(settings.log_level, settings.log_format)
            app = create_dev_app(settings, state, root, cluster.url(), simulate=not real)
            say(_banner(settings, root, cluster, schedule, real))
            server = _DrainFirstServer(
                uvicorn.Config(
                    app,
                    host=host,
                    port=port,
                    log_level="warning",
                    log_config=None,  # uvicorn's lines go through our logging setup
                    timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
                    **uvicorn_options(),  # the header limits (api/limits.py)
                ),
                grace_seconds=settings.shutdown_grace_seconds + 10,
                database_url=cluster.url(),
            )
            with contextlib.suppress(KeyboardInterrupt):
                server.run()
        finally:
            say("stopping PostgreSQL ...")
            cluster.stop("fast")
            say("stopped")


class _DrainFirstServer:
    """uvicorn's Server, but the first Ctrl-C/SIGTERM drains the job runner before the
    server stops serving: the runner's jobs still reach the simulator and the file store
    that this same server serves. A second Ctrl-C stops the server without waiting."""

    def __init__(self, config: Any, *, grace_seconds: float, database_url: str) -> None:
        import uvicorn

        owner = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                if owner.draining or sig not in (signal.SIGINT, signal.SIGTERM):
                    super().handle_exit(sig, frame)
                    return
                owner.draining = True
                owner.loop.call_soon_threadsafe(owner.begin_drain)

        self.server = Server(config)
        self.app = config.app
        self.grace = grace_seconds
        self.database_url = database_url
        self.draining = False
        self.loop: asyncio.AbstractEventLoop
        self._task: asyncio.Task[None] | None = None

    def run(self) -> None:
        async def serve() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve()

        try:
            import uvloop
        except ImportError:
            asyncio.run(serve())
        else:
            uvloop.run(serve())

    def begin_drain(self) -> None:
        self._task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        say("stopping: finishing the generations in flight ...")
        service = getattr(self.app.state, "service", None)
        if service is not None:
            runner = service.worker.runner
            # The simulator forgets its outputs when it stops, so the downloads of
            # predictions already made are finished first; new predictions wait for the
            # next start in the queue.
            runner.job_types = ["download-image"]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.grace):
                    while runner.running or await _downloads_waiting(self.database_url):
                        runner.wake()
                        await asyncio.sleep(0.1)
            runner.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(runner.stopped.wait(), self.grace)
        self.server.should_exit = True


async def _downloads_waiting(database_url: str) -> bool:
    async with await psycopg.AsyncConnection.connect(database_url, connect_timeout=5) as conn:
        cursor = await conn.execute(
            "select exists (select from job_queue where job_type = 'download-image'"
            " and status in ('pending', 'processing'))"
        )
        row = await cursor.fetchone()
    return bool(row and row[0])


def _banner(
    settings: Settings, root: Path, cluster: LocalPostgres, schedule: str, real: bool
) -> str:
    base = settings.supabase_url
    replicate = (
        "real Replicate (REPLICATE_API_TOKEN)"
        if real
        else f"SIMULATOR at {base}/replicate/v1 (no real model is called)"
    )
    shown_url = cluster.url().replace(cluster.password or "\0", "***")
    return f"""
imagegen is running on {base}  (pid {os.getpid()})
  home           {base}/
  API docs       {base}/docs
  API            {base}/functions/v1/start-generation
  health         {base}/health
  metrics        {base}/metrics
  database       {shown_url}  (password in {root / STATE_FILE})
  storage        {base}/storage/v1/object/public/generated-images/...
                 files in {root / "storage"}
  replicate      {replicate}
  jobs           {settings.max_parallel_jobs} at once; pg_cron calls process-jobs \
{describe_schedule(schedule)}
  dev user       {DEV_USER_EMAIL} ({root / TOKEN_FILE} holds its access token)

Try it in another shell:
  .venv/bin/imagegen generate "a lighthouse at dusk"
  .venv/bin/imagegen models
Ctrl-C stops everything.
"""


def main_guard(action: Any) -> None:
    """Run a dev command; a DevError is one line on stderr and exit status 1."""
    try:
        action()
    except DevError as exc:
        say(f"error: {exc}")
        sys.exit(1)
