"""The product apart from its doubles: `api/` and `worker/` load no part of the dev stack
(devstack/) or of the tests, the Docker image holds none of it, and `imagegen dev` is
the app `serve` runs with the stand-ins mounted around it."""

from __future__ import annotations

import fnmatch
import inspect
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from fastapi import FastAPI
from starlette.routing import Mount

from api.app import create_app
from devstack.stack import DevState, create_dev_app, dev_settings
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PRODUCT = ("api", "worker")
# What a double is, whatever module holds it: each stand-in's entry point.
DOUBLES = (
    "create_simulator_app",
    "create_storage_app",
    "LocalPostgres",
    "BackgroundServer",
    "mint_dev_token",
)

IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import api.app, worker.service, api.cli  # what `serve`, `worker` and the CLI start from
for package in {packages!r}:
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(info.name)
doubles = {doubles!r}
print(json.dumps({{
    "modules": sorted(sys.modules),
    "with_doubles": sorted(
        name for name, module in list(sys.modules.items())
        if any(hasattr(module, double) for double in doubles)
    ),
}}))
"""


def test_importing_the_product_loads_no_double() -> None:
    """Every module of api/ and worker/, in a fresh interpreter: no module of devstack/ or
    tests/ comes along, and no loaded module defines a stand-in."""
    code = IMPORT_EVERYTHING.format(packages=PRODUCT, doubles=DOUBLES)
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert "api.cli" in loaded["modules"] and "worker.jobs.download_image" in loaded["modules"]
    assert [m for m in loaded["modules"] if m.split(".")[0] in ("devstack", "tests")] == []
    assert loaded["with_doubles"] == []


def test_the_production_factory_knows_no_double() -> None:
    assert list(inspect.signature(create_app).parameters) == ["settings", "run_jobs"]
    app = create_app(Settings(database_url="postgresql://127.0.0.1:1/unused"))
    mounts = [route.path for route in app.routes if isinstance(route, Mount)]
    assert mounts == ["/docs-assets"]  # Swagger UI's files (api/docs.py), no stand-in


def test_dev_is_the_served_app_with_the_stand_ins_mounted(tmp_path: Path) -> None:
    state = DevState(1, "pw", "service-role-key", "j" * 32, "w" * 32, str(uuid.UUID(int=1)))
    settings = dev_settings(
        state, host="127.0.0.1", port=1, database_url="postgresql://127.0.0.1:1/x", worker_id="w"
    )

    def routes(app: FastAPI) -> list[tuple[str, str]]:
        return [(type(route).__name__, getattr(route, "path", "")) for route in app.routes]

    served = routes(create_app(settings, run_jobs=True))
    for simulate, extra in ((True, ["/storage/v1", "/replicate"]), (False, ["/storage/v1"])):
        dev = routes(create_dev_app(settings, state, tmp_path, "postgresql://x", simulate=simulate))
        assert dev == [("Route", "/"), *served, *(("Mount", path) for path in extra)]


# The Docker image: what the build context holds (.dockerignore), what the Dockerfile
# copies of it, and what `pip install .` of those files installs.


def context_files() -> list[str]:
    """The files `docker build .` sends from a clone: tracked ones, minus .dockerignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    patterns = [
        line.strip().strip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Exclusions only: a `!` exception would need Docker's full rules, which this is not.
    assert not [p for p in patterns if p.startswith("!")]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        return any(fnmatch.fnmatchcase(p, pattern) for p in prefixes for pattern in patterns)

    return [name for name in filter(None, listed.split("\0")) if not ignored(name)]


def copy_instructions(stage_that_runs: str = "") -> list[list[str]]:
    """Every `COPY src... dest` that reads the build context (not `--from=` a stage), of
    the stages whose lines contain `stage_that_runs`."""
    stages = re.split(r"^FROM ", (REPO / "Dockerfile").read_text(), flags=re.MULTILINE)
    copies = []
    for stage in stages:
        if stage_that_runs not in stage:
            continue
        for line in stage.splitlines():
            words = line.split()
            if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
                copies.append([w for w in words[1:] if not w.startswith("--")])
    return copies


def copied(files: list[str], sources: list[str]) -> list[tuple[str, str]]:
    """(context file, path under the source it was named by) for each file COPY takes."""
    taken = []
    for source in sources:
        source = source.strip("/") if source not in (".", "./") else ""
        for name in files:
            if name == source:
                taken.append((name, Path(name).name))
            elif source == "" or name.startswith(source + "/"):
                taken.append((name, name[len(source) :].lstrip("/")))
    return taken


def test_the_docker_build_context_excludes_the_devstack() -> None:
    files = context_files()
    assert "api/app.py" in files and "worker/service.py" in files
    assert [name for name in files if name.startswith(("devstack/", "tests/"))] == []
    for *sources, _dest in copy_instructions():
        assert [n for n, _ in copied(files, sources) if n.startswith("devstack/")] == []


def test_the_image_installs_no_double(tmp_path: Path) -> None:
    """The build stage laid out as the Dockerfile copies it, then built as `pip install .`
    builds it (setuptools' build_py): only api/ and worker/, no stand-in among them."""
    files = context_files()
    stage = tmp_path / "src"
    for *sources, dest in copy_instructions("pip install ."):
        for name, relative in copied(files, sources):
            target = stage / dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target)
    assert (stage / "pyproject.toml").is_file() and (stage / "api" / "app.py").is_file()
    build = ["build_py", "--build-lib", str(tmp_path / "built")]
    subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", *build],
        cwd=stage,
        capture_output=True,
        check=True,
        timeout=120,
    )
    built = sorted(
        str(p.relative_to(tmp_path / "built")) for p in (tmp_path / "built").rglob("*.py")
    )
    assert "api/cli.py" in built and "worker/service.py" in built
    assert {name.split("/")[0] for name in built} == set(PRODUCT)
    stand_in = re.compile(rf"^(?:def|class) (?:{'|'.join(DOUBLES)})\b", re.MULTILINE)
    assert [n for n in built if stand_in.search((tmp_path / "built" / n).read_text())] == []


def test_the_cli_without_the_devstack_says_so() -> None:
    """As in the image: `dev` and `token` refuse in one line, `generate` still takes --url."""
    hide = "import sys; sys.modules['devstack'] = None; from api.cli import app; app()"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", hide, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )

    for command in (["dev"], ["token"]):
        result = cli(*command)
        assert result.returncode == 1
        assert result.stderr.strip() == (
            "error: this installation has no dev stack (devstack/): run it from a checkout,"
            " `make dev`"
        )
    queue = cli("queue")
    assert queue.returncode == 1
    assert (
        queue.stderr.strip()
        == "error: no database given: pass --database-url (or set DATABASE_URL)"
    )
