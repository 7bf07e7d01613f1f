"""The operators' monitor page: `GET /dashboard` draws `monitor_snapshot()`
(sql/0140_monitor_snapshot.sql) as charts and refreshes itself; `GET /dashboard/snapshot`
is the JSON it draws. Behind the worker secret or a service-role JWT: sent as a bearer
token, or posted once to `/dashboard/login` for a signed session cookie (HttpOnly,
SameSite=Strict, expiring). No build step and no CDN: the script and stylesheet are files
of this package (api/dashboard_assets/), and the Content-Security-Policy allows nothing
else.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from api.auth import TokenVerifier, verify_worker_secret
from worker.gateway import DatabaseError, GatewayUnavailable
from worker.service import Worker
from worker.settings import Settings

log = structlog.get_logger(__name__)

ASSETS = Path(__file__).parent / "dashboard_assets"
PREFIX = "/dashboard"
COOKIE = "imagegen_dashboard"
SESSION_SECONDS = 8 * 3600  # one working day, then the secret again
MAX_LOGIN_BYTES = 16 * 1024
REFRESH_SECONDS = 5
# Only this origin's script, style and fetches; no inline code, no frames, no other forms.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# What the page loads; nothing else under /dashboard/assets is served.
ASSET_TYPES = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


class _Service(Protocol):
    """What the page needs of api.app.Service."""

    settings: Settings
    verifier: TokenVerifier
    worker: Worker


class SessionCookies:
    """`<expiry>.<HMAC-SHA256 of it>`: nothing to store, nothing to read but the time."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def issue(self, now: float | None = None) -> str:
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        return f"{expires}.{self._sign(expires)}"

    def valid(self, value: str | None, now: float | None = None) -> bool:
        if not value or len(value) > 200:
            return False
        expires, _, signature = value.partition(".")
        if not expires.isdigit():
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(int(expires)).encode()):
            return False
        return int(expires) > (now if now is not None else time.time())

    def _sign(self, expires: int) -> str:
        return hmac.new(self._key, f"dashboard:{expires}".encode(), hashlib.sha256).hexdigest()


def session_key(settings: Settings) -> bytes:
    """Derived from the worker secret (else the service-role key), so that every instance
    accepts the same cookies and changing the secret ends every session; random per
    process when neither is set."""
    for secret in (settings.worker_secret, settings.supabase_service_role_key):
        if secret is not None and secret.get_secret_value():
            material = secret.get_secret_value().encode()
            return hmac.new(material, b"imagegen dashboard session", hashlib.sha256).digest()
    return secrets.token_bytes(32)


def _page(name: str, **values: str) -> str:
    text = (ASSETS / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    return text


class Monitor:
    def __init__(self, settings: Settings) -> None:
        self.cookies = SessionCookies(session_key(settings))
        self.assets = {name: (ASSETS / name).read_bytes() for name in ASSET_TYPES}

    @staticmethod
    def _service(request: Request) -> _Service:
        service: _Service = request.app.state.service
        return service

    async def _credential(self, service: _Service, secret: str) -> bool:
        """The worker secret (constant-time compare) or a verified service-role JWT."""
        configured = service.settings.worker_secret
        header = f"Bearer {secret}"
        if verify_worker_secret(header, configured.get_secret_value() if configured else None):
            return True
        return await service.verifier.is_service_role(header)

    async def _signed_in(self, request: Request) -> bool:
        if self.cookies.valid(request.cookies.get(COOKIE)):
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return await self._credential(self._service(request), token.strip())

    def _login_page(self, request: Request, message: str = "", status: int = 200) -> Response:
        root = request.scope.get("root_path", "")
        return HTMLResponse(
            _page("login.html", root=root, message=message), status_code=status, headers=HEADERS
        )

    async def dashboard(self, request: Request) -> Response:
        if not await self._signed_in(request):
            return self._login_page(request, "Sign in to see the monitor.", 401)
        root = request.scope.get("root_path", "")
        page = _page("dashboard.html", root=root, refresh=str(REFRESH_SECONDS))
        return HTMLResponse(page, headers=HEADERS)

    async def snapshot(self, request: Request) -> Response:
        if not await self._signed_in(request):
            return JSONResponse(
                {"error": "Sign in: the worker secret or a service-role key"},
                status_code=401,
                headers=HEADERS,
            )
        try:
            snapshot: dict[str, Any] = await self._service(request).worker.db.monitor_snapshot()
        except (DatabaseError, GatewayUnavailable) as exc:
            log.error("monitor snapshot failed", error=str(exc))
            return JSONResponse(
                {"error": "The database is unavailable, retrying"},
                status_code=503,
                headers=HEADERS | {"Retry-After": str(REFRESH_SECONDS)},
            )
        return JSONResponse(snapshot, headers=HEADERS)

    async def login_form(self, request: Request) -> Response:
        return self._login_page(request)

    async def login(self, request: Request) -> Response:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_LOGIN_BYTES:
                return self._login_page(request, "That is too long to be a secret.", 413)
        try:
            fields = parse_qs(raw.decode("utf-8"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            return self._login_page(request, "The form did not arrive as sent.", 400)
        secret = (fields.get("secret") or [""])[0].strip()
        if not secret or not await self._credential(self._service(request), secret):
            return self._login_page(
                request, "That is neither the worker secret nor a service-role key.", 401
            )
        root = request.scope.get("root_path", "")
        response = RedirectResponse(f"{root}{PREFIX}", status_code=303, headers=HEADERS)
        response.set_cookie(
            COOKIE,
            self.cookies.issue(),
            max_age=SESSION_SECONDS,
            path=f"{root}{PREFIX}",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    async def logout(self, request: Request) -> Response:
        root = request.scope.get("root_path", "")
        response = RedirectResponse(f"{root}{PREFIX}/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path=f"{root}{PREFIX}", httponly=True, samesite="strict")
        return response

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.assets:
            return JSONResponse({"error": "Not found"}, status_code=404)
        headers = HEADERS | {"Cache-Control": "no-cache"}
        return Response(self.assets[name], media_type=ASSET_TYPES[name], headers=headers)


def install_monitor(app: FastAPI, settings: Settings) -> None:
    monitor = Monitor(settings)
    routes = [
        ("", monitor.dashboard, "GET"),
        ("/snapshot", monitor.snapshot, "GET"),
        ("/login", monitor.login_form, "GET"),
        ("/login", monitor.login, "POST"),
        ("/logout", monitor.logout, "POST"),
        ("/assets/{name}", monitor.asset, "GET"),
    ]
    for path, endpoint, method in routes:
        app.add_api_route(f"{PREFIX}{path}", endpoint, methods=[method], include_in_schema=False)
