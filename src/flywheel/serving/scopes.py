"""Who may call what: the one scope table of the API and the dashboard, and the check
every route goes through.

Every route of the app is a row of :data:`TABLE`, keyed by method and path template;
:func:`authorize` runs before each of them (an app-wide dependency) and looks its row
up. A route without a row is refused (403), so a new route is closed until it is given
one — ``tests/security/test_scopes.py`` calls every route with every kind of caller
and holds the answers to this table.

Least privilege by default: a server bound to loopback answers only ``predict`` and
``feedback`` without a key (``open_predict``, ``open_feedback``), and a keyless
feedback may only be about the caller's own predictions (same ``X-User-Id``). Anything
derived from another user's input — the review queue, explanations and their overlays,
stored inputs — needs a key of the route's scope wherever the server is bound. Bound
beyond loopback, every route but the health check and the sign-in needs a key.
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from flywheel.errors import AuthError
from flywheel.project import Project
from flywheel.serving.throttle import AuthThrottle

__all__ = [
    "ANY",
    "COOKIE",
    "OPEN",
    "TABLE",
    "Caller",
    "Refusal",
    "Rule",
    "auth_failed",
    "authorize",
    "caller",
    "client_address",
    "document",
    "refused",
    "rule_for",
    "session",
    "throttled",
]

log = logging.getLogger("flywheel.serving")

#: the dashboard's sign-in cookie
COOKIE = "flywheel_session"
#: a key of any scope
ANY = "any"


@dataclass(frozen=True)
class Rule:
    """What a route needs.

    ``scope``: None (nothing: open to all), ``ANY`` (a key of any scope) or a scope
    (``predict``, ``feedback``, ``admin``; an admin key holds every scope).
    ``opens``: the setting that lets a loopback-bound server answer without a key.
    ``session``: a dashboard route, signed in by cookie rather than a bearer key.
    ``basic``: the key may also come as HTTP Basic's password (any user name): Label
    Studio's ML backend connection sends nothing else.
    """

    scope: str | None
    opens: str | None = None
    session: bool = False
    basic: bool = False

    def admits(self, scopes: list[str]) -> bool:
        if self.scope is None:
            return True
        if self.scope == ANY:
            return bool(scopes)
        return self.scope in scopes or "admin" in scopes


OPEN = Rule(None)
_PAGE_ANY = Rule(ANY, session=True)

TABLE: dict[tuple[str, str], Rule] = {
    # -- the API: a bearer key -----------------------------------------------------------
    ("POST", "/v1/predict"): Rule("predict", opens="open_predict"),
    ("POST", "/v1/feedback"): Rule("feedback", opens="open_feedback"),
    # the Open Inference Protocol (v2): as /v1/predict; its health checks as /healthz
    ("POST", "/v2/models/{model_name}/infer"): Rule("predict", opens="open_predict"),
    ("POST", "/v2/models/{model_name}/versions/{model_version}/infer"): Rule(
        "predict", opens="open_predict"
    ),
    ("GET", "/v2/models/{model_name}"): Rule("predict", opens="open_predict"),
    ("GET", "/v2/models/{model_name}/versions/{model_version}"): Rule(
        "predict", opens="open_predict"
    ),
    ("GET", "/v2/models/{model_name}/ready"): Rule("predict", opens="open_predict"),
    ("GET", "/v2/models/{model_name}/versions/{model_version}/ready"): Rule(
        "predict", opens="open_predict"
    ),
    # others' inputs, and what is derived from them
    ("POST", "/v1/review-queue"): Rule("feedback"),
    ("GET", "/v1/review-queue"): Rule("feedback"),
    ("POST", "/v1/explain"): Rule("feedback"),
    ("GET", "/v1/explain/{prediction_id}.png"): Rule("feedback"),
    # aggregates
    ("GET", "/v1/models"): Rule(ANY),
    ("GET", "/v1/stats"): Rule(ANY),
    ("GET", "/v1/monitoring"): Rule(ANY),
    ("GET", "/metrics"): Rule(ANY),
    # changes, jobs, users (their ids, trust and privacy ledger)
    ("POST", "/v1/models/{version}/promote"): Rule("admin"),
    ("POST", "/v1/rollback"): Rule("admin"),
    ("POST", "/v1/retrain"): Rule("admin"),
    ("GET", "/v1/jobs"): Rule("admin"),
    ("GET", "/v1/webhooks/deliveries"): Rule("admin"),
    ("GET", "/v1/jobs/{job_id}"): Rule("admin"),
    ("GET", "/v1/users"): Rule("admin"),
    ("DELETE", "/v1/users/{user_id}"): Rule("admin"),
    ("POST", "/v1/users/{user_id}/quarantine"): Rule("admin"),
    ("DELETE", "/v1/users/{user_id}/quarantine"): Rule("admin"),
    ("GET", "/v1/users/{user_id}/privacy"): Rule("admin"),
    ("GET", "/v1/privacy/ledger"): Rule("admin"),
    ("GET", "/v1/keys"): Rule("admin"),
    ("POST", "/v1/keys"): Rule("admin"),
    ("DELETE", "/v1/keys/{key}"): Rule("admin"),
    # Label Studio's ML backend (a key, bearer or Basic, never keyless): its connection
    # check and predictions as /v1/predict; annotations are feedback (a webhook sent with
    # an Authorization header); its Start Training, a retrain, as /v1/retrain (admin:
    # START_TRAINING, which comes to /webhook, is checked there)
    ("GET", "/label-studio/health"): Rule("predict", basic=True),
    ("POST", "/label-studio/health"): Rule("predict", basic=True),
    ("POST", "/label-studio/setup"): Rule("predict", basic=True),
    ("GET", "/label-studio/versions"): Rule("predict", basic=True),
    ("POST", "/label-studio/predict"): Rule("predict", basic=True),
    ("POST", "/label-studio/webhook"): Rule("feedback", basic=True),
    ("POST", "/label-studio/train"): Rule("admin", basic=True),
    # open: liveness, and the documentation of the API
    ("GET", "/healthz"): OPEN,
    ("GET", "/v2"): OPEN,
    ("GET", "/v2/health/live"): OPEN,
    ("GET", "/v2/health/ready"): OPEN,
    ("GET", "/openapi.json"): OPEN,
    ("GET", "/docs"): OPEN,
    ("GET", "/docs/oauth2-redirect"): OPEN,
    ("GET", "/redoc"): OPEN,
    # -- the dashboard: a signed-in session (actions also check its CSRF token) ----------
    ("GET", "/ui/login"): OPEN,
    ("POST", "/ui/login"): OPEN,
    ("POST", "/ui/logout"): OPEN,
    ("GET", "/"): _PAGE_ANY,
    ("GET", "/ui/models"): _PAGE_ANY,
    ("GET", "/ui/jobs"): _PAGE_ANY,
    ("GET", "/ui/review"): Rule("feedback", session=True),
    ("POST", "/ui/review/{prediction_id}"): Rule("feedback", session=True),
    ("GET", "/ui/input/{prediction_id}"): Rule("feedback", session=True),
    ("GET", "/ui/explain/{prediction_id}.png"): Rule("feedback", session=True),
    ("GET", "/ui/users"): Rule("admin", session=True),
    ("POST", "/ui/users/{user_id}/{action}"): Rule("admin", session=True),
    ("POST", "/ui/models/{version}/promote"): Rule("admin", session=True),
    ("POST", "/ui/rollback"): Rule("admin", session=True),
    ("POST", "/ui/retrain"): Rule("admin", session=True),
}

#: dashboard routes that answer a refusal with a status rather than the sign-in page
#: (an <img> or a download cannot follow a redirect to a form)
_BARE = {"/ui/input/{prediction_id}", "/ui/explain/{prediction_id}.png"}


def rule_for(method: str, path: str) -> Rule | None:
    """The row of a route (HEAD is GET's), or None when it has none."""
    return TABLE.get(("GET" if method == "HEAD" else method, path))


@dataclass(frozen=True)
class Caller:
    """Who a request came from: the scopes of its key (empty: none sent on an open
    route), and whether it came in through a loopback route's open door."""

    scopes: tuple[str, ...]
    keyless: bool
    key: str | None = None  # the key's name (never the key)


class Refusal(Exception):
    """A dashboard refusal, answered as it is (a redirect to the sign-in, a page)."""

    def __init__(self, response: Response) -> None:
        super().__init__("refused")
        self.response = response


async def refused(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refusal)
    return exc.response


def _project(request: Request) -> Project:
    project: Project = request.app.state.project
    return project


def session(request: Request) -> dict[str, Any] | None:
    """The request's live dashboard session (looked up once per request)."""
    if COOKIE in request.scope:
        cached: dict[str, Any] | None = request.scope[COOKIE]
        return cached
    token = request.cookies.get(COOKIE)
    sess = _project(request).ui_session(token) if token else None
    request.scope[COOKIE] = sess
    return sess


def caller(request: Request) -> Caller:
    """The caller :func:`authorize` let through."""
    found: Caller = request.scope["flywheel_caller"]
    return found


def _bearer(request: Request, basic: bool = False) -> str | None:
    """The key the request sent (None: none), as a bearer key or, where the route takes
    it (``basic``), as HTTP Basic's password."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    kind, _, key = header.partition(" ")
    if basic and kind.lower() == "basic":
        key = _basic_password(key.strip())
    elif kind.lower() != "bearer":
        key = ""
    if not key.strip():
        raise HTTPException(
            401,
            "send the key as 'Authorization: Bearer <key>'"
            + (" or as HTTP Basic's password (any user name)" if basic else ""),
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key.strip()


def _basic_password(credentials: str) -> str:
    """The password of HTTP Basic credentials (base64 of ``user:password``); '' when they
    do not decode."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]


def _opened(project: Project, setting: str) -> bool:
    """Whether a loopback-bound server opens a route by ``setting``."""
    return not project.settings.requires_keys and bool(getattr(project.settings, setting))


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def throttled(request: Request) -> int | None:
    """Seconds the caller's address must wait before a key is checked again, else None."""
    throttle: AuthThrottle = request.app.state.throttle
    return throttle.retry_after(client_address(request))


def auth_failed(request: Request) -> None:
    throttle: AuthThrottle = request.app.state.throttle
    throttle.failed(client_address(request))


def _too_many(wait: int) -> HTTPException:
    return HTTPException(
        429,
        f"too many failed authentications from this address: try again in {wait} s",
        headers={"Retry-After": str(wait)},
    )


async def _check_key(request: Request, rule: Rule, path: str) -> Caller:
    project = _project(request)
    if request.headers.get("authorization") is not None and (wait := throttled(request)):
        raise _too_many(wait)
    try:
        key = _bearer(request, rule.basic)
    except HTTPException:
        auth_failed(request)
        raise
    if key is None:
        if rule.opens is not None and _opened(project, rule.opens):
            return Caller((), keyless=True)
        raise HTTPException(
            401,
            f"{path} needs an API key"
            + ("" if rule.scope == ANY else f" with the {rule.scope!r} scope")
            + ": send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        name, scopes = await run_in_threadpool(
            project.authenticate, key, None if rule.scope == ANY else rule.scope
        )
    except AuthError as exc:
        if exc.missing_scope is not None:
            raise HTTPException(403, str(exc)) from None
        auth_failed(request)
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    return Caller(tuple(scopes), keyless=False, key=name)


def _check_session(request: Request, rule: Rule, path: str) -> Caller:
    sess = session(request)
    if sess is None:
        if path in _BARE:
            raise Refusal(Response(status_code=401))
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise Refusal(RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303))
    if not rule.admits(list(sess["scopes"])):
        need = {ANY: "a key of any scope", "admin": "an admin key"}.get(
            str(rule.scope), f"a key with the {rule.scope!r} scope"
        )
        raise Refusal(
            HTMLResponse(
                f"this page needs {need}; signed in with {sess['key']!r} "
                f"({', '.join(sess['scopes'])})",
                403,
            )
        )
    return Caller(tuple(sess["scopes"]), keyless=False, key=sess["key"])


ERROR_SCHEMA = "#/components/schemas/ErrorPublic"


def document(spec: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document with the table in it: the bearer scheme, and each
    operation's ``security`` (none for an open route; optional for a route a loopback
    server may open) and ``x-flywheel-scope``."""
    spec.setdefault("components", {})["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`flywheel keys create --scope ...`); an admin key "
            "holds every scope.",
        },
        "basic": {
            "type": "http",
            "scheme": "basic",
            "description": "The API key as the password, any user name (Label Studio's ML "
            "backend routes only).",
        },
    }
    refused = {
        "421": {
            "description": "The Host header names no host this server answers to (allowed_hosts).",
            "content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA}}},
        },
        "403": {
            "description": "Sent by another site's page (an Origin not in cors_origins), "
            "or the key lacks the route's scope.",
            "content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA}}},
        },
    }
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            for status, response in refused.items():
                operation.setdefault("responses", {}).setdefault(status, response)
            rule = rule_for(method.upper(), path)
            if rule is None or rule.scope is None:
                operation["security"] = []
                continue
            operation["security"] = (
                [{"bearer": []}]
                + ([{"basic": []}] if rule.basic else [])
                + ([{}] if rule.opens else [])
            )
            operation["x-flywheel-scope"] = rule.scope
    return spec


async def authorize(request: Request) -> None:
    """Let the request through only as its route's row of :data:`TABLE` says."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    rule = rule_for(request.method, path)
    if rule is None:  # fail closed: a route nobody gave a row
        log.error("no scope-table row for %s %s: refused", request.method, path)
        raise HTTPException(403, f"{request.method} {path} is not open to anyone yet")
    if rule.scope is None:
        request.scope["flywheel_caller"] = Caller((), keyless=True)
    elif rule.session:
        request.scope["flywheel_caller"] = await run_in_threadpool(
            _check_session, request, rule, path
        )
    else:
        request.scope["flywheel_caller"] = await _check_key(request, rule, path)
