"""API documentation served by the service itself: Swagger UI and ReDoc from the
installed `fastapi-offline` package (no CDN), an OpenAPI document that says how to
authenticate and what errors look like, and a small home page at `/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/docs-assets"

# Which bearer each endpoint takes (the rest are public: /health, /).
USER_SCHEME = "userToken"
WORKER_SCHEME = "workerSecret"
SECURITY_SCHEMES = {
    USER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A signed-in user's access token (Supabase Auth; on `make dev`,"
        " `.venv/bin/imagegen token` prints one).",
    },
    WORKER_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "The worker secret (WORKER_SCHEME), as pg_cron sends it.",
    },
}
WORKER_ENDPOINTS = ("process-jobs", "process-generation")
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "What went wrong, for a human"}},
    "required": ["error"],
    "example": {"error": "prompt: Field required"},
}
ERRORS = {
    "400": "Invalid input: a missing or malformed field, an unknown model, a value outside"
    " the model's limits. Nothing was written.",
    "401": "Missing, expired or invalid bearer token.",
    "429": "The user has too many generations in flight; retry after `Retry-After` seconds.",
    "503": "The service is overloaded or the database is unreachable; retry after"
    " `Retry-After` seconds.",
}


def _document(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {})
    components["securitySchemes"] = SECURITY_SCHEMES
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/functions/v1/"):
            continue
        name = path.rsplit("/", 1)[-1]
        for operation in operations.values():
            operation["security"] = [
                {WORKER_SCHEME if name in WORKER_ENDPOINTS else USER_SCHEME: []}
            ]
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's own validation error: never answered here
            for status, description in ERRORS.items():
                responses[status] = {
                    "description": description,
                    "content": {"application/json": {"schema": error_ref}},
                }
    return schema


def install_docs(app: FastAPI) -> None:
    """/docs, /redoc and their assets, the OpenAPI document, and /. The app must be
    created with docs_url=None and redoc_url=None."""
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(_document(app))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]

    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{app.title} API",
            redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )

    async def home(_request: Request) -> HTMLResponse:
        return HTMLResponse(home_page())

    app.add_api_route("/docs", swagger, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
    app.add_api_route("/", home, methods=["GET"], include_in_schema=False)


def home_page(extra_html: str = "") -> str:
    links = [
        ("/docs", "API docs (Swagger UI: try the endpoints with a bearer token)"),
        ("/redoc", "API reference (ReDoc)"),
        ("/openapi.json", "OpenAPI document"),
        ("/health", "Health: database and job runner"),
        ("/metrics", "Prometheus metrics"),
    ]
    items = "".join(f'<li><a href="{href}">{href}</a> {text}</li>' for href, text in links)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imagegen</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(12rem, 1fr));
        gap: 1rem; }}
figure {{ margin: 0; }} img {{ width: 100%; border-radius: 4px; background: #eee; }}
figcaption {{ font-size: 0.85rem; }} code {{ background: #f3f3f3; padding: 0 0.2rem; }}
</style></head>
<body><h1>imagegen</h1>
<p>Image generation on PostgreSQL: the Picture platform's
<code>/functions/v1/*</code> endpoints, served by one Python service.</p>
<ul>{items}</ul>
{extra_html}
</body></html>
"""
