"""The operators' monitor page (api/monitor.py) in a real browser: Debian's chromium,
driven headless by Playwright, against a served app with work in flight. The page
refuses requests without the credential, signs in with the worker secret, and draws the
live numbers of monitor_snapshot() (sql/0140_monitor_snapshot.sql)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from playwright.sync_api import Page, sync_playwright

from devstack.simulator import SimulatorConfig
from tests.conftest import make_user
from tests.support.served import serve

Conn = psycopg.Connection[dict[str, Any]]
CHROMIUM = "/usr/bin/chromium"  # Debian's package (make system-deps); no browser download
WORKER_SECRET = "worker-secret-for-the-dashboard-0123456789"
FLUX = "black-forest-labs/flux-schnell"
IN_FLIGHT, WAITING = 2, 3
FAILURES = ("model exploded on step 3", "NSFW content detected")


@pytest.fixture
def served(conn: Conn, database_url: str, tmp_path: Path) -> Iterator[str]:
    """The app with IN_FLIGHT generations running (the simulator takes a minute for each
    prediction) and WAITING queued behind them, after two that failed and one completed."""
    user = make_user(conn)
    failed = [
        conn.execute(
            "select job_id from start_generation(%s, 'a lighthouse', %s)", (user, FLUX)
        ).fetchone()["job_id"]
        for _ in FAILURES
    ]
    conn.execute("select * from claim_jobs('old-worker', 2)")
    for job_id, message in zip(failed, FAILURES, strict=True):
        conn.execute(
            "select fail_job(%s, 'old-worker', %s, p_retryable => false)", (job_id, message)
        )
    conn.execute(
        "insert into image_generations (user_id, prompt, model, status, completed_at,"
        " generation_time_seconds) values (%s, 'done', 'flux-schnell', 'completed', now(), 4.5)",
        (user,),
    )
    simulator = SimulatorConfig(latency_seconds=60)
    with serve(
        database_url,
        tmp_path / "storage",
        simulator,
        worker_secret=WORKER_SECRET,
        max_parallel_jobs=IN_FLIGHT,
        shutdown_grace_seconds=1,
    ) as server:
        for _ in range(IN_FLIGHT + WAITING):
            conn.execute("select start_generation(%s, 'a red fox', %s)", (user, FLUX))
        wait_until(lambda: counts(conn) == (WAITING, IN_FLIGHT))
        yield server.url


def counts(conn: Conn) -> tuple[int, int]:
    row = conn.execute(
        "select count(*) filter (where status = 'pending') as pending,"
        " count(*) filter (where status = 'processing') as processing from job_queue"
    ).fetchone()
    return row["pending"], row["processing"]


def wait_until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def test_without_the_credential_everything_is_refused(served: str) -> None:
    snapshot = httpx.get(f"{served}/dashboard/snapshot", timeout=10)
    assert snapshot.status_code == 401 and "error" in snapshot.json()

    page = httpx.get(f"{served}/dashboard", timeout=10)
    assert page.status_code == 401 and 'name="secret"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]

    forged = httpx.get(
        f"{served}/dashboard/snapshot",
        cookies={"imagegen_dashboard": f"{int(time.time()) + 3600}.{'0' * 64}"},
        timeout=10,
    )
    wrong = httpx.get(
        f"{served}/dashboard/snapshot", headers={"Authorization": "Bearer nope"}, timeout=10
    )
    login = httpx.post(f"{served}/dashboard/login", data={"secret": "nope"}, timeout=10)
    assert (forged.status_code, wrong.status_code, login.status_code) == (401, 401, 401)
    assert "set-cookie" not in login.headers

    bearer = httpx.get(
        f"{served}/dashboard/snapshot",
        headers={"Authorization": f"Bearer {WORKER_SECRET}"},
        timeout=10,
    )
    assert bearer.status_code == 200
    assert (bearer.json()["queue"]["pending"], bearer.json()["queue"]["processing"]) == (
        WAITING,
        IN_FLIGHT,
    )
    assert httpx.get(f"{served}/dashboard/assets/../monitor.py", timeout=10).status_code == 404


def metric(page: Page, name: str) -> str:
    return page.get_attribute(f'[data-metric="{name}"]', "data-value") or ""


def test_the_browser_signs_in_and_draws_the_live_numbers(
    served: str, conn: Conn, tmp_path: Path
) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))

            refused = page.goto(f"{served}/dashboard")
            assert refused is not None and refused.status == 401
            page.fill("#secret", "not the secret")
            page.click("button[type=submit]")
            assert "neither the worker secret" in page.inner_text(".message")

            problems.clear()  # the browser logs the two 401s above; from here on, nothing
            page.fill("#secret", WORKER_SECRET)
            page.click("button[type=submit]")
            page.wait_for_url(f"{served}/dashboard")
            page.wait_for_selector('#status[data-state="ok"]')
            cookie = next(c for c in page.context.cookies() if c["name"] == "imagegen_dashboard")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert time.time() < cookie["expires"] < time.time() + 24 * 3600

            snapshot = conn.execute("select monitor_snapshot() as s").fetchone()["s"]
            assert metric(page, "pending") == str(WAITING) == str(snapshot["queue"]["pending"])
            assert metric(page, "processing") == str(IN_FLIGHT)
            assert page.inner_text('[data-metric="processing"]') == str(IN_FLIGHT)
            assert metric(page, "failed") == "2" and metric(page, "completed") == "0"
            assert metric(page, "creates") == str(snapshot["provider"]["creates_last_minute"])

            # The charts: lines ending at the live depth, the failures' bars and rate, the
            # model's durations, the worker holding the running jobs.
            queue_lines = page.locator("#chart-queue polyline")
            assert queue_lines.count() == 2
            running = page.locator('#chart-queue polyline[data-series="generate-image processing"]')
            assert running.get_attribute("data-last") == str(IN_FLIGHT)
            assert page.locator("#chart-throughput rect.bar-failed").count() >= 1
            assert page.get_attribute("#chart-failure-rate", "data-value") == "1"
            assert page.locator("#chart-durations rect.p50").count() == 1
            assert "p50 4.5s" in (page.text_content("#chart-durations") or "")
            [worker] = [w for w in snapshot["workers"] if w["holding"]]
            held = page.locator("#chart-workers rect.alive")
            assert held.count() == 1 and held.get_attribute("data-value") == str(IN_FLIGHT)
            assert worker["worker_id"] in (
                page.get_attribute("#chart-workers", "data-workers") or ""
            )
            failures = page.inner_text("#failures")
            assert all(message in failures for message in FAILURES)

            # It refreshes by itself: a generation started now shows without a reload.
            user = conn.execute("select id from auth.users limit 1").fetchone()["id"]
            conn.execute("select start_generation(%s, 'one more', %s)", (user, FLUX))
            page.wait_for_function(
                "n => document.querySelector('[data-metric=pending]').dataset.value === n",
                arg=str(WAITING + 1),
                timeout=20_000,
            )

            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
            assert (tmp_path / "dashboard.png").stat().st_size > 10_000
            assert problems == []  # no script error, no CSP violation
        finally:
            browser.close()
