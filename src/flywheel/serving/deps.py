"""Dependencies of the routes: the project, the job runner, and scoped API keys."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from flywheel.errors import ModelError
from flywheel.project import Project
from flywheel.serving.jobs import JobRunner
from flywheel.serving.metrics import Metrics
from flywheel.serving.predictor import Predictor
from flywheel.serving.schemas import ID_PATTERN

__all__ = [
    "JobIdPath",
    "MetricsDep",
    "PredictionIdPath",
    "PredictorDep",
    "ProjectDep",
    "RunnerDep",
    "UserIdPath",
    "VersionPath",
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
