"""``create_app(settings)``: the FastAPI application."""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from flywheel.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    DataError,
    FlywheelError,
    ModelError,
    NotFoundError,
    StorageError,
    UnsupportedMediaError,
)
from flywheel.project import Project
from flywheel.registry import Backend
from flywheel.serving import ui
from flywheel.serving.access import AccessLog
from flywheel.serving.headers import SecurityHeaders, add_docs
from flywheel.serving.jobs import JobRunner
from flywheel.serving.limits import BodyLimits, OriginCheck, served_hosts
from flywheel.serving.metrics import Metrics, MetricsMiddleware
from flywheel.serving.predictor import Predictor
from flywheel.serving.routers import (
    explain,
    feedback,
    inference,
    jobs,
    keys,
    label_studio,
    models,
    predict,
    review,
    stats,
    users,
)
from flywheel.serving.scopes import Refusal, authorize, document, refused
from flywheel.serving.throttle import AuthThrottle
from flywheel.serving.webhooks import WebhookSender
from flywheel.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger("flywheel.serving")

_STATUS: list[tuple[type[FlywheelError], int]] = [
    (NotFoundError, 404),
    (UnsupportedMediaError, 415),
    (DataError, 422),  # includes InputError
    (AuthError, 401),
    (ConflictError, 409),  # includes RegistryError
    (ModelError, 503),
    (StorageError, 503),  # storage_url unreachable: the service, not the request
    (ConfigError, 500),
]


def _error(request: Request, status: int, detail: Any, headers: Any = None) -> JSONResponse:
    """An error's body: ``{"detail": ...}``, or on the Open Inference Protocol's routes
    its own ``{"error": "..."}``."""
    if request.url.path.startswith("/v2"):
        text = detail if isinstance(detail, str) else json.dumps(detail)
        return JSONResponse(status_code=status, content={"error": text}, headers=headers)
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


async def _flywheel_error(request: Request, exc: Exception) -> JSONResponse:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return _error(request, status, str(exc))
    return _error(request, 500, str(exc))


def _finite(value: Any) -> Any:
    """``value`` with every non-finite number written out as text (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's and FastAPI's own refusals, as they are, except their 400s (a body
    that does not decode): every malformed request is a 422 here."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        exc = StarletteHTTPException(422, f"the body cannot be read: {exc.detail}", exc.headers)
    if request.url.path.startswith("/v2"):
        return _error(request, exc.status_code, exc.detail, exc.headers)
    return await http_exception_handler(request, exc)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 for a malformed request, whatever it echoes back: a NaN or Infinity
    sent in a body would otherwise make the error itself unwritable (a 500)."""
    assert isinstance(exc, RequestValidationError)
    return _error(request, 422, _finite(jsonable_encoder(_no_bytes(exc.errors()))))


def _say_ready(settings: Settings, version: int | None) -> None:
    log.info(
        "ready on http://%s:%d (pid %d): %s, %s backend; dashboard at /, API docs at /docs",
        settings.host, settings.port, os.getpid(),
        "no production model yet" if version is None else f"model v{version}",
        settings.serving_backend,
    )  # fmt: skip


def _say_stopped(writer: Any) -> None:
    spilled = f", {writer.spilled} kept in the journal for the next start"
    log.info(
        "stopped: %d predictions committed by this process%s",
        writer.written, spilled if writer.spilled else "",
    )  # fmt: skip


def _no_bytes(value: Any) -> Any:
    """The errors with each echoed body that is bytes (a JPEG sent where JSON was due:
    not UTF-8, so not writable as JSON) replaced by what it was."""
    if isinstance(value, bytes | bytearray):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(value)} bytes, not UTF-8 text>"
    if isinstance(value, dict):
        return {k: _no_bytes(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_bytes(v) for v in value]
    return value


#: OpenAPI links: where an answer's ids lead (a client, or a stateful fuzzer, follows them)
LINKS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("/v1/predict", "post", "200"): {
        "Answer": {
            "operationRef": "#/paths/~1v1~1feedback/post",
            "requestBody": {"prediction_id": "$response.body#/prediction_id", "correct": True},
            "description": "Say whether the prediction was right.",
        },
        "Explain": {
            "operationRef": "#/paths/~1v1~1explain/post",
            "requestBody": {"prediction_id": "$response.body#/prediction_id"},
            "description": "Why the model answered what it did.",
        },
        "Overlay": {
            "operationRef": "#/paths/~1v1~1explain~1{prediction_id}.png/get",
            "parameters": {"prediction_id": "$response.body#/prediction_id"},
            "description": "The explanation drawn over the input.",
        },
    },
    ("/v1/retrain", "post", "202"): {
        "Job": {
            "operationRef": "#/paths/~1v1~1jobs~1{job_id}/get",
            "parameters": {"job_id": "$response.body#/job_id"},
            "description": "The retrain's status, progress and result.",
        }
    },
}


def _with_links(spec: dict[str, Any]) -> dict[str, Any]:
    for (path, method, status), links in LINKS.items():
        response = spec["paths"].get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is not None:
            response["links"] = links
    return spec


RETENTION_EVERY_S = 3600.0


def _watch_production(predictor: Predictor, stop: threading.Event, interval: float) -> None:
    """Pick up a version promoted elsewhere (CLI, another worker) without a failed request;
    apply the retention age (``retention_days``) at start and hourly."""
    project = predictor.project
    next_retention = time.monotonic()
    while True:
        if project.settings.retention_days is not None and time.monotonic() >= next_retention:
            next_retention = time.monotonic() + RETENTION_EVERY_S
            try:
                done = project.apply_retention()
                if done["inputs_deleted"]:
                    log.info("retention: %d stored inputs deleted", done["inputs_deleted"])
            except FlywheelError as exc:
                log.warning("retention failed: %s", exc)
        if stop.wait(interval):
            return
        try:
            predictor.refresh()
        except FlywheelError as exc:  # keep serving the model we have
            log.warning("could not load the new production model: %s", exc)
        try:  # `flywheel privacy rotate-key` ran elsewhere: hash with the new chain
            if project.reload_user_key():
                log.info("user-id key chain rotated elsewhere: reloaded")
        except FlywheelError as exc:
            log.warning("could not reload the user-id key chain: %s", exc)


def _guard(app: FastAPI, settings: Settings, access: AccessLog) -> None:
    """The middlewares, innermost first: body limits, CORS (only if configured), the
    Host and Origin checks, the security headers, metrics and the access log."""
    app.add_middleware(
        BodyLimits, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    if settings.cors_origins:  # off unless configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-User-Id"],
            max_age=600,
        )
    hosts = served_hosts(settings)
    if hosts is None and not settings.allowed_hosts:
        log.warning(
            "bound to %s without allowed_hosts: answering to any Host header (every route "
            "needs a key); set allowed_hosts to the names clients use",
            settings.host,
        )
    app.add_middleware(OriginCheck, hosts=hosts, origins=settings.cors_origins)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, access=access)


def create_app(
    settings: Settings, project: Project | None = None, *, backend: Backend | None = None
) -> FastAPI:
    """The app for one project. ``backend`` pins a model backend (tests: FakeBackend)."""
    project = project or Project(settings)
    metrics = Metrics()
    access = AccessLog(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        access.start()
        predictor = Predictor(project, metrics, backend=backend)
        app.state.predictor = predictor
        app.state.runner.after_work = predictor.refresh
        app.state.runner.on_windows = metrics.windows
        app.state.runner.start()  # marks failed what a dead process left; the policy
        sender = WebhookSender(project)
        sender.start()
        predictor.refresh()
        # Everything loaded so far (torch, the model, the app) lives as long as the
        # server: keep it out of the garbage collector's full passes, which otherwise
        # walk it all and stall requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
        stop = threading.Event()
        watcher = threading.Thread(
            target=_watch_production,
            args=(predictor, stop, settings.reload_interval_s),
            name="flywheel-model-watcher",
            daemon=True,
        )
        watcher.start()
        _say_ready(settings, predictor.serving_version())
        try:
            yield
        finally:
            # The server has stopped taking requests and answered those in flight:
            # run what is queued, commit every logged prediction.
            log.info("stopping: requests in flight answered; committing what is queued")
            stop.set()
            watcher.join()
            predictor.close()
            app.state.runner.shutdown()
            sender.stop()
            access.stop()
            _say_stopped(predictor.writer)

    app = FastAPI(
        title="flywheel",
        version="1",
        summary="Predictions, feedback and the retraining loop of one flywheel project.",
        lifespan=lifespan,
        dependencies=[Depends(authorize)],  # every route, by the one scope table
        docs_url=None,  # served from the package below, not from a CDN
        redoc_url=None,
    )
    app.state.project = project
    app.state.runner = JobRunner(project)
    app.state.settings = settings
    app.state.model_name = settings.served_name  # the Open Inference Protocol's
    app.state.metrics = metrics
    app.state.throttle = AuthThrottle(settings.auth_failures_per_minute)
    app.add_exception_handler(FlywheelError, _flywheel_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Refusal, refused)
    columns = project.dataset().preprocessing.get("columns") if project.task.is_regression else None
    app.state.columns = list(columns or [])  # a tabular project's features, read once
    app.include_router(predict.build_router(project.task, columns))
    app.include_router(inference.router)
    app.include_router(label_studio.router)
    for r in (
        feedback.router,
        review.router,
        models.router,
        jobs.router,
        users.router,
        keys.router,
        stats.router,
        explain.router,
        ui.router,
    ):
        app.include_router(r)
    app.mount("/ui/static", ui.static_files(), name="ui-static")
    add_docs(app, "flywheel")
    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(_with_links(build_openapi()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    _guard(app, settings, access)
    return app
