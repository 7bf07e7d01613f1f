"""Hardening (issue 13): what an attacker and a crash found, each point replayed.

Over real HTTP against the assembled service (tests.integration.test_abuse's loopback stand-ins)
unless a point concerns one part alone (the storage stand-in, the simulator).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route

from api.app import create_app
from api.limits import MAX_HEADER_BYTES, MAX_HEADERS, uvicorn_options
from devstack.postgres import LocalPostgres
from devstack.simulator import SimulatorConfig
from devstack.stack import DevState, dev_settings, dev_simulator
from tests.conftest import make_user
from tests.support.background_server import BackgroundServer
from tests.support.generations import start_generation
from tests.support.outbound import Listener
from tests.support.pg import connect
from tests.support.served import FLUX, Served, error_body, serve_app, traces
from tests.support.served import serve as served_stack
from tests.support.stack import Stack, run_stack
from tests.support.torture import TortureReport, scale
from tests.support.workers import simulator_predictions, spawn_worker, wait_for
from worker.database import Database, Job
from worker.migrate import migrate
from worker.postgres_gateway import PostgresGateway
from worker.replicate import OutputPolicy, OutputRefused, ReplicateClient
from worker.runner import Runner
from worker.settings import Settings

Conn = psycopg.Connection[dict[str, Any]]
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


def serve(
    database_url: str, tmp_path: Path, *, run_jobs: bool = False
) -> AbstractContextManager[Served]:
    return served_stack(
        database_url, tmp_path / "storage", SimulatorConfig(latency_seconds=0.0), run_jobs=run_jobs
    )


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[Served]:
    """No job runner: whatever changes in the database, a request wrote."""
    with serve(database_url, tmp_path) as running:
        yield running


# -- 1. bodies that do not parse


def test_every_unparsable_body_is_a_400_naming_the_problem(conn: Conn, service: Served) -> None:
    auth = f"Bearer {service.token(make_user(conn))}"
    fine = {"prompt": "a cat", "model_id": FLUX}
    bodies = {
        b"[" * 1500: "nests more than",
        b'{"prompt": ' + b"[" * 40 + b"]" * 40 + b', "model_id": "x"}': "nests more than",
        b'{"prompt": "a cat", "x": ' + b'{"a":' * 33 + b"1" + b"}" * 33 + b"}": "nests more",
        b"\xff\xfe{}": "UTF-8",
        b'{"prompt": "a cat", "model_id": "x", "seed": NaN}': "NaN",
        b'{"prompt": "a cat", "seed": ' + b"9" * 5000 + b"}": "digits",
        b'{"prompt": "a cat",}': "must be JSON",
        b'{"prompt": "a cat"': "must be JSON",
        b'"just a string"': "JSON object",
        b"[]": "JSON object",
    }
    before = traces(conn)
    for body, problem in bodies.items():
        for name in ("start-generation", "generate-image"):
            response = service.call(
                "POST", name, auth, content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code == 400, (body[:40], response.text)
            assert problem in error_body(response), (body[:40], response.text)
    assert traces(conn) == before
    # Brackets inside strings are text, however many; the depth a body needs still passes.
    deep_text = fine | {"prompt": "[" * 2000, "extra": {"a": [[1]]}}
    assert service.call("POST", "start-generation", auth, json=deep_text).status_code == 200


# -- 7. prompts that only look like text


@pytest.mark.parametrize(
    "prompt",
    ["\u00a0\u00a0", "\u200b", "\ufeff", "\x01\x02\x7f", "\u200b \u00a0\ufeff\u2060\u3000"],
)
def test_blank_looking_prompts_are_refused_at_the_door(
    conn: Conn, service: Served, prompt: str
) -> None:
    auth = f"Bearer {service.token(make_user(conn))}"
    before = traces(conn)
    for name in ("start-generation", "generate-image"):
        response = service.call("POST", name, auth, json={"prompt": prompt, "model_id": FLUX})
        assert response.status_code == 400, (name, response.text)
        assert "prompt" in error_body(response)
    assert traces(conn) == before
    visible = service.call(
        "POST", "start-generation", auth, json={"prompt": f"{prompt}a cat", "model_id": FLUX}
    )
    assert visible.status_code == 200, visible.text


# -- 5. the dev simulator


def test_the_dev_simulator_takes_only_its_token_and_the_dev_secret(tmp_path: Path) -> None:
    state = DevState.load(tmp_path)
    settings = dev_settings(
        state, host="127.0.0.1", port=8000, database_url="postgresql:///x", worker_id="w"
    )
    token = settings.replicate_api_token
    assert token is not None
    app = Starlette(routes=[Mount("/replicate", dev_simulator(settings, state))])
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=10) as http:
        right = {"Authorization": f"Bearer {token.get_secret_value()}"}
        created = http.post(
            "/replicate/v1/models/black-forest-labs/flux-schnell/predictions",
            json={"input": {"prompt": "a private prompt", "aspect_ratio": "1:1"}},
            headers=right,
        )
        assert created.status_code == 201, created.text
        prediction = created.json()["id"]
        for bearer in ("anything", state.worker_secret, "r8_" + "x" * 37):
            wrong = {"Authorization": f"Bearer {bearer}"}
            for method, path in [
                ("GET", "/replicate/v1/predictions"),
                ("GET", f"/replicate/v1/predictions/{prediction}"),
                ("POST", f"/replicate/v1/predictions/{prediction}/cancel"),
            ]:
                response = http.request(method, path, headers=wrong)
                assert response.status_code == 401, (bearer, path, response.text)
        assert http.get("/replicate/v1/predictions", headers=right).json()["results"]

        secret = {"Authorization": f"Bearer {state.worker_secret}"}
        override = json.dumps({"output_override": "http://169.254.169.254/latest/meta-data"})
        for headers in ({}, right, {"Authorization": "Bearer anything"}):
            for method, path in [
                ("GET", "/replicate/_simulator/stats"),
                ("POST", "/replicate/_simulator/reset"),
                ("GET", "/replicate/_simulator/config"),
            ]:
                assert http.request(method, path, headers=headers).status_code == 401, path
            posted = http.post(
                "/replicate/_simulator/config",
                content=override,
                headers=headers | {"Content-Type": "application/json"},
            )
            assert posted.status_code == 401
        # What a web page can send without a preflight: text/plain, even with the secret.
        for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
            posted = http.post(
                "/replicate/_simulator/config",
                content=override,
                headers=secret | ({"Content-Type": content_type} if content_type else {}),
            )
            assert posted.status_code == 415, (content_type, posted.text)
        config = http.get("/replicate/_simulator/config", headers=secret).json()
        assert config["output_override"] is None
        assert http.get("/replicate/_simulator/stats", headers=secret).status_code == 200


def test_serve_never_mounts_the_simulator() -> None:
    assert "simulator" not in inspect.signature(create_app).parameters


# -- 3. output downloads


def _wait_for_generations(conn: Conn, ids: list[str], seconds: float = 30) -> list[dict[str, Any]]:
    """The generations' rows once none is still on its way (or after `seconds`)."""
    deadline = time.monotonic() + seconds
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = conn.execute(
            "select g.id::text, g.status, g.error_message,"
            " (select count(*) from images i where i.generation_id = g.id) as images,"
            " (select i.storage_path from images i where i.generation_id = g.id) as storage_path"
            " from image_generations g where g.id = any(%s::uuid[]) order by g.created_at",
            (ids,),
        ).fetchall()
        if rows and all(row["status"] in ("completed", "failed") for row in rows):
            break
        time.sleep(0.1)
    return rows


def _start(service: Served, token: str, **body: Any) -> str:
    started = service.call(
        "POST", "start-generation", token, json={"prompt": "x", "model_id": FLUX} | body
    )
    assert started.status_code == 200, started.text
    return str(started.json()["generation_id"])


def test_output_urls_to_internal_addresses_are_never_fetched(
    conn: Conn, database_url: str, tmp_path: Path, listener: Listener
) -> None:
    """A provider's output URL (here the simulator's `output_override`) pointing inside:
    the generation fails, nothing connects, nothing is stored."""
    user = make_user(conn)
    targets = [
        f"http://127.0.0.1:{listener.port}/a.png",
        f"http://localhost:{listener.port}/a.png",
        f"http://[::ffff:127.0.0.1]:{listener.port}/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/a.png",
    ]
    with serve(database_url, tmp_path, run_jobs=True) as service:
        token = f"Bearer {service.token(user)}"
        ids = []
        for target in targets:
            service.stack.configure_simulator(output_override=[target])
            ids.append(_start(service, token))
            _wait_for_generations(conn, ids[-1:])
        rows = _wait_for_generations(conn, ids)
        assert [row["status"] for row in rows] == ["failed"] * len(targets), rows
        assert all("private or reserved" in row["error_message"] for row in rows), rows
        assert all(row["images"] == 0 for row in rows)
        # The stack's own simulator origin is the one allowance (tests/support/stack.py).
        service.stack.configure_simulator(output_override=None)
        done = _wait_for_generations(conn, [_start(service, token)])
        assert done[0]["status"] == "completed", done
    assert listener.hits == []


async def test_every_redirect_hop_of_an_output_is_vetted(listener: Listener) -> None:
    """A trusted origin (127.0.0.2, standing for the provider) redirecting inside: refused
    at the hop, the listener never reached; a redirect to the allowed host passes."""

    async def redirect(request: Request) -> Response:
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def image(_request: Request) -> Response:
        return Response(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, media_type="image/png")

    app = Starlette(routes=[Route("/redirect", redirect), Route("/a.png", image)])
    with BackgroundServer(app, host="127.0.0.2") as provider:
        policy = OutputPolicy(private_origins=frozenset({provider.url.rstrip("/")}))
        async with ReplicateClient(f"{provider.url}/v1", "r8_x", timeout=5) as client:
            for target in (
                f"http://127.0.0.1:{listener.port}/a.png",
                "http://169.254.169.254/",
                "file:///etc/passwd",
            ):
                with pytest.raises(OutputRefused):
                    await client.download_output(
                        f"{provider.url}/redirect?to={target}",
                        io.BytesIO(),
                        max_bytes=10_000,
                        timeout=5,
                        policy=policy,
                    )
            spool = io.BytesIO()
            fine = await client.download_output(
                f"{provider.url}/redirect?to=/a.png",
                spool,
                max_bytes=10_000,
                timeout=5,
                policy=policy,
            )
            assert fine.size == 108 and spool.getvalue().startswith(b"\x89PNG")
            # An allow-list of delivery hosts: any other host is refused before connecting.
            only_replicate = OutputPolicy(hosts=("replicate.delivery",))
            with pytest.raises(OutputRefused, match="allowed output host"):
                await client.download_output(
                    f"http://127.0.0.1:{listener.port}/a.png",
                    io.BytesIO(),
                    max_bytes=10_000,
                    timeout=5,
                    policy=only_replicate,
                )
    assert listener.hits == []


def test_output_hosts_default_to_replicates_delivery_domain() -> None:
    assert Settings().output_host_list == ("replicate.delivery",)
    assert Settings(replicate_base_url="http://127.0.0.1:8787/v1").output_host_list == ()
    assert Settings(output_hosts="cdn.example, Other.Example.").output_host_list == (
        "cdn.example",
        "other.example",
    )
    assert Settings().output_private_origin_set == frozenset()
    assert Settings(output_private_origins="http://127.0.0.1:8000").output_private_origin_set == {
        "http://127.0.0.1:8000"
    }


# -- 4. SVG outputs

HOSTILE_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
    ' width="64" height="32" onload="alert(1)">'
    "<script>alert(document.cookie)</script>"
    '<rect width="64" height="32" fill="red" onclick="steal()"/>'
    '<a xlink:href="javascript:alert(2)"><circle r="4"/></a>'
    '<foreignObject><iframe xmlns="http://www.w3.org/1999/xhtml" src="https://evil.example"/>'
    "</foreignObject></svg>"
)


def test_svg_outputs_are_sanitized_before_they_are_stored(
    conn: Conn, database_url: str, tmp_path: Path
) -> None:
    user = make_user(conn)
    with serve(database_url, tmp_path, run_jobs=True) as service:
        token = f"Bearer {service.token(user)}"
        service.stack.configure_simulator(
            output_body=HOSTILE_SVG, output_content_type="image/svg+xml"
        )
        generation = _start(service, token, model_id="recraft-ai/recraft-v3-svg")
        row = _wait_for_generations(conn, [generation])[0]
        assert row["status"] == "completed", row
        public = f"{service.stack.url}/storage/v1/object/public/generated-images"
        stored = httpx.get(f"{public}/{row['storage_path']}", timeout=10)
        assert stored.headers["content-type"] == "image/svg+xml"
        assert stored.headers["x-content-type-options"] == "nosniff"
        text = stored.text.lower()
        for hostile in ("<script", "onload", "onclick", "javascript:", "iframe", "evil."):
            assert hostile not in text, (hostile, stored.text)
        assert "<rect" in text and 'width="64"' in text  # the drawing itself survives
        image = conn.execute(
            "select file_size, width, height from images where generation_id = %s",
            (generation,),
        ).fetchone()
        assert image == {"file_size": len(stored.content), "width": 64, "height": 32}
        # What is not an image of the four types is refused, whatever it is served as.
        service.stack.configure_simulator(
            output_body="<html><body>hi</body></html>", output_content_type="image/svg+xml"
        )
        refused = _wait_for_generations(conn, [_start(service, token)])[0]
        assert refused["status"] == "failed" and refused["images"] == 0, refused


# -- 2. header and body limits


def _raw_request(port: int, head: bytes, body_chunks: Iterable[bytes] = ()) -> bytes:
    """Send `head` (then `body_chunks`) on one connection; what the server answers
    before closing, or b"" when it only closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed while we were still sending: what is wanted
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
        return answer


def _huge_header(total: int) -> Iterator[bytes]:
    """A header value of `total` bytes, sent a megabyte at a time (never built whole)."""
    sent = 0
    while sent < total:
        sent += 1 << 20
        yield b"a" * (1 << 20)
    yield b"\r\n\r\n"


def test_header_limits_of_the_served_protocol(
    conn: Conn, database_url: str, tmp_path: Path
) -> None:
    """The protocol `imagegen serve`, `api` and `dev` run (api.limits.uvicorn_options):
    a header block over the cap is a 431 while it arrives; so are too many headers; a
    declared body over the endpoints' limit is a 413 before anything reads it; normal
    requests, bodies after headers and keep-alive all still work."""
    assert uvicorn_options()["http"].__name__ == "LimitedHttpToolsProtocol"
    user = make_user(conn)
    with (
        run_stack(database_url, tmp_path / "storage") as stack,
        serve_app(stack, run_jobs=False, server_options=uvicorn_options()) as server,
    ):
        port = server.port
        # 64 MB in one header: refused once the first 32 KiB are in, not at the end.
        answer = _raw_request(
            port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ", _huge_header(64 << 20)
        )
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b'"error"' in answer
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
        answer = _raw_request(port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        long_url = b"GET /health?" + b"q" * (MAX_HEADER_BYTES + 10) + b" HTTP/1.1\r\n\r\n"
        assert _raw_request(port, long_url).startswith(b"HTTP/1.1 431 ")

        token = server.token(user)
        before = traces(conn)
        head = (
            b"POST /functions/v1/start-generation HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
        )
        answer = _raw_request(port, head)  # 100 MB declared, none sent: answered anyway
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert traces(conn) == before

        with httpx.Client(base_url=server.url, timeout=10) as http:
            body = {"prompt": "a cat", "model_id": FLUX, "pad": "p" * 40_000}
            big_but_fine = {"Authorization": f"Bearer {token}", "X-Pad": "h" * 20_000}
            for _ in range(3):  # keep-alive: the count starts again for each request
                response = http.post(
                    "/functions/v1/start-generation", json=body, headers=big_but_fine
                )
                assert response.status_code == 200, response.text
            assert http.get("/health").status_code == 200


# -- 10. crash recovery in seconds, not a lease


def test_a_dead_workers_session_frees_its_jobs_and_a_live_ones_does_not(
    conn: Conn, database_url: str, user_id: uuid.UUID
) -> None:
    """The SQL alone: a registered worker's jobs are freed once its session ends, never
    while it lives; an unregistered holder (the old worker) keeps its lease."""
    generations = [start_generation(conn, user_id, FLUX, f"liveness {i}") for i in range(3)]
    assert len(generations) == 3
    alive = psycopg.connect(database_url, autocommit=True)
    doomed = psycopg.connect(database_url, autocommit=True)
    try:
        for conn_, worker in ((alive, "w-alive"), (doomed, "w-doomed")):
            registered = conn_.execute("select register_worker(%s)", (worker,)).fetchone()
            assert registered == (True,)
        # The same id from a second session while the first lives: refused.
        assert conn.execute("select register_worker('w-alive') as ok").fetchone() == {"ok": False}
        for worker in ("w-alive", "w-doomed", "old-worker"):
            conn.execute("select * from claim_jobs(%s, 1, null, 120)", (worker,))
        assert conn.execute("select reclaim_dead_workers() as n").fetchone() == {"n": 0}
        doomed.close()
        deadline = time.monotonic() + 10  # the server notices the closed session at once
        while conn.execute("select reclaim_dead_workers() as n").fetchone() != {"n": 1}:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rows = conn.execute(
            "select locked_by, locked_until <= now() as free from job_queue order by locked_by"
        ).fetchall()
        assert rows == [
            {"locked_by": "old-worker", "free": False},
            {"locked_by": "w-alive", "free": False},
            {"locked_by": "w-doomed", "free": True},
        ]
        taken = conn.execute("select locked_by, attempts from claim_jobs('w-alive', 5)").fetchall()
        assert taken == [{"locked_by": "w-alive", "attempts": 2}]
    finally:
        alive.close()
        doomed.close()


async def test_a_worker_claims_only_once_its_session_is_registered(
    conn: Conn, database_url: str
) -> None:
    """Killed between its first claim and its registration, a worker would leave its jobs
    to the lease (minutes): the runner claims once its liveness session is registered."""

    class SlowToRegister(Database):
        async def hold_session(self, worker_id: str, registered: asyncio.Event) -> None:
            await asyncio.sleep(1.0)
            await super().hold_session(worker_id, registered)

    seen: list[bool] = []

    async def handler(_job: Job, _context: Any) -> None:
        row = conn.execute(
            "select exists (select from imagegen.worker_sessions where worker_id = 'w-slow')"
        ).fetchone()
        seen.append(bool(row and row["exists"]))

    conn.execute("select enqueue_job('test-job', '{}')")
    gateway = PostgresGateway(database_url, max_size=2)
    await gateway.open()
    runner = Runner(
        SlowToRegister(gateway), {"test-job": handler}, None, worker_id="w-slow", listen=False
    )
    running = asyncio.create_task(runner.run())
    try:
        deadline = time.monotonic() + 10
        while not seen:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        runner.stop()
        await running
        await gateway.close()
    assert seen == [True]


@pytest.mark.torture
async def test_kill_9_jobs_run_elsewhere_long_before_the_lease_ends(
    conn: Conn, database_url: str, stack: Stack, tmp_path: Path, torture_report: TortureReport
) -> None:
    count = scale(6, 24)
    lease = 120
    stack.configure_simulator(latency_seconds=2.0)
    user = make_user(conn)
    ids = [start_generation(conn, user, FLUX, f"crash recovery {i}") for i in range(count)]
    env = {
        "LEASE_SECONDS": str(lease),
        "POLL_INTERVAL_SECONDS": "0.5",
        "MAX_PARALLEL_JOBS": str(count),
        "LIVENESS_CHECK_SECONDS": "0.5",
    }
    first = spawn_worker(stack.settings(), tmp_path / "first.log", **env)
    second: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 30
        held: list[dict[str, Any]] = []
        while len(held) < count:
            assert time.monotonic() < deadline, held
            await asyncio.sleep(0.05)
            held = conn.execute(
                "select id, locked_until from job_queue where status = 'processing'"
                " and job_type = 'generate-image'"
            ).fetchall()
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed = time.monotonic()
        second = spawn_worker(stack.settings(), tmp_path / "second.log", **env)
        rows = await wait_for(database_url, ids, timeout=90)
        recovered = round(time.monotonic() - killed, 1)
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
    assert [row["status"] for row in rows.values()] == ["completed"] * count
    # State, not time: each job was done by the other worker while its lease still ran.
    lease_ends = {row["id"]: row["locked_until"] for row in held}
    done = conn.execute(
        "select id, completed_at, attempts from job_queue where id = any(%s)",
        (list(lease_ends),),
    ).fetchall()
    assert all(row["completed_at"] < lease_ends[row["id"]] for row in done), done
    assert all(row["attempts"] == 2 for row in done), done
    # Exactly one prediction per generation: the second worker adopted the first's.
    prompts = Counter(p["input"]["prompt"] for p in simulator_predictions(stack))
    assert prompts == Counter(f"crash recovery {i}" for i in range(count))
    torture_report.record(
        "crash recovery: kill -9 holding jobs",
        jobs=count,
        lease_s=lease,
        all_done_after_s=recovered,
    )


# -- 9. the database down


def test_start_generation_answers_503_with_retry_after_while_the_database_is_down(
    cluster: LocalPostgres, tmp_path: Path
) -> None:
    """No timed assertion: the answer must come within the client's 8 s (the pool's own
    timeout is 10 s; the request's, database_request_timeout_seconds, 1.5 s)."""
    url = cluster.create_database("outage")
    migrate(url)
    with run_stack(url, tmp_path / "storage") as stack, connect(url) as setup:
        user = make_user(setup)
        body = {"prompt": "a lighthouse", "model_id": FLUX}
        with (
            serve_app(stack, run_jobs=False) as served,
            httpx.Client(base_url=served.url, timeout=8, headers=served.headers(user)) as http,
        ):
            assert served.settings.database_request_timeout_seconds < 2
            assert http.post("/functions/v1/start-generation", json=body).status_code == 200
            cluster.stop("fast")
            try:
                for attempt in range(3):  # the broken pooled connection, then waits for one
                    started = time.monotonic()
                    response = http.post("/functions/v1/start-generation", json=body)
                    seconds = time.monotonic() - started
                    print(f"outage answer {attempt}: {response.status_code} in {seconds:.2f} s")
                    assert response.status_code == 503, response.text
                    assert response.headers["retry-after"].isdigit()
                    assert "temporarily unavailable" in response.json()["error"]
                assert http.get("/health").status_code == 503
            finally:
                cluster.start()
            deadline = time.monotonic() + 30
            while http.post("/functions/v1/start-generation", json=body).status_code != 200:
                assert time.monotonic() < deadline, "the service did not come back"
                time.sleep(0.2)


# -- 11. one client's flood


async def test_a_flood_from_one_client_is_refused_before_the_database(
    conn: Conn, service: Served
) -> None:
    """400 requests at once on one token: past the per-client cap they are 429 with
    Retry-After from the API process itself (no database call: nothing queues for the
    pool), so another user and /health are answered meanwhile."""
    greedy, other = make_user(conn), make_user(conn)
    body = {"prompt": "a flood of lighthouses", "model_id": FLUX}
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=service.url, timeout=60, limits=limits) as http:
        flood_headers = {"Authorization": f"Bearer {service.token(greedy)}"}

        async def flood_one() -> httpx.Response:
            return await http.post(
                "/functions/v1/start-generation", json=body, headers=flood_headers
            )

        flood = [asyncio.create_task(flood_one()) for _ in range(400)]
        await asyncio.sleep(0.05)
        other_answer = await http.post(
            "/functions/v1/start-generation",
            json=body,
            headers={"Authorization": f"Bearer {service.token(other)}"},
        )
        health = await http.get("/health")
        answers = await asyncio.gather(*flood)
    assert other_answer.status_code == 200, other_answer.text
    assert health.status_code == 200
    statuses = Counter(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 429}, statuses
    capped = [a for a in answers if a.status_code == 429 and "in flight" in a.json()["error"]]
    assert capped, statuses
    assert all(answer.headers["retry-after"].isdigit() for answer in capped)
    written = conn.execute(
        "select count(*) as n from image_generations where user_id = %s", (greedy,)
    ).fetchone()
    assert written == {"n": statuses[200]}


def test_pipelined_requests_beyond_the_header_budget_are_all_answered(tmp_path: Path) -> None:
    """Many small requests in one send: each header block is counted on its own."""

    async def ok(_request: Request) -> Response:
        return Response(b"ok")

    app = Starlette(routes=[Route("/ok", ok)])
    with BackgroundServer(app, **uvicorn_options()) as server:
        one = b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 1000 + b"\r\n\r\n"
        count = 3 * MAX_HEADER_BYTES // len(one)
        last = b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = _raw_request(server.port, one * count + last)
        assert answer.count(b"HTTP/1.1 200 ") == count + 1, answer[:300]


def test_imagegen_serve_runs_the_limited_protocol(
    monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """`imagegen serve` and `api` hand uvicorn the protocol with the header limits."""
    import uvicorn

    import api.cli

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: seen.update(options))
    monkeypatch.setattr("worker.logs.configure_logging", lambda *args: None)  # left as is
    settings = Settings(database_url=database_url, supabase_url="http://127.0.0.1:9")
    api.cli._serve(settings, run_jobs=False)
    assert seen["http"].__name__ == "LimitedHttpToolsProtocol"
