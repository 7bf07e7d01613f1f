"""A private PostgreSQL 15 cluster (system binaries, pg_cron preloaded).

Used by `make dev` (kept under `.local/`), by the tests and by the benchmarks (in a
temporary directory). PostgreSQL refuses to run as root, so as root every server
command runs as the `postgres` system user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import psycopg

BIN_DIR = Path(os.environ.get("PG_BIN_DIR", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_url(port: int, password: str | None, database: str) -> str:
    user = f"postgres:{quote(password, safe='')}" if password else "postgres"
    return f"postgresql://{user}@127.0.0.1:{port}/{database}"


class LocalPostgres:
    """One cluster in `data_dir`, listening on 127.0.0.1:`port` and a private socket."""

    def __init__(
        self,
        root: Path,
        *,
        port: int | None = None,
        cron_database: str = "imagegen",
        durable: bool = True,
        password: str | None = None,
    ) -> None:
        """`password`: the `postgres` role's, required on TCP (scram) and peer on the
        socket; without one the cluster trusts every local connection (test clusters)."""
        self.root = root.absolute()  # commands run from inside it
        self.data_dir = root / "data"
        self.socket_dir = root / "run"
        self.log_file = root / "postgres.log"
        self.port = port or free_port()
        self.cron_database = cron_database
        self.durable = durable
        self.password = password

    def url(self, database: str | None = None) -> str:
        return postgres_url(self.port, self.password, database or self.cron_database)

    def _run(self, *args: str, check: bool = True) -> int:
        command = [str(BIN_DIR / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        # From inside the cluster's own directory: the postgres user may be unable to
        # enter the caller's working directory (a clone under /root).
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=self.root)
        if check and result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip()}\n{log}")
        return result.returncode

    def _own(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(path, "postgres", "postgres")

    def init(self) -> None:
        """Create the cluster unless it exists; (re)write its settings either way."""
        self._own(self.root)
        self._own(self.socket_dir)
        if not (self.data_dir / "PG_VERSION").exists():
            self._own(self.data_dir)
            self._initdb()
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "unix_socket_permissions": "0700",
            "shared_preload_libraries": "'pg_cron'",
            "cron.database_name": f"'{self.cron_database}'",
            "cron.use_background_workers": "on",
            "max_worker_processes": "32",
            "max_connections": "300",
            "shared_buffers": "256MB",
            "log_min_messages": "warning",
        }
        if not self.durable:
            # Throw-away test clusters: a crash loses the cluster, never the suite's time.
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        # include_dir-free: a file of our own, included last, so re-init just rewrites it.
        (self.data_dir / "imagegen.conf").write_text(
            "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        conf = self.data_dir / "postgresql.conf"
        if "include = 'imagegen.conf'" not in conf.read_text():
            with conf.open("a") as handle:
                handle.write("\ninclude = 'imagegen.conf'\n")

    def _initdb(self) -> None:
        auth = ["--auth=trust"]
        password_file = self.root / "initdb.pw"
        if self.password:
            password_file.write_text(self.password + "\n")
            password_file.chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(password_file, "postgres", "postgres")
            auth = ["--auth-local=peer", "--auth-host=scram-sha-256", f"--pwfile={password_file}"]
        try:
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                *auth,
                "--encoding=UTF8",
                "--locale=C.UTF-8",
            )
        finally:
            password_file.unlink(missing_ok=True)

    def start(self) -> None:
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60", "start"
        )
        self.create_database(self.cron_database, exist_ok=True)

    def is_running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False) == 0

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "restart",
        )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(
        self, name: str, *, template: str | None = None, exist_ok: bool = False
    ) -> str:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "select 1 from pg_database where datname = %s", (name,)
            ).fetchone()
            if exists and exist_ok:
                return self.url(name)
            sql = f'create database "{name}"'
            if template:
                sql += f' template "{template}" strategy file_copy'
            conn.execute(sql.encode())
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}" with (force)'.encode())


@contextmanager
def temporary_cluster(prefix: str, *, durable: bool) -> Iterator[LocalPostgres]:
    """A running cluster in a new temporary directory on a free port, removed at exit
    (the tests' throw-away one, the benchmarks' durable one)."""
    cluster = LocalPostgres(Path(tempfile.mkdtemp(prefix=prefix)), durable=durable)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()
