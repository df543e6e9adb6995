"""``/docs``: Swagger UI for the API's OpenAPI schema, its files served whole from the
``fastapi-offline`` package (installed, not committed), so the page renders on a machine with no
internet. FastAPI's own page loads Swagger UI from a CDN and is blank offline; it is turned off in
:mod:`..app`. (``swagger-ui-bundle`` ships Swagger UI 4, which refuses FastAPI's OpenAPI 3.1 schema;
``fastapi-offline`` ships Swagger UI 5. Only its files are used, not its app factory.)

The page is our template: no inline script (so a strict Content-Security-Policy holds), the
validator badge off (it would call an outside service), the favicon the bundle's own.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_STATIC = "/docs/static"
#: Swagger UI styles its widgets with inline ``style`` attributes, so only styles relax the policy.
DOCS_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def swagger_ui_dir() -> Path | None:
    """Where the package keeps Swagger UI's files, None when it is not installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    return Path(fastapi_offline.__file__).parent / "static"


def register(app: FastAPI, page: str) -> None:
    """Serve ``/docs`` (``page`` is its HTML) and the bundle's files under :data:`DOCS_STATIC`."""
    folder = swagger_ui_dir()
    if folder is None:
        @app.get("/docs", include_in_schema=False)
        def no_docs() -> HTMLResponse:
            return HTMLResponse("<!doctype html><title>API docs</title><p>Swagger UI is not installed here "
                                "(<code>pip install fastapi-offline</code>); the schema is at "
                                "<a href=\"/openapi.json\">/openapi.json</a>.</p>", 503)
        return
    app.mount(DOCS_STATIC, StaticFiles(directory=folder), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": DOCS_POLICY,
                                           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"})
