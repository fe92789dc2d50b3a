"""Dependencies of the routes: the project, the job runner, and scoped API keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from starlette.concurrency import run_in_threadpool

from flywheel.errors import AuthError, ModelError
from flywheel.project import Project
from flywheel.serving.jobs import JobRunner
from flywheel.serving.metrics import Metrics
from flywheel.serving.predictor import Predictor
from flywheel.serving.schemas import ID_PATTERN
from flywheel.settings import Settings

__all__ = [
    "JobIdPath",
    "MetricsDep",
    "PredictionIdPath",
    "PredictorDep",
    "ProjectDep",
    "RunnerDep",
    "UserIdPath",
    "VersionPath",
    "require",
]


async def get_project(request: Request) -> Project:
    project: Project = request.app.state.project
    return project


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_predictor(request: Request) -> Predictor:
    predictor: Predictor | None = getattr(request.app.state, "predictor", None)
    if predictor is None:
        raise ModelError("the server is not started (run the app with its lifespan)")
    return predictor


async def get_runner(request: Request) -> JobRunner:
    runner: JobRunner = request.app.state.runner
    return runner


#: path parameters, bounded before anything reads them (a version beyond the store's
#: integers, a NUL byte in an id: a 422, not a database error)
VersionPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="A model version.")]
JobIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
PredictionIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=ID_PATTERN)]
UserIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="The user's id as the client sent it, or its listed pseudonym.",
    ),
]

ProjectDep = Annotated[Project, Depends(get_project)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]


def _open(settings: Settings, scope: str) -> bool:
    """Routes a loopback-bound server may answer without a key."""
    if settings.requires_keys:
        return False
    return {
        "predict": settings.open_predict,
        "feedback": settings.open_feedback,
        "read": True,
    }.get(scope, False)


def require(scope: str) -> Callable[[Request, Project], Awaitable[None]]:
    """A dependency that lets the request through only with a key of ``scope``.

    ``read`` (model list, stats) accepts a key of any scope.
    """

    # async, so that an open route costs no trip through the thread pool; the key lookup
    # (a database read) runs in the pool.
    async def check(request: Request, project: ProjectDep) -> None:
        if _open(project.settings, scope):
            return
        header = request.headers.get("authorization", "")
        kind, _, key = header.partition(" ")
        if kind.lower() != "bearer" or not key.strip():
            raise HTTPException(
                status_code=401,
                detail=f"this route needs an API key with the {scope!r} scope: "
                "send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        try:
            await run_in_threadpool(
                project.authenticate, key.strip(), None if scope == "read" else scope
            )
        except AuthError as exc:
            if exc.missing_scope is not None:
                raise HTTPException(status_code=403, detail=str(exc)) from None
            raise HTTPException(
                status_code=401, detail=str(exc), headers={"WWW-Authenticate": "Bearer"}
            ) from None

    check.flywheel_scope = scope  # type: ignore[attr-defined]  # the OpenAPI docs read it
    return check
