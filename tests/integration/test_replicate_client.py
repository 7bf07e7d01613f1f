"""The Replicate client against the simulator over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack.postgres import free_port
from tests.support.background_server import BackgroundServer
from worker.models import GenerationParams, build_replicate_input, prediction_request
from worker.replicate import (
    ModelNotFound,
    OutputExpired,
    OutputTooLarge,
    PredictionCanceled,
    PredictionFailed,
    PredictionNotFound,
    PredictionTimedOut,
    ReplicateAuthError,
    ReplicateClient,
    ReplicateError,
    ReplicateInvalidInput,
    ReplicateRateLimited,
    ReplicateTransientError,
    parse_retry_after,
)

TOKEN = "r8_test-token-that-must-never-leak"
PARAMS = GenerationParams(
    prompt="a fox", model_id="black-forest-labs/flux-dev", width=64, height=48
)


@pytest.fixture
async def replicate(
    sim: BackgroundServer, simulator: httpx.Client
) -> AsyncIterator[ReplicateClient]:
    async with ReplicateClient(f"{sim.url}/v1", TOKEN, timeout=5) as client:
        yield client


def configure(simulator: httpx.Client, **changes: Any) -> None:
    simulator.post("/_simulator/config", json=changes).raise_for_status()


def stats(simulator: httpx.Client) -> dict[str, Any]:
    return dict(simulator.get("/_simulator/stats").json())


def request_for(params: GenerationParams = PARAMS) -> tuple[str, dict[str, Any]]:
    return prediction_request(params, build_replicate_input(params, None))


async def test_create_wait_and_download(replicate: ReplicateClient) -> None:
    created = await replicate.create_prediction(*request_for(), wait_seconds=None)
    assert created.status == "starting" and not created.done
    done = await replicate.wait_for_prediction(created.id, deadline_seconds=10)
    assert done.status == "succeeded" and done.id == created.id
    assert (await replicate.get_prediction(created.id)).status == "succeeded"
    dest = io.BytesIO()
    download = await replicate.download_output(
        done.output[0], dest, max_bytes=10_000_000, timeout=5
    )
    assert download.content_type == "image/webp" and download.size == len(dest.getvalue())
    dest.seek(0)
    with Image.open(dest) as image:
        assert image.size == (64, 48)


async def test_prefer_wait_returns_the_finished_prediction(
    replicate: ReplicateClient, simulator: httpx.Client
) -> None:
    configure(simulator, latency_seconds=0.2)
    prediction = await replicate.create_prediction(
        *request_for(), wait_seconds=5, cancel_after_seconds=60
    )
    assert prediction.status == "succeeded" and prediction.output
    # Already done: no polling needed.
    assert await replicate.wait_for_prediction(prediction, deadline_seconds=0.01) is prediction


async def test_cancel(replicate: ReplicateClient, simulator: httpx.Client) -> None:
    configure(simulator, latency_seconds=10)
    created = await replicate.create_prediction(*request_for(), wait_seconds=None)
    canceled = await replicate.cancel_prediction(created.id)
    assert canceled.status == "canceled"
    with pytest.raises(PredictionCanceled) as caught:
        await replicate.wait_for_prediction(created.id, deadline_seconds=5)
    assert caught.value.retryable


async def test_cancel_after_header_is_sent(
    replicate: ReplicateClient, simulator: httpx.Client
) -> None:
    configure(simulator, latency_seconds=10)
    created = await replicate.create_prediction(
        *request_for(), wait_seconds=None, cancel_after_seconds=1
    )
    with pytest.raises(PredictionCanceled):
        await replicate.wait_for_prediction(created, deadline_seconds=5)


async def test_failed_prediction(replicate: ReplicateClient, simulator: httpx.Client) -> None:
    configure(simulator, failure_rate=1.0)
    created = await replicate.create_prediction(*request_for(), wait_seconds=5)
    assert created.status == "failed"
    with pytest.raises(PredictionFailed, match="Simulated failure") as caught:
        await replicate.wait_for_prediction(created, deadline_seconds=5)
    assert caught.value.retryable


async def test_our_deadline_raises_timed_out(
    replicate: ReplicateClient, simulator: httpx.Client
) -> None:
    configure(simulator, latency_seconds=10)
    created = await replicate.create_prediction(*request_for(), wait_seconds=None)
    with pytest.raises(PredictionTimedOut) as caught:
        await replicate.wait_for_prediction(created, deadline_seconds=0.3)
    assert caught.value.retryable
    # Raised at our deadline, while the 10 s prediction still runs (not at its end).
    assert (await replicate.get_prediction(created.id)).status in ("starting", "processing")


async def test_429_is_retried_after_retry_after(
    replicate: ReplicateClient, simulator: httpx.Client
) -> None:
    configure(simulator, rate_limit_rate=1.0, retry_after_seconds=1)
    started = time.monotonic()
    create = asyncio.create_task(replicate.create_prediction(*request_for(), wait_seconds=None))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(configure, simulator, rate_limit_rate=0.0)
    prediction = await create
    assert time.monotonic() - started >= 1.0  # waited for Retry-After, not the short backoff
    counts = stats(simulator)
    assert counts["rate_limited"] == 1 and counts["predictions_created"] == 1
    assert prediction.id


async def test_429_gives_up_after_max_retries(
    sim: BackgroundServer, simulator: httpx.Client
) -> None:
    configure(simulator, rate_limit_rate=1.0, retry_after_seconds=0)
    async with ReplicateClient(f"{sim.url}/v1", TOKEN, timeout=5, max_retries=1) as client:
        with pytest.raises(ReplicateRateLimited) as caught:
            await client.get_prediction("x")
    assert caught.value.retryable and caught.value.status_code == 429
    assert stats(simulator)["rate_limited"] == 2


async def test_5xx_is_retried_for_get(replicate: ReplicateClient, simulator: httpx.Client) -> None:
    created = await replicate.create_prediction(*request_for(), wait_seconds=5)
    configure(simulator, server_error_rate=1.0)
    get = asyncio.create_task(replicate.get_prediction(created.id))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(configure, simulator, server_error_rate=0.0)
    assert (await get).status == "succeeded"
    assert stats(simulator)["server_errors"] >= 1


async def test_5xx_on_create_is_not_resent(
    replicate: ReplicateClient, simulator: httpx.Client
) -> None:
    configure(simulator, server_error_rate=1.0)
    with pytest.raises(ReplicateTransientError) as caught:
        await replicate.create_prediction(*request_for(), wait_seconds=None)
    assert caught.value.retryable and caught.value.status_code == 503
    counts = stats(simulator)
    assert counts["api_requests"] == 1 and counts["server_errors"] == 1


async def test_422_is_permanent_and_not_retried(
    replicate: ReplicateClient, simulator: httpx.Client
) -> None:
    body = {"input": {"prompt": "p", "aspect_ratio": "7:4"}}
    with pytest.raises(ReplicateInvalidInput, match="aspect_ratio") as caught:
        await replicate.create_prediction(
            "/models/black-forest-labs/flux-schnell/predictions", body, wait_seconds=None
        )
    assert not caught.value.retryable and caught.value.status_code == 422
    assert stats(simulator)["api_requests"] == 1


async def test_missing_token_is_an_auth_error(sim: BackgroundServer) -> None:
    async with ReplicateClient(f"{sim.url}/v1", None, timeout=5) as client:
        with pytest.raises(ReplicateAuthError) as caught:
            await client.create_prediction(*request_for(), wait_seconds=None)
    assert not caught.value.retryable


async def test_unknown_model_and_prediction(
    replicate: ReplicateClient, simulator: httpx.Client
) -> None:
    configure(simulator, unknown_models=["black-forest-labs/flux-dev"])
    with pytest.raises(ModelNotFound) as caught:
        await replicate.create_prediction(*request_for(), wait_seconds=None)
    assert not caught.value.retryable
    with pytest.raises(PredictionNotFound):
        await replicate.get_prediction("does-not-exist")


async def test_expired_output(replicate: ReplicateClient, simulator: httpx.Client) -> None:
    configure(simulator, output_ttl_seconds=0.1)
    prediction = await replicate.create_prediction(*request_for(), wait_seconds=5)
    await asyncio.sleep(0.2)
    with pytest.raises(OutputExpired, match="an hour") as caught:
        await replicate.download_output(
            prediction.output[0], io.BytesIO(), max_bytes=10_000_000, timeout=5
        )
    assert not caught.value.retryable


async def test_output_size_cap(replicate: ReplicateClient) -> None:
    big = dataclasses.replace(PARAMS, width=1024, height=1024)
    prediction = await replicate.create_prediction(*request_for(big), wait_seconds=5)
    with pytest.raises(OutputTooLarge) as caught:
        await replicate.download_output(
            prediction.output[0], io.BytesIO(), max_bytes=500, timeout=5
        )
    assert not caught.value.retryable


async def test_connect_errors_are_retried_then_transient() -> None:
    async with ReplicateClient(
        f"http://127.0.0.1:{free_port()}/v1", TOKEN, timeout=2, max_retries=1
    ) as client:
        with pytest.raises(ReplicateTransientError) as caught:
            await client.create_prediction(*request_for(), wait_seconds=None)
    assert caught.value.retryable
    assert TOKEN not in str(caught.value)


async def test_token_never_appears_in_errors_or_logs(
    replicate: ReplicateClient, simulator: httpx.Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """Even a server that echoes our Authorization header cannot make us repeat it."""

    async def echo(request: Request) -> JSONResponse:
        detail = f"bad request from {request.headers.get('authorization')}"
        return JSONResponse({"detail": detail, "status": 500}, status_code=500)

    errors: list[ReplicateError] = []
    leaky = Starlette(routes=[Route("/v1/{path:path}", echo, methods=["GET", "POST"])])
    with BackgroundServer(leaky) as server:
        async with ReplicateClient(f"{server.url}/v1", TOKEN, timeout=5, max_retries=1) as client:
            for call in (
                client.get_prediction("x"),
                client.create_prediction(*request_for(), wait_seconds=None),
            ):
                with pytest.raises(ReplicateError) as caught:
                    await call
                errors.append(caught.value)
            assert TOKEN not in repr(client)
    configure(simulator, failure_rate=1.0)
    with pytest.raises(ReplicateError) as failed:
        await replicate.wait_for_prediction(
            await replicate.create_prediction(*request_for(), wait_seconds=5), deadline_seconds=5
        )
    errors.append(failed.value)
    with pytest.raises(ReplicateError) as invalid:
        await replicate.create_prediction(
            "/models/a/b/predictions", {"input": {}}, wait_seconds=None
        )
    errors.append(invalid.value)
    assert "[redacted]" in str(errors[0])
    for error in errors:
        assert TOKEN not in str(error) and TOKEN not in repr(error)
        assert TOKEN not in str(error.args)
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err


def test_parse_retry_after() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


async def test_list_predictions_pages_newest_first(
    replicate: ReplicateClient, simulator: httpx.Client
) -> None:
    configure(simulator, page_size=2)
    created = [
        await replicate.create_prediction(
            *request_for(dataclasses.replace(PARAMS, prompt=f"fox {i}")), wait_seconds=None
        )
        for i in range(3)
    ]
    first = await replicate.list_predictions()
    assert [p.id for p in first.predictions] == [created[2].id, created[1].id]
    assert first.predictions[0].input == build_replicate_input(
        dataclasses.replace(PARAMS, prompt="fox 2"), None
    )
    assert first.predictions[0].model == PARAMS.model_id
    assert first.predictions[0].created is not None and first.predictions[0].created.tzinfo
    assert first.next_cursor is not None
    last = await replicate.list_predictions(first.next_cursor)
    assert [p.id for p in last.predictions] == [created[0].id]
    assert last.next_cursor is None


async def test_list_predictions_is_retried_on_5xx(
    replicate: ReplicateClient, simulator: httpx.Client
) -> None:
    await replicate.create_prediction(*request_for(), wait_seconds=None)
    configure(simulator, server_error_rate=1.0)
    listing = asyncio.create_task(replicate.list_predictions())
    await asyncio.sleep(0.1)
    await asyncio.to_thread(configure, simulator, server_error_rate=0.0)
    assert len((await listing).predictions) == 1
    assert stats(simulator)["server_errors"] >= 1


async def test_list_predictions_sends_the_token_only_to_our_base_url() -> None:
    """`next` may name any host: only its cursor is used, against our own base URL."""
    seen: list[tuple[str, str | None]] = []

    async def listing(request: Request) -> JSONResponse:
        cursor = request.query_params.get("cursor")
        seen.append((request.headers.get("authorization", ""), cursor))
        after = None if cursor else "https://elsewhere.example/v1/predictions?cursor=c%2F2"
        return JSONResponse({"next": after, "previous": None, "results": []})

    app = Starlette(routes=[Route("/v1/predictions", listing, methods=["GET"])])
    with BackgroundServer(app) as server:
        async with ReplicateClient(f"{server.url}/v1", TOKEN, timeout=5) as client:
            page = await client.list_predictions()
            assert page.next_cursor == "c/2"
            assert (await client.list_predictions(page.next_cursor)).next_cursor is None
    assert seen == [(f"Bearer {TOKEN}", None), (f"Bearer {TOKEN}", "c/2")]
