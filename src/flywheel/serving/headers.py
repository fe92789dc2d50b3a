"""Security headers on every answer, and the API's documentation served from the package.

Every response: ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: same-origin``
(an id in a dashboard URL goes to no other site; ``no-referrer`` would make browsers send
``Origin: null`` with the dashboard's own forms, which the origin check refuses). Every
HTML page besides: ``X-Frame-Options: DENY`` and a Content-Security-Policy that runs only
this server's own scripts and styles, sends forms only to it and lets no page frame it
(clickjacking), ``Cross-Origin-Opener-Policy: same-origin``, and ``Cache-Control:
no-store`` (the pages show users' data). A response that sets its own policy keeps it
(stored inputs: ``default-src 'none'; sandbox``).

``/docs`` (Swagger UI) and ``/redoc`` load their scripts from the package
(``fastapi-offline`` ships them): nothing is fetched from a CDN, so the docs work offline
and tell no third party who reads them. Their one inline script is allowed by its hash.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["PAGE_POLICY", "SecurityHeaders", "add_docs"]

PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
EVERY = {"x-content-type-options": "nosniff", "referrer-policy": "same-origin"}
PAGES = {
    "x-frame-options": "DENY",
    "content-security-policy": PAGE_POLICY,
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-store",
}


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                page = headers.get("content-type", "").startswith("text/html")
                for name, value in (EVERY | PAGES).items() if page else EVERY.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


ASSETS = "/docs/static"


def _static() -> Path:
    return Path(str(files("fastapi_offline") / "static"))


def _hashed(page: HTMLResponse, styles: str) -> tuple[str, dict[str, str]]:
    """``page``'s body and headers: a policy that allows its inline scripts by their
    hashes. (A fresh response is made of them per request: middleware may add to its
    headers in place.)"""
    body = bytes(page.body).decode()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode() + "'"
        for code in re.findall(r"<script>(.*?)</script>", body, flags=re.S)
    )
    policy = (
        f"default-src 'self'; script-src 'self' {hashes}; style-src {styles}; "
        "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return body, {"content-security-policy": policy}


def add_docs(app: FastAPI, title: str) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, their assets from the package."""
    app.mount(ASSETS, StaticFiles(directory=_static()), name="docs-static")
    router = APIRouter(include_in_schema=False)
    favicon = f"{ASSETS}/favicon.png"
    # Swagger UI sets styles from its script (allowed); ReDoc writes <style> elements.
    swagger = _hashed(
        get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{title} — API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=favicon,
            oauth2_redirect_url="/docs/oauth2-redirect",
        ),
        "'self' 'unsafe-inline'",
    )
    redoc = _hashed(
        get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{title} — API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=favicon,
            with_google_fonts=False,
        ),
        "'self' 'unsafe-inline'",
    )
    redirect = _hashed(get_swagger_ui_oauth2_redirect_html(), "'self'")

    @router.get("/docs")
    def docs() -> HTMLResponse:
        return HTMLResponse(swagger[0], headers=swagger[1])

    @router.get("/docs/oauth2-redirect")
    def docs_redirect() -> HTMLResponse:
        return HTMLResponse(redirect[0], headers=redirect[1])

    @router.get("/redoc")
    def docs_redoc() -> HTMLResponse:
        return HTMLResponse(redoc[0], headers=redoc[1])

    app.include_router(router)
